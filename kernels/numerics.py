"""Shared ``@triton.jit`` numerics: bit casts, rounding, Philox words, exact elementwise ops.

Each helper is the Triton twin of a function of the torch reference (named in its docstring)
and reproduces it bit for bit:

* every rounding decision is taken on the fp32 bits with integer arithmetic (the Triton
  interpreter truncates fp32 -> bf16 and loses mantissa carries in fp32 -> E4M3, and float
  casts differ between devices), exactly as :mod:`signopt.casting` does;
* division is ``tl.math.div_rn`` and square root ``tl.math.sqrt_rn`` (correctly rounded;
  plain ``/`` compiles to an approximate division);
* NaN-ignoring max is written out (``fmax``), because ``tl.maximum`` ignores NaN on the GPU but
  propagates it in the interpreter;
* random bits come from ``tl.philox`` keyed by the slot's 64-bit seed ``k0 | k1 << 32``
  (random bits v2, :mod:`signopt.philox`): the call on counter ``(j mod 2**32, j >> 32, P, 0)``
  serves the four elements ``i = 4j .. 4j+3`` for purpose ``P``, element ``i`` taking word
  ``i & 3``; :func:`row_words` makes each call once and interleaves its four words.

Storage kinds (``KIND`` constexprs) are shared by parameters, gradients and state: the
format ids of :data:`signopt.declaration.FORMATS` (fp32, bf16 accessed as raw 16-bit patterns,
fp16, FP8 E4M3 and E5M2 as raw 8-bit codes); the FP8 and fp16 grids (mantissa bits, minimum
normal exponent, largest finite value) come from the same declaration. The interpreter hands
these module constants to a jitted callee as ``tl.constexpr`` objects, which lack ``>>``/``<<``
with an int on the left and wrap a tensor added to them: the grid helpers therefore write
``2**M`` and ``0x7F // 2**M`` for shifts by ``M`` and keep a tensor operand on the left.
"""
import triton
import triton.language as tl

from signopt.casting import BF16_MAX_BITS as _BF16_MAX_BITS, BF16_QNAN as _BF16_QNAN
from signopt.declaration import FORMATS, RANDOM_PURPOSES
from signopt.state_format import MIN_SCALE as _MIN_SCALE
from signopt.state_format import _E4M3_MIN, _INV_6, _INV_2688

KIND_FP32 = tl.constexpr(FORMATS["fp32"].id)
KIND_BF16 = tl.constexpr(FORMATS["bf16"].id)
KIND_FP16 = tl.constexpr(FORMATS["fp16"].id)
KIND_E4M3 = tl.constexpr(FORMATS["fp8_e4m3"].id)
KIND_E5M2 = tl.constexpr(FORMATS["fp8_e5m2"].id)
KIND_MXE4M3 = tl.constexpr(FORMATS["mxfp8_e4m3"].id)  # E4M3 / E5M2 codes with E8M0 block scales (MX)
KIND_MXE5M2 = tl.constexpr(FORMATS["mxfp8_e5m2"].id)
KIND_FP4_E2M1 = tl.constexpr(FORMATS["fp4_e2m1"].id)  # packed E2M1 codes, two a byte, E8M0 scales
KIND_FP4_E2M1_E4M3 = tl.constexpr(FORMATS["fp4_e2m1_e4m3"].id)  # NVFP4: E2M1 codes, E4M3 block scales, fp32 tensor scale
FP4_M = tl.constexpr(FORMATS["fp4_e2m1"].mantissa_bits)
FP4_EMIN = tl.constexpr(FORMATS["fp4_e2m1"].emin)
FP4_MAX = tl.constexpr(FORMATS["fp4_e2m1"].max_finite)
FP4_EMAX = tl.constexpr(FORMATS["fp4_e2m1"].emax)
E4M3_EMAX = tl.constexpr(FORMATS["mxfp8_e4m3"].emax)  # largest normal exponent: the MX scale rule's emax
E5M2_EMAX = tl.constexpr(FORMATS["mxfp8_e5m2"].emax)

