"""The operator's commands that live beside the library: ``fedsieve data`` and the detector
tools (``fedsieve detect``, ``fedsieve meta-train``), with what every command shares."""
