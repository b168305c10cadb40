"""signopt: sign-based optimizers for PyTorch (SignSGD, Signum, Lion, Lion-kappa, StoSignSGD,
sign conversion of any optimizer) with one torch reference and pluggable fused backends.

Importing signopt imports no Triton and compiles nothing.
"""
from . import source_layout
from .optimizer import SignOptimizer
from .optimizers import Lion, LionKappa, SignConversion, SignSGD, Signum, StoSignSGD
from .wrapper import SignConversionWrapper

source_layout.install()

__version__ = "0.1.0"

__all__ = ["SignOptimizer", "SignSGD", "Signum", "Lion", "LionKappa", "StoSignSGD",
           "SignConversion", "SignConversionWrapper", "__version__"]
