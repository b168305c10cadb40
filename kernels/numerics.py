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
* random bits come from ``tl.philox`` keyed by the slot's 64-bit seed ``k0 | k1 << 32`` with
  counter ``(i mod 2**32, i >> 32, 0, 0)`` (:mod:`signopt.philox`).

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
from signopt.declaration import FORMATS, RANDOM_WORDS
from signopt.state_format import MIN_SCALE as _MIN_SCALE

KIND_FP32 = tl.constexpr(FORMATS["fp32"].id)
KIND_BF16 = tl.constexpr(FORMATS["bf16"].id)
KIND_FP16 = tl.constexpr(FORMATS["fp16"].id)
KIND_E4M3 = tl.constexpr(FORMATS["fp8_e4m3"].id)
KIND_E5M2 = tl.constexpr(FORMATS["fp8_e5m2"].id)

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

# which Philox output word each purpose reads
WORD_SIGN = tl.constexpr(RANDOM_WORDS["sign"])
WORD_STATE_ROUNDING = tl.constexpr(RANDOM_WORDS["state_rounding"])
WORD_PARAM_ROUNDING = tl.constexpr(RANDOM_WORDS["param_rounding"])

TWO_POW_M24 = tl.constexpr(5.9604644775390625e-08)  # 2**-24
MIN_SCALE = tl.constexpr(_MIN_SCALE)  # 2**-126, smallest FP8 block scale
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
def philox_words(seed, idx):
    """Philox4x32-10 words for full-tensor element indices ``idx`` (int64, >= 0):
    key = ``seed`` (``k0 | k1 << 32``), counter = ``(idx mod 2**32, idx >> 32, 0, 0)``."""
    lo = (idx & 0xFFFFFFFF).to(tl.uint32)
    hi = (idx >> 32).to(tl.uint32)
    zero = lo * 0
    return tl.philox(seed, lo, hi, zero, zero)


@triton.jit
def _word(w0, w1, w2, w3, WORD: tl.constexpr):
    if WORD == 0:
        return w0
    elif WORD == 1:
        return w1
    elif WORD == 2:
        return w2
    else:
        tl.static_assert(WORD == 3, "a Philox4x32 call has four words")
        return w3


@triton.jit
def random_words(seed, idx):
    """The Philox words of elements ``idx`` for each purpose, as
    :data:`signopt.declaration.RANDOM_WORDS` assigns them: ``(sign, state rounding, parameter
    rounding)``. The only place the kernels draw random bits."""
    w0, w1, w2, w3 = philox_words(seed, idx)
    return (_word(w0, w1, w2, w3, WORD_SIGN), _word(w0, w1, w2, w3, WORD_STATE_ROUNDING),
            _word(w0, w1, w2, w3, WORD_PARAM_ROUNDING))


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
def fp16_round(x, word, STOCHASTIC: tl.constexpr):
    """``casting.round_to_dtype(x, float16)``: IEEE nearest-even cast (inf on overflow, as
    torch), or stochastic via :func:`round_to_format` with fp16's grid (saturating)."""
    if STOCHASTIC:
        return round_to_format(x, word, FP16_M, FP16_EMIN, FP16_MAX, True).to(tl.float16)
    else:
        return x.to(tl.float16)