# grids of the small formats: mantissa bits, minimum normal exponent, exponent bias (1 - emin),
# largest finite value (Qmax of a block-scaled format)
FP16_M = tl.constexpr(FORMATS["fp16"].mantissa_bits)
FP16_EMIN = tl.constexpr(FORMATS["fp16"].emin)
FP16_MAX = tl.constexpr(FORMATS["fp16"].max_finite)
E4M3_M = tl.constexpr(FORMATS["fp8_e4m3"].mantissa_bits)
E4M3_EMIN = tl.constexpr(FORMATS["fp8_e4m3"].emin)
E4M3_BIAS = tl.constexpr(1 - FORMATS["fp8_e4m3"].emin)
E4M3_MAX = tl.constexpr(FORMATS["fp8_e4m3"].max_finite)
E4M3_HAS_INF = tl.constexpr(False)  # float8_e4m3fn: S.1111.111 is NaN, no inf
E5M2_M = tl.constexpr(FORMATS["fp8_e5m2"].mantissa_bits)
E5M2_EMIN = tl.constexpr(FORMATS["fp8_e5m2"].emin)
E5M2_BIAS = tl.constexpr(1 - FORMATS["fp8_e5m2"].emin)
E5M2_MAX = tl.constexpr(FORMATS["fp8_e5m2"].max_finite)
E5M2_HAS_INF = tl.constexpr(True)  # IEEE-like: exponent all ones is inf / NaN

# the purpose of each draw: the third Philox counter word
PURPOSE_SIGN = tl.constexpr(RANDOM_PURPOSES["sign"])
PURPOSE_STATE_ROUNDING = tl.constexpr(RANDOM_PURPOSES["state_rounding"])
PURPOSE_PARAM_ROUNDING = tl.constexpr(RANDOM_PURPOSES["param_rounding"])

TWO_POW_M24 = tl.constexpr(5.9604644775390625e-08)  # 2**-24
MIN_SCALE = tl.constexpr(_MIN_SCALE)  # 2**-126, smallest FP8 block scale (and NVFP4 tensor scale)
# NVFP4's two-level scaling (state_format.nvfp4_encode): fp32(1/6), fp32(1/(6*448)), smallest block scale
NVFP4_INV_6 = tl.constexpr(_INV_6)
NVFP4_INV_2688 = tl.constexpr(_INV_2688)
NVFP4_MIN_BLOCK_SCALE = tl.constexpr(_E4M3_MIN)  # 2**-9, the smallest E4M3 subnormal
BF16_QNAN = tl.constexpr(_BF16_QNAN)
BF16_MAX_BITS = tl.constexpr(_BF16_MAX_BITS)


# ----------------------------------------------------------------------------- bit views
@triton.jit
def f32_bits(x):
    """The fp32 bits of ``x`` as uint32."""
    return x.to(tl.uint32, bitcast=True)


@triton.jit
def bits_f32(b):
    """The fp32 value whose bits are the uint32 ``b``."""
    return b.to(tl.float32, bitcast=True)


@triton.jit
def is_nan(x):
    return x != x


@triton.jit
def is_finite(x):
    """``isfinite`` from the exponent bits (no float comparison against inf)."""
    return ((f32_bits(x) >> 23) & 0xFF) != 0xFF


@triton.jit
def fmax(a, b):
    """``torch.fmax``: the larger of ``a``, ``b``, ignoring a NaN operand."""
    m = tl.where(a > b, a, b)
    m = tl.where(is_nan(a), b, m)
    return tl.where(is_nan(b), a, m)


@triton.jit
def sign(x):
    """``torch.sign`` on fp32: -1, 0 or +1; NaN -> 0 (torch's CPU convention)."""
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, 0.0))


@triton.jit
def safe_div(x, norm):
    """``kappa._safe_div``: ``x / norm`` (correctly rounded) where ``norm > 0``, else 0."""
    den = tl.where(norm > 0.0, norm, 1.0)
    return tl.where(norm > 0.0, tl.math.div_rn(x, den), 0.0)


@triton.jit
def ema(x, new, beta, one_minus_beta):
    """``reference.ema``: ``x*beta + new*(1-beta)``; products and sum each rounded (no FMA
    as long as the kernel is launched with ``enable_fp_fusion=False``)."""
    return x * beta + new * one_minus_beta


@triton.jit
def pow_f64(x, e):
    """``x**e`` for ``x >= 0`` in fp64 as ``exp(e*log(x))`` (0 for x = 0, e > 0)."""
    return tl.exp(tl.log(x) * e)


