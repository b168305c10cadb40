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
mxfp8_*    codes as fp8_* and one E8M0 scale (uint8) per block        1 + 1/block
fp4_e2m1   E2M1 codes, two a byte (uint8, ``ceil(numel/2)``, element  1/2 + 1/block
           2j in the low nibble of byte j), one E8M0 scale per block
           (MXFP4)
=========  ========================================================  ===================

Block scaling (per block ``b``)::

    s   = max(absmax_b * (1/Qmax), 2**-126)      (absmax ignores NaN and inf; 1/Qmax is fp32)
    inv = 1 / s                                  (correctly rounded)
    q   = round(clamp(x * inv, -Qmax, Qmax))     (nearest-even, or stochastic with the state-rounding words)
    x^  = q * s

MX block scaling (``mxfp8_e4m3``, ``mxfp8_e5m2``; OCP Microscaling v1.0), per block ``b``::

    E   = max(exponent field of absmax_b - emax, 0)   (absmax over finite |x|; emax = 8 / 15)
    s   = 2**(E - 127)                               (stored: the byte E; 2**-127 when E = 0)
    q   = round(clamp(x * (1/s), -Qmax, Qmax))       (1/s exact; saturating)
    x^  = q * s

``fp4_e2m1`` (MXFP4) is the same with E2M1 elements (0, 0.5, 1, 1.5, 2, 3, 4, 6; emax 2,
Qmax 6, no NaN: a NaN codes as +0), two codes a byte.

That is, the shared exponent ``floor(log2(absmax)) - emax`` of the MX specification, clamped
below at E8M0's smallest exponent -127 (a zero, subnormal or small block); the byte 0xFF (NaN in
E8M0) is never written and decodes to NaN.

Every step decodes to fp32, computes in fp32 and encodes once at the write; this step's update
uses the fresh fp32 value, so quantisation only affects later steps. Non-finite values (which
the non-finite-gradient policy keeps out of state) do not spoil their block: NaN stays NaN and
±inf saturates to ±Qmax*s. A tensor with fewer than
``fp8_min_numel`` elements keeps fp32 state in an FP8 group. With ``found_inf`` the stored
codes and scales are kept bit for bit. An element skipped for a non-finite gradient keeps its
value, re-encoded with its block's new scale (exact in fp32/bf16, within FP8 rounding).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .casting import FloatFormat, _fp32_bits, declared, round_to_dtype, round_to_format
from .declaration import FORMATS

FP8 = {f.name: declared(f.name) for f in FORMATS.values() if f.block_scaled and not f.packed}
"""The block-scaled one-byte formats' element codecs, by format name."""
FP4 = {f.name: declared(f.name) for f in FORMATS.values() if f.packed}
"""The packed 4-bit formats' element grids (E2M1), by format name."""
MIN_SCALE = 2.0 ** -126
E8M0_NAN = 0xFF
_E8M0_MIN_BITS = 0x00400000  # fp32 bits of 2**-127 (an fp32 subnormal)


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


def _finite_absmax(x: Tensor, block: int) -> Tensor:
    mag = x.reshape(-1).abs()
    mag = torch.where(torch.isfinite(mag), mag, torch.zeros_like(mag))
    return _blocks(mag, block).amax(dim=1)


def e8m0_codes(x: Tensor, fmt: FloatFormat, block: int) -> Tensor:
    """Per-block E8M0 scale bytes (uint8) of the flattened ``x`` (MX): ``max(exponent field of
    the finite absmax - emax, 0)``, i.e. ``floor(log2(absmax)) - emax`` biased by 127 and clamped
    below at 2**-127."""
    emax = math.frexp(fmt.max_finite)[1] - 1
    field = (_fp32_bits(_finite_absmax(x, block)) >> 23) & 0xFF
    return torch.clamp(field - emax, min=0).to(torch.uint8)


def e8m0_value(codes: Tensor) -> Tensor:
    """fp32 ``2**(code - 127)`` of E8M0 bytes (exact; 2**-127 is an fp32 subnormal); 0xFF is NaN."""
    c = codes.to(torch.int64)
    bits = torch.where(c == 0, torch.full_like(c, _E8M0_MIN_BITS), c << 23)
    bits = torch.where(c == E8M0_NAN, torch.full_like(c, 0x7FC00000), bits)
    return bits.to(torch.int32).view(torch.float32)


def scale_values(scales: Tensor) -> Tensor:
    """The fp32 multipliers of stored block scales (fp32 scales, or E8M0 bytes)."""
    if scales.dtype == torch.uint8:
        return e8m0_value(scales)
    return scales.to(torch.float32)


