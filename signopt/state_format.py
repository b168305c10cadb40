"""Codecs of the optimizer-state storage formats: how an fp32 value is kept between steps.

The formats themselves (ids, dtypes, bits, block scaling) are declared in
:mod:`signopt.declaration`; where each stored tensor lives is :mod:`signopt.state_layout`.

=========  ========================================================  ===================
format     stored as                                                  bytes / element
=========  ========================================================  ===================
fp32       the value                                                  4
bf16       the value rounded to bf16 (:mod:`signopt.casting`)          2
fp8_e4m3   codes (torch.float8_e4m3fn, the tensor's shape) and fp32   1 + 4/block
           scales, one per ``block`` consecutive elements of the
           flattened tensor
fp8_e5m2   same with torch.float8_e5m2                                1 + 4/block
=========  ========================================================  ===================

Block scaling (per block ``b``)::

    s   = max(absmax_b * (1/Qmax), 2**-126)      (absmax ignores NaN and inf; 1/Qmax is fp32)
    inv = 1 / s                                  (correctly rounded)
    q   = round(clamp(x * inv, -Qmax, Qmax))     (nearest-even, or stochastic with the state-rounding words)
    x^  = q * s

Every step decodes to fp32, computes in fp32 and encodes once at the write; this step's update
uses the fresh fp32 value, so quantisation only affects later steps. Non-finite values (which
the non-finite-gradient policy keeps out of state) do not spoil their block: NaN stays NaN and
±inf saturates to ±Qmax*s. A tensor with fewer than
``fp8_min_numel`` elements keeps fp32 state in an FP8 group. With ``found_inf`` the stored
codes and scales are kept bit for bit. An element skipped for a non-finite gradient keeps its
value, re-encoded with its block's new scale (exact in fp32/bf16, within FP8 rounding).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .casting import E4M3, E5M2, FloatFormat, round_to_dtype, round_to_format
from .declaration import FORMATS

FP8 = {f.name: fmt for f in FORMATS.values() if f.block_scaled
       for fmt in (E4M3, E5M2) if fmt.dtype == f.dtype}
"""The block-scaled formats' element codecs, by format name."""
MIN_SCALE = 2.0 ** -126


def _inv_qmax(fmt: FloatFormat) -> float:
    return torch.tensor(1.0 / fmt.max_finite, dtype=torch.float32).item()


def _blocks(flat: Tensor, block: int) -> Tensor:
    return torch.nn.functional.pad(flat, (0, (-flat.numel()) % block)).reshape(-1, block)


def fp8_scales(x: Tensor, fmt: FloatFormat, block: int) -> Tensor:
    """Per-block scales ``max(absmax * (1/Qmax), 2**-126)`` of the flattened ``x``."""
    mag = x.reshape(-1).abs()
    mag = torch.where(torch.isfinite(mag), mag, torch.zeros_like(mag))
    absmax = _blocks(mag, block).amax(dim=1)
    return torch.clamp(absmax * _inv_qmax(fmt), min=MIN_SCALE)


def fp8_encode(x: Tensor, fmt: FloatFormat, block: int, word: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Codes (in ``fmt.dtype``) and fp32 block scales of ``x``."""
    scale = fp8_scales(x, fmt, block)
    inv = torch.ones_like(scale) / scale
    n = x.numel()
    y = (_blocks(x.reshape(-1), block) * inv[:, None]).reshape(-1)[:n]
    y = torch.clamp(y, -fmt.max_finite, fmt.max_finite)
    q = round_to_format(y, fmt, None if word is None else word.reshape(-1))
    return q.to(fmt.dtype).reshape(x.shape), scale


def fp8_decode(codes: Tensor, scale: Tensor, block: int) -> Tensor:
    """``q * s`` per block, fp32."""
    n = codes.numel()
    q = _blocks(codes.reshape(-1).to(torch.float32), block)
    return (q * scale[:, None]).reshape(-1)[:n].reshape(codes.shape)


def encode(value: Tensor, fmt: str, block: int, word: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The stored tensors of fp32 ``value`` in format ``fmt``: codes (the value itself for
    fp32/bf16) and the block scales (None unless block-scaled); ``word`` (Philox state-rounding
    word) makes the rounding stochastic. An fp64 ``value`` (state of fp64 parameters) is first
    rounded to fp32 (nearest-even)."""
    value = value.to(torch.float32)
    if fmt in FP8:
        return fp8_encode(value, FP8[fmt], block, word)
    return round_to_dtype(value, FORMATS[fmt].dtype, word), None