# ----------------------------------------------------------------------------- Philox
@triton.jit
def philox_calls(seed, j, PURPOSE: tl.constexpr):
    """The four words of the Philox4x32-10 calls on counters ``(j mod 2**32, j >> 32, PURPOSE,
    0)`` (``j`` int64, >= 0) keyed by ``seed`` (``k0 | k1 << 32``): ``philox._calls``."""
    lo = (j & 0xFFFFFFFF).to(tl.uint32)
    hi = (j >> 32).to(tl.uint32)
    zero = lo * 0
    return tl.philox(seed, lo, hi, zero + PURPOSE, zero)


@triton.jit
def _select4(s, v0, v1, v2, v3):
    """``(v0, v1, v2, v3)[s]`` elementwise, ``s`` in 0..3."""
    return tl.where(s == 0, v0, tl.where(s == 1, v1, tl.where(s == 2, v2, v3)))


@triton.jit
def element_word(seed, idx, PURPOSE: tl.constexpr):
    """``philox.element_word``: the word of each full-tensor element index ``idx`` (int64,
    >= 0, any pattern) for ``PURPOSE``: word ``idx & 3`` of the call on ``j = idx >> 2``. One
    call per element; :func:`row_words` serves runs of consecutive indices with a quarter of
    the calls."""
    w0, w1, w2, w3 = philox_calls(seed, idx >> 2, PURPOSE)
    return _select4(idx & 3, w0, w1, w2, w3)


@triton.jit
def row_words(seed, base, PURPOSE: tl.constexpr, COLS: tl.constexpr):
    """The random words for ``PURPOSE`` of the elements ``base + arange(COLS)`` of each row
    (``base``: ``[ROWS, 1]`` int64 full-tensor indices, ``seed`` a scalar or ``[ROWS, 1]``):
    ``[ROWS, COLS]`` uint32, equal to :func:`element_word` at those indices. The only place the
    kernels draw random bits.

    Column ``c = 4k + l`` of a row with ``a = base & 3`` is element ``base + c``, which takes
    word ``(a + l) & 3`` of call ``(base >> 2) + k + ((a + l) >> 2)``. The ``COLS/4`` calls
    ``x`` at ``(base >> 2) + k`` serve every column of a row whose ``base`` is a multiple of 4
    (lane ``l`` is word ``l`` of call ``k``: one call per four elements); otherwise the lanes
    past the row's call boundary read the next call, ``y`` at ``(base >> 2) + k + 1``, which is
    only drawn when some row of the tile is misaligned (an unaligned shard offset, an FP8 block
    or row segment whose length is not a multiple of 4). The four lanes are interleaved into
    columns with :func:`tl.interleave`."""
    if COLS % 4 != 0:  # tiles narrower than one call (FP8 blocks of 1 or 2): one call each
        return element_word(seed, base + tl.arange(0, COLS)[None, :], PURPOSE)
    else:
        K: tl.constexpr = COLS // 4
        j = (base >> 2) + tl.arange(0, K)[None, :]
        x0, x1, x2, x3 = philox_calls(seed, j, PURPOSE)
        a = (base & 3) + j * 0  # [ROWS, K]
        if tl.max(a) == 0:
            l0, l1, l2, l3 = x0, x1, x2, x3
        else:
            y0, y1, y2, _ = philox_calls(seed, j + 1, PURPOSE)
            l0 = _select4(a, x0, x1, x2, x3)
            l1 = _select4(a, x1, x2, x3, y0)
            l2 = _select4(a, x2, x3, y0, y1)
            l3 = _select4(a, x3, y0, y1, y2)
        return tl.interleave(tl.interleave(l0, l2), tl.interleave(l1, l3))


@triton.jit
def uniform_from_word(w):
    """``philox.uniform_from_word``: ``(w >> 8) * 2**-24``, exact in fp32."""
    return (w >> 8).to(tl.float32) * TWO_POW_M24


# ----------------------------------------------------------------------------- bf16
@triton.jit
def bf16_decode(raw):
    """fp32 value of bf16 bit patterns held as int16."""
    return bits_f32(raw.to(tl.uint16, bitcast=True).to(tl.uint32) << 16)


