"""signopt: sign-based optimizers for PyTorch."""

__version__ = "0.1.0"
