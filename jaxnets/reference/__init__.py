"""PyTorch mirrors of the reference networks, for parity tests and side-by-side benchmarks.

Importing these modules needs torch (the `test` or `bench` extra). They reproduce torchvision's module
structure and state_dict key names exactly, because torchvision itself has no CPU wheel on the
project's machines.
"""
