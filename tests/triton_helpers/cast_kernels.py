"""One-program Triton kernels exposing the backend's cast helpers to the tests."""
import torch
import triton
import triton.language as tl

from signopt.kernels import numerics as nm
from signopt.kernels import state_io as sio

N = 1024


@triton.jit
def _bf16_kernel(x_ptr, w_ptr, out_ptr, n, STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    w = tl.load(w_ptr + offs, mask=mask, other=0).to(tl.uint32)
    if STOCHASTIC:
        bits = nm.bf16_stochastic(x, w)
    else:
        bits = nm.bf16_nearest(x)
    tl.store(out_ptr + offs, bits, mask=mask)


@triton.jit
def _round_kernel(x_ptr, w_ptr, out_ptr, n, M: tl.constexpr, EMIN: tl.constexpr,
                  MAXF: tl.constexpr, STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    w = tl.load(w_ptr + offs, mask=mask, other=0).to(tl.uint32)
    tl.store(out_ptr + offs, nm.round_to_format(x, w, M, EMIN, MAXF, STOCHASTIC), mask=mask)


@triton.jit
def _code_kernel(x_ptr, out_ptr, n, M: tl.constexpr, EMIN: tl.constexpr, BIAS: tl.constexpr,
                 BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, nm.fp8_code(x, M, EMIN, BIAS), mask=mask)


@triton.jit
def _value_kernel(c_ptr, out_ptr, n, M: tl.constexpr, EMIN: tl.constexpr, BIAS: tl.constexpr,
                  HAS_INF: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    c = tl.load(c_ptr + offs, mask=mask, other=0)
    tl.store(out_ptr + offs, nm.fp8_value(c, M, EMIN, BIAS, HAS_INF), mask=mask)


# the codec constants the kernels use (signopt.kernels.numerics, from signopt.declaration)
FP8 = {name: {k: c.value for k, c in consts.items()} for name, consts in {
    "fp8_e4m3": dict(M=nm.E4M3_M, EMIN=nm.E4M3_EMIN, BIAS=nm.E4M3_BIAS, HAS_INF=nm.E4M3_HAS_INF),
    "fp8_e5m2": dict(M=nm.E5M2_M, EMIN=nm.E5M2_EMIN, BIAS=nm.E5M2_BIAS, HAS_INF=nm.E5M2_HAS_INF),
}.items()}


GRIDS = {name: {k: c.value for k, c in consts.items()} for name, consts in {
    "fp16": dict(M=nm.FP16_M, EMIN=nm.FP16_EMIN, MAXF=nm.FP16_MAX),
    "fp8_e4m3": dict(M=nm.E4M3_M, EMIN=nm.E4M3_EMIN, MAXF=nm.E4M3_MAX),
    "fp8_e5m2": dict(M=nm.E5M2_M, EMIN=nm.E5M2_EMIN, MAXF=nm.E5M2_MAX),
}.items()}


def _fp8_params(spec):
    return {k: v for k, v in FP8[spec.name].items() if k != "HAS_INF"}


def bf16(x, words, stochastic):
    out = torch.empty(x.numel(), dtype=torch.int16)
    _bf16_kernel[(1,)](x, words.to(torch.int64), out, x.numel(), STOCHASTIC=stochastic, BLOCK=N)
    return out.view(torch.bfloat16)


def round_format(x, words, spec, stochastic):
    out = torch.empty_like(x)
    _round_kernel[(1,)](x, words.to(torch.int64), out, x.numel(), STOCHASTIC=stochastic, BLOCK=N,
                        **GRIDS[spec.name])
    return out


def fp8_codes(y, spec):
    out = torch.empty(y.numel(), dtype=torch.uint8)
    _code_kernel[(1,)](y, out, y.numel(), BLOCK=N, **_fp8_params(spec))
    return out


def fp8_values(codes, spec):
    out = torch.empty(codes.numel(), dtype=torch.float32)
    _value_kernel[(1,)](codes, out, codes.numel(), BLOCK=N, **FP8[spec.name])
    return out


@triton.jit
def _element_word_kernel(seed, idx_ptr, out_ptr, n, PURPOSE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    idx = tl.load(idx_ptr + offs, mask=mask, other=0)
    tl.store(out_ptr + offs, nm.element_word(seed, idx, PURPOSE).to(tl.int64), mask=mask)


def element_word(seed, idx, purpose):
    """``numerics.element_word`` at element indices ``idx`` (int64, any pattern) for
    ``purpose`` (uint32 values in int64)."""
    out = torch.empty(idx.numel(), dtype=torch.int64)
    _element_word_kernel[(1,)](seed, idx, out, idx.numel(), PURPOSE=purpose, BLOCK=N)
    return out


@triton.jit
def _row_words_kernel(seed, base_ptr, out_ptr, PURPOSE: tl.constexpr, ROWS: tl.constexpr,
                      COLS: tl.constexpr):
    r = tl.arange(0, ROWS)
    base = tl.load(base_ptr + r)[:, None]
    words = nm.row_words(seed, base, PURPOSE, COLS)
    tl.store(out_ptr + r[:, None] * COLS + tl.arange(0, COLS)[None, :], words.to(tl.int64))


def row_words(seed, bases, purpose, cols):
    """``numerics.row_words``: row ``r`` holds the words of elements ``bases[r] + arange(cols)``
    for ``purpose`` (``bases``: int64, a power of two of them)."""
    out = torch.empty(bases.numel(), cols, dtype=torch.int64)
    _row_words_kernel[(1,)](seed, bases, out, PURPOSE=purpose, ROWS=bases.numel(), COLS=cols)
    return out


@triton.jit
def _nvfp4_kernel(x_ptr, w_ptr, addr_ptr, dec_ptr, ts_ptr, n, STOCHASTIC: tl.constexpr,
                  ROWS: tl.constexpr, COLS: tl.constexpr):
    r = tl.arange(0, ROWS).to(tl.int64)
    offs = r[:, None] * COLS + tl.arange(0, COLS)[None, :]
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    w = tl.load(w_ptr + offs, mask=mask, other=0).to(tl.uint32)
    ts = nm.nvfp4_tensor_scale(tl.max(sio.finite_absmax(x, mask), axis=0))
    codes, scales = tl.load(addr_ptr), tl.load(addr_ptr + 1)
    sio.store_nvfp4_blocks(codes, scales, offs, x, mask, r, r * COLS < n, w, ts, STOCHASTIC)
    tl.store(ts_ptr, ts)
    tl.debug_barrier()
    dec = sio.load_state(codes, scales, offs, mask, offs // COLS, ts, nm.KIND_FP4_E2M1_E4M3)
    tl.store(dec_ptr + offs, dec, mask=mask)


def nvfp4(x, words, block, stochastic):
    """``state_io.store_nvfp4_blocks`` of flat fp32 ``x`` in blocks of ``block`` under the tensor
    scale of its whole finite absmax (``numerics.nvfp4_tensor_scale``), then ``load_state`` of
    what it stored: (packed codes, E4M3 block scales, tensor scale, decoded values)."""
    n = x.numel()
    rows = 1 << max(0, (-(-n // block) - 1).bit_length())
    codes = torch.zeros((n + 1) // 2, dtype=torch.uint8)
    scales = torch.zeros(-(-n // block), dtype=torch.float8_e4m3fn)
    ts = torch.zeros(1, dtype=torch.float32)
    dec = torch.empty(n, dtype=torch.float32)
    addrs = torch.tensor([codes.data_ptr(), scales.data_ptr()], dtype=torch.int64)
    _nvfp4_kernel[(1,)](x, words.to(torch.int64), addrs, dec, ts, n, STOCHASTIC=stochastic,
                        ROWS=rows, COLS=block)
    return codes, scales, ts, dec
