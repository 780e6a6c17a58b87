"""The example task: a small MNIST classifier with its training and evaluation
(:mod:`.classifier`) and the example datasets (:mod:`.example_data`)."""
