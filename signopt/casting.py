"""Rounding fp32 values into storage formats, decided from the fp32 bits.

Float casts disagree across torch versions, devices and the Triton interpreter (it truncates
fp32 -> bf16 and loses mantissa carries in fp32 -> E4M3), so every backend takes each rounding
decision with the same integer/exact arithmetic:

* bf16 nearest: ``(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16``; NaN -> 0x7FC0.
* bf16 stochastic: ``(bits + r16) & 0xFFFF0000`` with ``r16 = word >> 16``; NaN -> qNaN and a
  finite value never rounds up to inf (it saturates at the largest finite bf16).
* a format with ``M`` mantissa bits and minimum normal exponent ``emin`` (fp16, E4M3, E5M2):
  ``e = max(exponent bits of x, emin)``, ``ulp = 2**(e - M)`` (built from bits, never log2),
  ``k = |x| / ulp`` (exact); nearest: ``rint(k)`` (ties to even); stochastic: ``floor(k)``
  plus 1 when ``U < k - floor(k)`` with ``U = (word >> 8) * 2**-24``; the result ``k*ulp`` is
  exactly representable and is clamped to the format's largest finite value.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .declaration import FORMATS

BF16_QNAN = 0x7FC0
BF16_MAX_BITS = 0x7F7F


@dataclass(frozen=True)
class FloatFormat:
    """A small float format: mantissa bits, minimum normal exponent, largest finite value."""

    name: str
    mantissa_bits: int
    emin: int
    max_finite: float
    dtype: torch.dtype


def declared(name: str) -> FloatFormat:
    """The :class:`FloatFormat` of declared format ``name`` (``signopt.declaration.FORMATS``)."""
    f = FORMATS[name]
    return FloatFormat(f.name, f.mantissa_bits, f.emin, f.max_finite, f.dtype)


FP16, E4M3, E5M2 = declared("fp16"), declared("fp8_e4m3"), declared("fp8_e5m2")


def _fp32_bits(x: Tensor) -> Tensor:
    """fp32 bits of ``x`` as int64 values in [0, 2**32)."""
    return x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _bf16_from_bits(b16: Tensor) -> Tensor:
    """bf16 tensor holding the 16-bit patterns ``b16`` (int64 in [0, 2**16))."""
    signed = torch.where(b16 >= 0x8000, b16 - 0x10000, b16)
    return signed.to(torch.int16).view(torch.bfloat16)


def _fp32_from_bits(bits: Tensor) -> Tensor:
    signed = torch.where(bits >= 0x80000000, bits - 0x100000000, bits)
    return signed.to(torch.int32).view(torch.float32)


def fp32_to_bf16_nearest(x: Tensor) -> Tensor:
    """Round-to-nearest-even fp32 -> bf16."""
    bits = _fp32_bits(x)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
    rounded = torch.where(torch.isnan(x), torch.full_like(rounded, BF16_QNAN), rounded)
    return _bf16_from_bits(rounded).view(x.shape)


def fp32_to_bf16_stochastic(x: Tensor, word: Tensor) -> Tensor:
    """Stochastic fp32 -> bf16: ``(bits + (word >> 16)) & 0xFFFF0000``; E[result] = x."""
    bits = _fp32_bits(x)
    rounded = ((bits + (word.reshape(bits.shape) >> 16)) >> 16) & 0xFFFF
    magnitude = rounded & 0x7FFF
    overflow = torch.isfinite(x) & (magnitude == 0x7F80)
    rounded = torch.where(overflow, (rounded & 0x8000) | BF16_MAX_BITS, rounded)
    rounded = torch.where(torch.isnan(x), torch.full_like(rounded, BF16_QNAN), rounded)
    return _bf16_from_bits(rounded).view(x.shape)


def format_ulp(x: Tensor, fmt: FloatFormat) -> Tensor:
    """``2**(max(exponent(x), emin) - M)`` as fp32, built from the exponent bits of ``x``."""
    exp = ((_fp32_bits(x) >> 23) & 0xFF) - 127
    e = torch.clamp(exp, min=fmt.emin) - fmt.mantissa_bits
    return _fp32_from_bits((e + 127) << 23)


def round_to_format(x: Tensor, fmt: FloatFormat, word: Tensor | None = None) -> Tensor:
    """fp32 values of ``x`` rounded onto ``fmt``'s grid (nearest-even, or stochastic with
    ``word``), saturated at ±max_finite; NaN stays NaN, ±inf saturates."""
    mag = x.abs()
    ulp = format_ulp(x, fmt)
    k = mag / ulp
    if word is None:
        k = torch.round(k)
    else:
        lo = torch.floor(k)
        uniform = (word.reshape(x.shape) >> 8).to(torch.float32) * (2.0 ** -24)
        k = torch.where(uniform < k - lo, lo + 1.0, lo)
    out = torch.clamp(k * ulp, max=fmt.max_finite)
    return torch.where(torch.isnan(x), x, torch.copysign(out, x))


def round_to_dtype(x: Tensor, dtype: torch.dtype, word: Tensor | None = None) -> Tensor:
    """Round an fp32 tensor to ``dtype``: nearest-even, or stochastic when ``word`` is given. An
    fp64 result (fp64 parameters) is stored as it is: no rounding, so ``word`` is not used."""
    if dtype == torch.float64:
        return x.to(torch.float64)
    if dtype == torch.float32:
        return x
    if dtype == torch.bfloat16:
        return fp32_to_bf16_nearest(x) if word is None else fp32_to_bf16_stochastic(x, word)
    if dtype == torch.float16:
        if word is None:
            return x.to(torch.float16)  # IEEE round-to-nearest-even on every device
        return round_to_format(x, FP16, word).to(torch.float16)
    raise ValueError(f"cannot round to {dtype}; supported: float64, float32, bfloat16, float16")
