"""Loads and stores of parameters, gradients and optimizer state in every storage kind.

The load/store layer is what lets one rule body serve all formats: a kernel loads fp32
values, computes, and stores through :func:`store_values` (fp32 / bf16 / fp16, nearest or
stochastic) or :func:`store_fp8_blocks` (block-scaled FP8, :mod:`signopt.state_format`)::

    s   = max(absmax_b * (1/Qmax), 2**-126)     absmax over finite |x| of the block
    inv = 1 / s                                 correctly rounded
    q   = round(clamp(x * inv, -Qmax, Qmax))    nearest-even or stochastic (the state-rounding words)

MX formats (E8M0 scales, stored as uint8): ``E = max(exponent field of absmax - emax, 0)``,
``s = 2**(E - 127)``, the rest as above.

NVFP4 (:func:`store_nvfp4_blocks`, E2M1 codes with E4M3 block scales ``sb`` relative to the fp32
tensor scale ``S`` that a reduction pass derives from the new value's whole-tensor absmax first):
``eff = sb * S`` takes the place of ``s`` (:func:`.numerics.nvfp4_block_scale`).

Addresses arrive as int64 values from the tensor table and are cast to typed pointers here;
bf16 is accessed as int16 bit patterns and FP8 as uint8 codes so that no float cast is used.
"""
import triton
import triton.language as tl

from .numerics import (FP4_EMAX, FP4_EMIN, FP4_M, FP4_MAX, KIND_FP4_E2M1, KIND_FP4_E2M1_E4M3, e2m1_code,
                       e2m1_value, nvfp4_block_scale)
from .numerics import (E4M3_BIAS, E4M3_EMAX, E4M3_EMIN, E4M3_HAS_INF, E4M3_M, E4M3_MAX, E5M2_BIAS,
                       E5M2_EMAX, E5M2_EMIN, E5M2_HAS_INF, E5M2_M, E5M2_MAX, KIND_BF16, KIND_E4M3,
                       KIND_E5M2, KIND_FP16, KIND_FP32, KIND_MXE4M3, KIND_MXE5M2, MIN_SCALE, bf16_decode,
                       bf16_nearest, bf16_stochastic, e8m0_scale, e8m0_value, fp8_code, fp8_value,
                       fp16_round, is_finite, is_nan, round_to_format)


