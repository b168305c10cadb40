"""Rounding fp32 values into storage dtypes as integer bit operations.

Float casts disagree across torch versions, devices and the Triton interpreter (it truncates
fp32 -> bf16), so every backend rounds with the same integer arithmetic on the fp32 bits.
"""
from __future__ import annotations

import torch
from torch import Tensor

BF16_QNAN = 0x7FC0


def _fp32_bits(x: Tensor) -> Tensor:
    """fp32 bits of ``x`` as int64 values in [0, 2**32)."""
    return x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _bf16_from_bits(b16: Tensor) -> Tensor:
    """bf16 tensor holding the 16-bit patterns ``b16`` (int64 in [0, 2**16))."""
    signed = torch.where(b16 >= 0x8000, b16 - 0x10000, b16)
    return signed.to(torch.int16).view(torch.bfloat16)


def fp32_to_bf16_nearest(x: Tensor) -> Tensor:
    """Round-to-nearest-even fp32 -> bf16: ``(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16``; NaN -> qNaN."""
    bits = _fp32_bits(x)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
    rounded = torch.where(torch.isnan(x), torch.full_like(rounded, BF16_QNAN), rounded)
    return _bf16_from_bits(rounded).view(x.shape)


def round_to_dtype(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Round an fp32 tensor to ``dtype`` with round-to-nearest-even."""
    if dtype == torch.float32:
        return x
    if dtype == torch.bfloat16:
        return fp32_to_bf16_nearest(x)
    if dtype == torch.float16:
        return x.to(torch.float16)  # IEEE round-to-nearest-even on every device
    raise ValueError(f"cannot round to {dtype}; supported: float32, bfloat16, float16")
