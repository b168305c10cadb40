"""Distributed training helpers: 1-bit sign compression for DDP (see :mod:`.hook`) and the
shard layout of DTensor/FSDP2 parameters used by the optimizers (:mod:`signopt.sharding`)."""
from .compression import GRANULARITIES, MODES
from .hook import SignCompressionState, sign_compress_hook

__all__ = ["GRANULARITIES", "MODES", "SignCompressionState", "sign_compress_hook"]
