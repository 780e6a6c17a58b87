"""What both sides of a federation need, one sub-package per kind of thing:

- :mod:`.detectors` - the anomaly detectors behind one estimator API, Rt-BiGAN's evidence
  pieces, the BiGAN networks, checkpoints;
- :mod:`.protocol` - the wire protocol between the client SDK and the server;
- :mod:`.data` - images (the one validator), datasets, a user's files, the trusted images;
- :mod:`.task` - the example task's classifier and data;
- :mod:`.cli` - the operator commands that live beside the library;
- :mod:`.config` - run settings read from Flower's run config; :mod:`.devices` - where torch
  runs.
"""