def fp8_encode(x: Tensor, fmt: FloatFormat, block: int, word: Tensor | None = None,
               scale_type: str = "fp32") -> tuple[Tensor, Tensor]:
    """Codes (in ``fmt.dtype``) and block scales of ``x``: fp32 scales (``scale_type="fp32"``)
    or E8M0 bytes (``"e8m0"``, MX)."""
    if scale_type == "e8m0":
        stored = e8m0_codes(x, fmt, block)
        scale = e8m0_value(stored)
    else:
        stored = scale = fp8_scales(x, fmt, block)
    inv = torch.ones_like(scale) / scale
    n = x.numel()
    y = (_blocks(x.reshape(-1), block) * inv[:, None]).reshape(-1)[:n]
    y = torch.clamp(y, -fmt.max_finite, fmt.max_finite)
    q = round_to_format(y, fmt, None if word is None else word.reshape(-1))
    return q.to(fmt.dtype).reshape(x.shape), stored


def fp8_decode(codes: Tensor, scale: Tensor, block: int) -> Tensor:
    """``q * s`` per block, fp32 (``scale``: fp32 scales or E8M0 bytes, :func:`scale_values`)."""
    n = codes.numel()
    q = _blocks(codes.reshape(-1).to(torch.float32), block)
    return (q * scale_values(scale)[:, None]).reshape(-1)[:n].reshape(codes.shape)


# ---------------------------------------------------------------- FP4 E2M1 (two codes a byte)
_FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_FP4_CODE_OF_TWICE = (0, 1, 2, 3, 4, 0, 5, 0, 6, 0, 0, 0, 7)  # 2*|q| -> magnitude code


def fp4_codes(q: Tensor) -> Tensor:
    """E2M1 codes (int64 in [0, 16): sign bit 3, exponent bits 2-1, mantissa bit 0) of values
    ``q`` on the E2M1 grid (|q| <= 6); NaN codes as +0 (E2M1 has no NaN)."""
    nan = torch.isnan(q)
    twice = torch.where(nan, torch.zeros_like(q), q.abs() * 2.0).to(torch.int64)
    lut = torch.tensor(_FP4_CODE_OF_TWICE, dtype=torch.int64, device=q.device)
    sign = torch.where(torch.signbit(q) & ~nan, 8, 0)
    return lut[twice] | sign


def fp4_values(codes: Tensor) -> Tensor:
    """fp32 values of E2M1 codes (integers in [0, 16))."""
    lut = torch.tensor(_FP4_MAGNITUDES, dtype=torch.float32, device=codes.device)
    c = codes.to(torch.int64)
    mag = lut[c & 7]
    return torch.where((c & 8) != 0, -mag, mag)


def fp4_pack(codes: Tensor) -> Tensor:
    """Flat codes -> uint8 bytes, two a byte: element ``2j`` in the low nibble of byte ``j``,
    ``2j + 1`` in the high one (0 past the end of an odd count)."""
    flat = codes.reshape(-1).to(torch.int64)
    flat = torch.nn.functional.pad(flat, (0, flat.numel() % 2))
    return (flat[0::2] | (flat[1::2] << 4)).to(torch.uint8)


def fp4_unpack(packed: Tensor, n: int) -> Tensor:
    """The first ``n`` codes (int64) of packed bytes."""
    b = packed.reshape(-1).to(torch.int64)
    return torch.stack((b & 0xF, b >> 4), dim=1).reshape(-1)[:n]


