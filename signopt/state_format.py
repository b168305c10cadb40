"""Storage formats of optimizer state: how an fp32 value is kept between steps.

``fp32`` stores the value; ``bf16`` stores it rounded to nearest-even with integer bit
operations (:mod:`signopt.casting`). Every step decodes to fp32, computes in fp32 and encodes
once at the write; this step's update always uses the fresh fp32 value.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .casting import round_to_dtype

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def storage_dtype(fmt: str) -> torch.dtype:
    """The torch dtype that stores state of format ``fmt``."""
    try:
        return TORCH_DTYPES[fmt]
    except KeyError:
        raise ValueError(f"state_dtype must be one of {tuple(TORCH_DTYPES)}, got {fmt!r}") from None


def format_of(stored: Tensor) -> str:
    """The format name of a stored state tensor."""
    for name, dtype in TORCH_DTYPES.items():
        if stored.dtype == dtype:
            return name
    raise ValueError(f"state tensor of dtype {stored.dtype} is not a signopt state format")


def zeros(shape: tuple[int, ...], fmt: str, device: torch.device) -> Tensor:
    """A zero state tensor in format ``fmt``."""
    return torch.zeros(shape, dtype=storage_dtype(fmt), device=device)


def decode(stored: Tensor) -> Tensor:
    """The fp32 value of a stored state tensor."""
    return stored.to(torch.float32)


def encode(value: Tensor, fmt: str) -> Tensor:
    """``value`` (fp32) in storage format ``fmt``."""
    return round_to_dtype(value, storage_dtype(fmt))


def convert(stored: Tensor, fmt: str) -> Tensor:
    """Re-encode a stored state tensor into format ``fmt`` (a copy when the format changes)."""
    if stored.dtype == storage_dtype(fmt):
        return stored
    return encode(decode(stored), fmt)
