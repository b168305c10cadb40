"""Storage formats of optimizer state: how an fp32 value is kept between steps.

=========  ========================================================  ===================
format     stored as                                                  bytes / element
=========  ========================================================  ===================
fp32       the value                                                  4
bf16       the value rounded to bf16 (:mod:`signopt.casting`)          2
fp8_e4m3   codes ``state[name]`` (torch.float8_e4m3fn, the tensor's   1 + 4/block
           shape) and fp32 scales ``state[name + "_scale"]``, one per
           ``block`` consecutive elements of the flattened tensor
fp8_e5m2   same with torch.float8_e5m2                                1 + 4/block
=========  ========================================================  ===================

Block scaling (per block ``b``)::

    s   = max(absmax_b * (1/Qmax), 2**-126)      (absmax ignores NaN and inf; 1/Qmax is fp32)
    inv = 1 / s                                  (correctly rounded)
    q   = round(clamp(x * inv, -Qmax, Qmax))     (nearest-even, or stochastic with word 1)
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

FP8 = {"fp8_e4m3": E4M3, "fp8_e5m2": E5M2}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16,
                "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
FORMATS = tuple(TORCH_DTYPES)
MIN_SCALE = 2.0 ** -126
SCALE_SUFFIX = "_scale"


def _inv_qmax(fmt: FloatFormat) -> float:
    return torch.tensor(1.0 / fmt.max_finite, dtype=torch.float32).item()


def format_of(stored: Tensor) -> str:
    """The format name of a stored state tensor (its codes, for FP8)."""
    for name, dtype in TORCH_DTYPES.items():
        if stored.dtype == dtype:
            return name
    raise ValueError(f"state tensor of dtype {stored.dtype} is not a signopt state format")


def effective_format(fmt: str, numel: int, fp8_min_numel: int) -> str:
    """``fmt``, except that FP8 falls back to fp32 below ``fp8_min_numel`` elements."""
    if fmt in FP8 and numel < fp8_min_numel:
        return "fp32"
    return fmt


def allocate(state: dict, name: str, shape: tuple[int, ...], fmt: str, block: int,
             device: torch.device) -> None:
    """Zero state ``name`` in format ``fmt`` (codes and scales for FP8)."""
    state[name] = torch.zeros(shape, dtype=TORCH_DTYPES[fmt], device=device)
    if fmt in FP8:
        numel = 1
        for s in shape:
            numel *= s
        state[name + SCALE_SUFFIX] = torch.zeros(-(-numel // block), dtype=torch.float32, device=device)


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


def read(state: dict, name: str, block: int) -> Tensor:
    """The fp32 value of state ``name``."""
    stored = state[name]
    if format_of(stored) in FP8:
        return fp8_decode(stored, state[name + SCALE_SUFFIX], block)
    return stored.to(torch.float32)


def encoded(value: Tensor, fmt: str, block: int, word: Tensor | None = None) -> dict[str, Tensor]:
    """The stored tensors of fp32 ``value`` in ``fmt`` under key ``""`` (codes/value) and
    ``SCALE_SUFFIX`` (FP8 scales); ``word`` (Philox word 1) makes the rounding stochastic. An
    fp64 ``value`` (state of fp64 parameters) is first rounded to fp32 (nearest-even)."""
    value = value.to(torch.float32)
    if fmt in FP8:
        codes, scale = fp8_encode(value, FP8[fmt], block, word)
        return {"": codes, SCALE_SUFFIX: scale}
    return {"": round_to_dtype(value, TORCH_DTYPES[fmt], word)}


def write(state: dict, name: str, value: Tensor, block: int, word: Tensor | None = None,
          skip: Tensor | None = None) -> None:
    """Store fp32 ``value`` into state ``name`` in place, in its current format; where the
    0-dim bool ``skip`` is true every stored tensor keeps its old bits."""
    for suffix, new in encoded(value, format_of(state[name]), block, word).items():
        stored = state[name + suffix]
        if skip is not None:
            new = torch.where(skip.to(stored.device), stored, new)
        stored.copy_(new)


def convert(saved: dict, name: str, saved_block: int, fmt: str, block: int,
            device: torch.device) -> dict[str, Tensor]:
    """State ``name`` from a loaded ``saved`` dict (FP8 blocks of ``saved_block``),
    re-encoded into ``fmt`` with blocks of ``block`` (nearest) on ``device``; the stored bits
    are copied unchanged when format and block match."""
    stored = saved[name].to(device)
    src = format_of(stored)
    if src == fmt and (fmt not in FP8 or saved_block == block):
        out = {name: stored.clone()}
        if fmt in FP8:
            out[name + SCALE_SUFFIX] = saved[name + SCALE_SUFFIX].to(device, torch.float32).clone()
        return out
    if src in FP8:
        scale = saved[name + SCALE_SUFFIX].to(device, torch.float32)
        if scale.numel() != -(-stored.numel() // saved_block):
            raise ValueError(f"state {name!r}: {scale.numel()} scales do not fit {stored.numel()} "
                             f"elements in blocks of {saved_block}")
        value = fp8_decode(stored, scale, saved_block)
    else:
        value = stored.to(torch.float32)
    return {name + suffix: t for suffix, t in encoded(value, fmt, block).items()}


def nbytes(state: dict) -> int:
    """Bytes held by the tensors of one parameter's state."""
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, Tensor))