@triton.jit
def bf16_nearest(x):
    """``casting.fp32_to_bf16_nearest``: ``(bits + 0x7FFF + ((bits >> 16) & 1)) >> 16``,
    NaN -> 0x7FC0; returned as int16 bit patterns."""
    b = f32_bits(x)
    r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    r = tl.where(is_nan(x), BF16_QNAN, r & 0xFFFF)
    return r.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def bf16_stochastic(x, word):
    """``casting.fp32_to_bf16_stochastic``: ``(bits + (word >> 16)) >> 16``; a finite value
    that carries into inf saturates at the largest finite bf16; NaN -> 0x7FC0."""
    b = f32_bits(x)
    r = ((b + (word >> 16)) >> 16) & 0xFFFF
    overflow = is_finite(x) & ((r & 0x7FFF) == 0x7F80)
    r = tl.where(overflow, (r & 0x8000) | BF16_MAX_BITS, r)
    r = tl.where(is_nan(x), BF16_QNAN, r)
    return r.to(tl.uint16).to(tl.int16, bitcast=True)


# ----------------------------------------------------------------------------- small formats
@triton.jit
def round_to_format(x, word, M: tl.constexpr, EMIN: tl.constexpr, MAX_FINITE: tl.constexpr,
                    STOCHASTIC: tl.constexpr):
    """``casting.round_to_format``: ``x`` rounded onto the grid of a format with ``M`` mantissa
    bits and minimum normal exponent ``EMIN``, nearest-even or stochastic (``U < frac`` with
    ``U`` from ``word``), saturated at ``MAX_FINITE``; NaN stays NaN.

    ``ulp = 2**(max(exponent bits of x, EMIN) - M)`` is built from bits, so ``k = |x|/ulp``
    is an exact multiplication by ``2**-(e)``; ``k < 2**(M+1)`` for every finite ``x``, so
    its integer and fractional parts are exact in int32/fp32."""
    b = f32_bits(x)
    exp = ((b >> 23) & 0xFF).to(tl.int32) - 127
    e = tl.maximum(exp, EMIN) - M
    ulp = bits_f32(((e + 127) << 23).to(tl.uint32))
    inv_ulp = bits_f32(((127 - e) << 23).to(tl.uint32))
    k = tl.abs(x) * inv_ulp
    in_range = k < 2.0 * 2 ** (M + 1)
    ks = tl.where(in_range, k, 0.0)
    lo = ks.to(tl.int32)
    frac = ks - lo.to(tl.float32)
    if STOCHASTIC:
        up = uniform_from_word(word) < frac
    else:
        up = (frac > 0.5) | ((frac == 0.5) & ((lo & 1) == 1))
    kr = tl.where(in_range, (lo + up.to(tl.int32)).to(tl.float32), k)
    out = tl.minimum(kr * ulp, MAX_FINITE)
    out = bits_f32(f32_bits(out) | (b & 0x80000000))
    return tl.where(is_nan(x), x, out)


@triton.jit
def fp8_code(y, M: tl.constexpr, EMIN: tl.constexpr, BIAS: tl.constexpr):
    """The FP8 bit pattern (uint8) of ``y``, which is exactly representable (output of
    :func:`round_to_format`) or NaN (-> ``sign | 0x7F``, as torch casts NaN)."""
    yb = f32_bits(y)
    sgn = (yb >> 24) & 0x80
    ye = ((yb >> 23) & 0xFF).to(tl.int32) - 127
    normal = ((ye + BIAS) << M).to(tl.uint32) | ((yb & 0x7FFFFF) >> (23 - M))
    sub_scale = bits_f32(yb * 0 + ((127 + M - EMIN) << 23))  # 2**(M - EMIN)
    subnormal = (tl.abs(y) * sub_scale).to(tl.uint32)
    code = tl.where(ye >= EMIN, normal, subnormal) | sgn
    code = tl.where(is_nan(y), sgn | 0x7F, code)
    return code.to(tl.uint8)