@triton.jit
def load_values(addr, offs, mask, KIND: tl.constexpr):
    """fp32 values of an fp32 / bf16 / fp16 tensor at integer address ``addr``."""
    if KIND == KIND_FP32:
        return tl.load(addr.to(tl.pointer_type(tl.float32)) + offs, mask=mask, other=0.0)
    elif KIND == KIND_BF16:
        raw = tl.load(addr.to(tl.pointer_type(tl.int16)) + offs, mask=mask, other=0)
        return bf16_decode(raw)
    else:
        tl.static_assert(KIND == KIND_FP16, "load_values: kind must be fp32, bf16 or fp16")
        return tl.load(addr.to(tl.pointer_type(tl.float16)) + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_e2m1(addr, offs, mask):
    """fp32 values of packed E2M1 codes (element ``i`` in nibble ``i % 2`` of byte ``i // 2``)."""
    byte = tl.load(addr.to(tl.pointer_type(tl.uint8)) + offs // 2, mask=mask, other=0).to(tl.uint32)
    return e2m1_value((byte >> ((offs % 2) * 4).to(tl.uint32)) & 0xF)


@triton.jit
def load_state(addr, scale_addr, offs, mask, block, tscale, KIND: tl.constexpr):
    """fp32 value of a state tensor; FP8 codes are decoded and multiplied by the scale of
    their block (``block`` = flat index // state_block, elementwise); NVFP4 codes by
    ``sb * tscale`` (``tscale``: the fp32 tensor scale they were encoded with; unused otherwise)."""
    if KIND == KIND_E4M3:
        code = tl.load(addr.to(tl.pointer_type(tl.uint8)) + offs, mask=mask, other=0)
        s = tl.load(scale_addr.to(tl.pointer_type(tl.float32)) + block, mask=mask, other=0.0)
        return fp8_value(code, E4M3_M, E4M3_EMIN, E4M3_BIAS, E4M3_HAS_INF) * s
    elif KIND == KIND_E5M2:
        code = tl.load(addr.to(tl.pointer_type(tl.uint8)) + offs, mask=mask, other=0)
        s = tl.load(scale_addr.to(tl.pointer_type(tl.float32)) + block, mask=mask, other=0.0)
        return fp8_value(code, E5M2_M, E5M2_EMIN, E5M2_BIAS, E5M2_HAS_INF) * s
    elif KIND == KIND_MXE4M3:
        code = tl.load(addr.to(tl.pointer_type(tl.uint8)) + offs, mask=mask, other=0)
        s = e8m0_value(tl.load(scale_addr.to(tl.pointer_type(tl.uint8)) + block, mask=mask, other=0))
        return fp8_value(code, E4M3_M, E4M3_EMIN, E4M3_BIAS, E4M3_HAS_INF) * s
    elif KIND == KIND_MXE5M2:
        code = tl.load(addr.to(tl.pointer_type(tl.uint8)) + offs, mask=mask, other=0)
        s = e8m0_value(tl.load(scale_addr.to(tl.pointer_type(tl.uint8)) + block, mask=mask, other=0))
        return fp8_value(code, E5M2_M, E5M2_EMIN, E5M2_BIAS, E5M2_HAS_INF) * s
    elif KIND == KIND_FP4_E2M1:
        s = e8m0_value(tl.load(scale_addr.to(tl.pointer_type(tl.uint8)) + block, mask=mask, other=0))
        return load_e2m1(addr, offs, mask) * s
    elif KIND == KIND_FP4_E2M1_E4M3:
        sb = fp8_value(tl.load(scale_addr.to(tl.pointer_type(tl.uint8)) + block, mask=mask, other=0),
                       E4M3_M, E4M3_EMIN, E4M3_BIAS, E4M3_HAS_INF)
        return load_e2m1(addr, offs, mask) * (sb * tscale)
    else:
        return load_values(addr, offs, mask, KIND)


@triton.jit
def store_values(addr, offs, x, mask, word, KIND: tl.constexpr, STOCHASTIC: tl.constexpr):
    """Store fp32 ``x`` rounded once to the tensor's kind (``casting.round_to_dtype``);
    ``STOCHASTIC`` rounds with Philox ``word`` (fp32 is stored as is)."""
    if KIND == KIND_FP32:
        tl.store(addr.to(tl.pointer_type(tl.float32)) + offs, x, mask=mask)
    elif KIND == KIND_BF16:
        if STOCHASTIC:
            bits = bf16_stochastic(x, word)
        else:
            bits = bf16_nearest(x)
        tl.store(addr.to(tl.pointer_type(tl.int16)) + offs, bits, mask=mask)
    else:
        tl.static_assert(KIND == KIND_FP16, "store_values: kind must be fp32, bf16 or fp16")
        tl.store(addr.to(tl.pointer_type(tl.float16)) + offs, fp16_round(x, word, STOCHASTIC), mask=mask)


@triton.jit
def finite_absmax(x, mask):
    """The per-row max of ``|x|`` over the finite lanes of ``mask`` (0 when none)."""
    return tl.max(tl.where(mask & is_finite(x), tl.abs(x), 0.0), axis=1)


@triton.jit
def _fp8_encode(x, mask, word, inv_qmax, QMAX: tl.constexpr, M: tl.constexpr, EMIN: tl.constexpr,
                BIAS: tl.constexpr, STOCHASTIC: tl.constexpr, EMAX: tl.constexpr):
    """Codes and per-row scales of a ``[rows, cols]`` tile holding one FP8 block per row: fp32
    scales, or (``EMAX > 0``: MX) E8M0 scale bytes."""
    absmax = finite_absmax(x, mask)
    if EMAX > 0:
        stored = e8m0_scale(absmax, EMAX)
        scale = e8m0_value(stored)
    else:
        scale = absmax * inv_qmax
        scale = tl.where(scale < MIN_SCALE, MIN_SCALE, scale)
        stored = scale
    inv = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
    y = x * inv[:, None]
    y = tl.where(is_nan(y), y, tl.minimum(tl.maximum(y, -QMAX), QMAX))
    q = round_to_format(y, word, M, EMIN, QMAX, STOCHASTIC)
    return fp8_code(q, M, EMIN, BIAS), stored


@triton.jit
def store_fp8_blocks(addr, scale_addr, offs, x, mask, block_row, row_mask, word, inv_qmax,
                     KIND: tl.constexpr, STOCHASTIC: tl.constexpr):
    """Encode a ``[rows, cols]`` tile (row r = FP8 block ``block_row[r]``) and store codes
    and scales; lanes outside ``mask`` do not enter the absmax."""
    if KIND == KIND_E4M3:
        code, scale = _fp8_encode(x, mask, word, inv_qmax, E4M3_MAX, E4M3_M, E4M3_EMIN, E4M3_BIAS,
                                   STOCHASTIC, 0)
        tl.store(scale_addr.to(tl.pointer_type(tl.float32)) + block_row, scale, mask=row_mask)
    elif KIND == KIND_E5M2:
        code, scale = _fp8_encode(x, mask, word, inv_qmax, E5M2_MAX, E5M2_M, E5M2_EMIN, E5M2_BIAS,
                                   STOCHASTIC, 0)
        tl.store(scale_addr.to(tl.pointer_type(tl.float32)) + block_row, scale, mask=row_mask)
    elif KIND == KIND_MXE4M3:
        code, scale = _fp8_encode(x, mask, word, inv_qmax, E4M3_MAX, E4M3_M, E4M3_EMIN, E4M3_BIAS,
                                   STOCHASTIC, E4M3_EMAX)
        tl.store(scale_addr.to(tl.pointer_type(tl.uint8)) + block_row, scale, mask=row_mask)
    else:
        tl.static_assert(KIND == KIND_MXE5M2, "store_fp8_blocks: kind must be (MX) E4M3 or E5M2")
        code, scale = _fp8_encode(x, mask, word, inv_qmax, E5M2_MAX, E5M2_M, E5M2_EMIN, E5M2_BIAS,
                                   STOCHASTIC, E5M2_EMAX)
        tl.store(scale_addr.to(tl.pointer_type(tl.uint8)) + block_row, scale, mask=row_mask)
    tl.store(addr.to(tl.pointer_type(tl.uint8)) + offs, code, mask=mask)


@triton.jit
def store_e2m1(addr, offs, x, mask, scale, word, STOCHASTIC: tl.constexpr):
    """Store a ``[rows, cols]`` tile (an even number of columns) as packed E2M1 codes of
    ``round(clamp(x * (1/s), -6, 6))`` with ``s = scale[r]`` per row (``1/s`` correctly rounded;
    nearest-even or stochastic; NaN codes as +0): adjacent columns 2j, 2j+1 share a byte (low,
    high nibble); a masked-off high element (past the end) codes as 0."""
    inv = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
    y = x * inv[:, None]
    y = tl.where(is_nan(y), y, tl.minimum(tl.maximum(y, -FP4_MAX), FP4_MAX))
    q = round_to_format(y, word, FP4_M, FP4_EMIN, FP4_MAX, STOCHASTIC)
    code = tl.where(mask, e2m1_code(q), 0)
    R: tl.constexpr = code.shape[0]
    C: tl.constexpr = code.shape[1]
    lo, hi = tl.split(tl.reshape(code, [R, C // 2, 2]))
    off_lo, off_hi = tl.split(tl.reshape(offs, [R, C // 2, 2]))
    m_lo, m_hi = tl.split(tl.reshape(mask.to(tl.int32), [R, C // 2, 2]))
    byte = (lo | (hi << 4)).to(tl.uint8)
    tl.store(addr.to(tl.pointer_type(tl.uint8)) + off_lo // 2, byte, mask=m_lo != 0)


@triton.jit
def store_fp4_blocks(addr, scale_addr, offs, x, mask, block_row, row_mask, word, STOCHASTIC: tl.constexpr):
    """Encode a ``[rows, cols]`` tile (row r = block ``block_row[r]``) as packed E2M1 codes with
    E8M0 scales (``state_format.fp4_encode``): the MX scale rule with emax 2."""
    stored = e8m0_scale(finite_absmax(x, mask), FP4_EMAX)
    store_e2m1(addr, offs, x, mask, e8m0_value(stored), word, STOCHASTIC)
    tl.store(scale_addr.to(tl.pointer_type(tl.uint8)) + block_row, stored, mask=row_mask)


@triton.jit
def store_nvfp4_blocks(addr, scale_addr, offs, x, mask, block_row, row_mask, word, tscale,
                       STOCHASTIC: tl.constexpr):
    """Encode a ``[rows, cols]`` tile (row r = block ``block_row[r]``) as packed E2M1 codes with
    E4M3 block scales under the fp32 tensor scale ``tscale`` (``state_format.nvfp4_encode``):
    ``sb = nvfp4_block_scale(absmax, S)``, codes of ``x`` at ``eff = sb * S``, ``sb`` stored as
    its E4M3 code."""
    sb = nvfp4_block_scale(finite_absmax(x, mask), tscale)
    store_e2m1(addr, offs, x, mask, sb * tscale, word, STOCHASTIC)
    tl.store(scale_addr.to(tl.pointer_type(tl.uint8)) + block_row, fp8_code(sb, E4M3_M, E4M3_EMIN, E4M3_BIAS),
             mask=row_mask)


@triton.jit
def store_state(addr, scale_addr, offs, x, mask, block_row, row_mask, word, inv_qmax, tscale,
                KIND: tl.constexpr, STOCHASTIC: tl.constexpr):
    """Store a state tile in its format (see the module docstring; ``tscale``: NVFP4's new fp32
    tensor scale, unused otherwise)."""
    if KIND == KIND_FP4_E2M1:
        store_fp4_blocks(addr, scale_addr, offs, x, mask, block_row, row_mask, word, STOCHASTIC)
    elif KIND == KIND_FP4_E2M1_E4M3:
        store_nvfp4_blocks(addr, scale_addr, offs, x, mask, block_row, row_mask, word, tscale, STOCHASTIC)
    elif KIND >= KIND_E4M3:
        store_fp8_blocks(addr, scale_addr, offs, x, mask, block_row, row_mask, word, inv_qmax,
                         KIND, STOCHASTIC)
    else:
        store_values(addr, offs, x, mask, word, KIND, STOCHASTIC)