def fp4_encode(x: Tensor, fmt: FloatFormat, block: int, word: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Packed E2M1 codes (uint8, ``ceil(numel/2)``) and E8M0 block scale bytes of ``x`` (MXFP4):
    the MX scale rule with emax 2, then codes as FP8's (clamp to +-6, nearest or stochastic);
    NaN codes as +0."""
    stored = e8m0_codes(x, fmt, block)
    scale = e8m0_value(stored)
    inv = torch.ones_like(scale) / scale
    n = x.numel()
    y = (_blocks(x.reshape(-1), block) * inv[:, None]).reshape(-1)[:n]
    y = torch.clamp(y, -fmt.max_finite, fmt.max_finite)
    q = round_to_format(y, fmt, None if word is None else word.reshape(-1))
    return fp4_pack(fp4_codes(q)), stored


def fp4_decode(packed: Tensor, scale: Tensor, block: int, n: int) -> Tensor:
    """The ``n`` fp32 values of packed E2M1 codes: ``q * s`` per block (flat)."""
    q = fp4_values(fp4_unpack(packed, n))
    return (_blocks(q, block) * scale_values(scale)[:, None]).reshape(-1)[:n]


_E4M3 = declared("fp8_e4m3")
_INV_6 = torch.tensor(1.0 / 6.0, dtype=torch.float32).item()
_INV_2688 = torch.tensor(1.0 / (6.0 * 448.0), dtype=torch.float32).item()
_E4M3_MIN = 2.0 ** -9  # the smallest E4M3 subnormal: the smallest block scale


def nvfp4_encode(x: Tensor, fmt: FloatFormat, block: int, word: Tensor | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Packed E2M1 codes, E4M3 block scales and the fp32 tensor scale of ``x`` (NVFP4's two-level
    scaling; ``state_scale="e4m3"``), every step fp32::

        S   = max(T * fp32(1/2688), 2**-126)          T: finite absmax of the whole tensor (6*448 = 2688)
        sb  = max(e4m3_nearest(min((a_b * fp32(1/6)) / S, 448)), 2**-9)   a_b: finite absmax of block b
        eff = sb * S;  q = round_e2m1(clamp(x * (1/eff), -6, 6));  x^ = q * eff
    """
    n = x.numel()
    flat = x.reshape(-1)
    mag = torch.where(torch.isfinite(flat), flat.abs(), torch.zeros_like(flat))
    tmax = mag.amax() if n > 0 else torch.zeros((), dtype=torch.float32, device=x.device)
    tscale = torch.clamp(tmax * _INV_2688, min=MIN_SCALE).reshape(1)
    amax = _blocks(mag, block).amax(dim=1)
    u = torch.clamp((amax * _INV_6) / tscale, max=_E4M3.max_finite)
    sb = torch.clamp(round_to_format(u, _E4M3), min=_E4M3_MIN)
    eff = sb * tscale
    inv = torch.ones_like(eff) / eff
    y = (_blocks(flat, block) * inv[:, None]).reshape(-1)[:n]
    y = torch.clamp(y, -fmt.max_finite, fmt.max_finite)
    q = round_to_format(y, fmt, None if word is None else word.reshape(-1))
    return fp4_pack(fp4_codes(q)), sb.to(torch.float8_e4m3fn), tscale


def nvfp4_decode(packed: Tensor, sb: Tensor, tscale: Tensor, block: int, n: int) -> Tensor:
    """The ``n`` fp32 values of NVFP4 state: ``q * (sb * S)`` per block (flat)."""
    eff = sb.to(torch.float32) * tscale.to(torch.float32).reshape(1)
    q = fp4_values(fp4_unpack(packed, n))
    return (_blocks(q, block) * eff[:, None]).reshape(-1)[:n]


def decode(codes: Tensor, scales: Tensor, block: int, shape: tuple[int, ...] | None = None,
           tensor_scale: Tensor | None = None) -> Tensor:
    """fp32 values of a block-scaled format's stored codes and scales; packed (4-bit) codes are
    flat and need the tensor's ``shape``; E4M3 block scales (NVFP4) need the ``tensor_scale``."""
    if codes.dtype == torch.uint8:
        if shape is None:
            raise ValueError("decoding packed 4-bit codes needs the tensor's shape")
        n = math.prod(shape)
        if scales.dtype == torch.float8_e4m3fn:
            if tensor_scale is None:
                raise ValueError("decoding E4M3-scaled FP4 codes needs the tensor scale")
            return nvfp4_decode(codes, scales, tensor_scale, block, n).reshape(shape)
        return fp4_decode(codes, scales, block, n).reshape(shape)
    return fp8_decode(codes, scales, block)


def encode_state(value: Tensor, fmt: str, block: int, word: Tensor | None = None
                 ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`encode` plus the tensor scale (None unless the format keeps one: NVFP4)."""
    if FORMATS[fmt].tensor_scale:
        return nvfp4_encode(value.to(torch.float32), FP4[fmt], block, word)
    codes, scales = encode(value, fmt, block, word)
    return codes, scales, None


def encode(value: Tensor, fmt: str, block: int, word: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The stored tensors of fp32 ``value`` in format ``fmt``: codes (the value itself for
    fp32/bf16) and the block scales (None unless block-scaled); ``word`` (Philox state-rounding
    word) makes the rounding stochastic. An fp64 ``value`` (state of fp64 parameters) is first
    rounded to fp32 (nearest-even)."""
    value = value.to(torch.float32)
    if fmt in FP8:
        return fp8_encode(value, FP8[fmt], block, word, FORMATS[fmt].scale)
    if fmt in FP4:
        if FORMATS[fmt].tensor_scale:
            raise ValueError(f"{fmt} keeps a tensor scale: use encode_state")
        return fp4_encode(value, FP4[fmt], block, word)
    return round_to_dtype(value, FORMATS[fmt].dtype, word), None