@triton.jit
def fp8_value(code, M: tl.constexpr, EMIN: tl.constexpr, BIAS: tl.constexpr,
              HAS_INF: tl.constexpr):
    """fp32 value of FP8 bit patterns (uint8): E4M3 (no inf, NaN = S.1111.111) or E5M2
    (``HAS_INF``: exponent all ones is inf/NaN)."""
    E_ALL: tl.constexpr = 0x7F // 2**M  # the exponent field all ones
    M_ALL: tl.constexpr = 2**M - 1  # the mantissa field all ones
    c = code.to(tl.uint32)
    sgn = (c & 0x80) << 24
    e = ((c >> M) & E_ALL).to(tl.int32)
    m = c & M_ALL
    normal = bits_f32(sgn | ((e - BIAS + 127) << 23).to(tl.uint32) | (m << (23 - M)))
    sub_unit = bits_f32(c * 0 + ((127 + EMIN - M) << 23))  # 2**(EMIN - M)
    sub = bits_f32(f32_bits(m.to(tl.float32) * sub_unit) | sgn)
    val = tl.where(e == 0, sub, normal)
    if HAS_INF:
        special = tl.where(m == 0, bits_f32(sgn | 0x7F800000), bits_f32(c * 0 + 0x7FC00000))
        val = tl.where(e == E_ALL, special, val)
    else:
        val = tl.where((e == E_ALL) & (m == M_ALL), bits_f32(c * 0 + 0x7FC00000), val)
    return val


@triton.jit
def e8m0_value(code):
    """fp32 ``2**(code - 127)`` of E8M0 scale bytes (``state_format.e8m0_value``): 2**-127 (an fp32
    subnormal) for 0, NaN for 0xFF."""
    c = code.to(tl.uint32)
    bits = tl.where(c == 0, c * 0 + 0x00400000, c << 23)
    bits = tl.where(c == 0xFF, c * 0 + 0x7FC00000, bits)
    return bits_f32(bits)


@triton.jit
def e8m0_scale(absmax, EMAX: tl.constexpr):
    """The E8M0 byte (uint8) of a block's finite absmax (``state_format.e8m0_codes``):
    ``max(exponent field - EMAX, 0)``."""
    e = ((f32_bits(absmax) >> 23) & 0xFF).to(tl.int32) - EMAX
    return tl.maximum(e, 0).to(tl.uint8)


@triton.jit
def nvfp4_tensor_scale(absmax):
    """NVFP4's fp32 tensor scale of the tensor's finite absmax ``T`` (``state_format.nvfp4_encode``):
    ``max(T * fp32(1/2688), 2**-126)``."""
    s = absmax * NVFP4_INV_2688
    return tl.where(s < MIN_SCALE, MIN_SCALE, s)


@triton.jit
def nvfp4_block_scale(absmax, tscale):
    """NVFP4's E4M3 block scale (its fp32 value) of a block's finite absmax ``a`` under tensor
    scale ``S`` (``state_format.nvfp4_encode``): ``max(e4m3_nearest(min((a * fp32(1/6)) / S, 448)),
    2**-9)``, the division correctly rounded."""
    u = tl.minimum(tl.math.div_rn(absmax * NVFP4_INV_6, tscale), E4M3_MAX)
    sb = round_to_format(u, 0, E4M3_M, E4M3_EMIN, E4M3_MAX, False)  # (no word: nearest)
    return tl.maximum(sb, NVFP4_MIN_BLOCK_SCALE)


@triton.jit
def e2m1_value(code):
    """fp32 value of E2M1 codes (integers in [0, 16); ``state_format.fp4_values``)."""
    c = code.to(tl.uint32)
    e = (c >> 1) & 3
    f = c & 1
    normal = bits_f32(((e + 126) << 23) | (f << 22))
    v = tl.where(e == 0, f.to(tl.float32) * 0.5, normal)
    return tl.where((c & 8) != 0, -v, v)


@triton.jit
def e2m1_code(q):
    """E2M1 code (uint32 in [0, 16)) of values on the E2M1 grid (``state_format.fp4_codes``):
    sign bit 3; NaN codes as +0."""
    qb = f32_bits(q)
    qe = ((qb >> 23) & 0xFF).to(tl.int32) - 127
    normal = ((qe + 1) * 2).to(tl.uint32) | ((qb & 0x7FFFFF) >> 22)
    sub = tl.where(is_nan(q), 0.0, tl.abs(q) * 2.0).to(tl.uint32)
    code = tl.where(qe >= 0, normal, sub) | ((qb >> 28) & 8)
    return tl.where(is_nan(q), qb * 0, code)


@triton.jit
def fp16_round(x, word, STOCHASTIC: tl.constexpr):
    """``casting.round_to_dtype(x, float16)``: IEEE nearest-even cast (inf on overflow, as
    torch), or stochastic via :func:`round_to_format` with fp16's grid (saturating)."""
    if STOCHASTIC:
        return round_to_format(x, word, FP16_M, FP16_EMIN, FP16_MAX, True).to(tl.float16)
    else:
        return x.to(tl.float16)
