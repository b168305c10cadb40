// Storage formats as integer bit operations, identical to signopt/casting.py and
// signopt/state_format.py.  One "format" struct per storage type: raw type, load (-> fp32) and
// stores with round-to-nearest-even (rn) or stochastic rounding from one Philox word (sr).
//   bf16 rn:  (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16,  NaN -> 0x7FC0
//   bf16 sr:  (bits + (word >> 16)) >> 16, finite never rounds to inf (saturates), NaN -> 0x7FC0
//   grid (fp16 sr, E4M3, E5M2; M mantissa bits, minimum normal exponent emin):
//       e = max(exponent bits of x, emin), ulp = 2^(e-M), k = |x|/ulp (exact),
//       rn: rint(k);  sr: floor(k) + (U < k - floor(k));  result min(k*ulp, max) with x's sign
//   FP8 block (state_format.py):  s = max(absmax*(1/Qmax), 2^-126), inv = 1/s,
//       code = grid(clamp(x*inv, -Qmax, Qmax)), value = code*s
#pragma once
#include <math.h>
#include "config.h"
#include "philox.h"
#include "signopt_declaration.h"
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace signopt {

SIGNOPT_HD bool isnan32(float x) { return (f2u(x) & 0x7FFFFFFFu) > 0x7F800000u; }

// ---------------------------------------------------------------- bf16
SIGNOPT_HD float bf16_to_f32(uint16_t b) { return u2f((uint32_t)b << 16); }

SIGNOPT_HD uint16_t f32_to_bf16_rn(float x) {
  const uint32_t b = f2u(x);
  const uint32_t r = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
  // select in 32 bits, narrow after (a 16-bit select on a 32-bit condition stops gcc vectorising)
  return (uint16_t)(isnan32(x) ? 0x7FC0u : r);
}

SIGNOPT_HD uint16_t f32_to_bf16_sr(float x, uint32_t word) {
  const uint32_t b = f2u(x);
  uint32_t r = ((b + (word >> 16)) >> 16) & 0xFFFFu;
  r = (finite32(x) && (r & 0x7FFFu) == 0x7F80u) ? ((r & 0x8000u) | 0x7F7Fu) : r;
  return (uint16_t)(isnan32(x) ? 0x7FC0u : r);
}

#if defined(__CUDACC__)
// f32_to_bf16_rn of two values, packed (lo in the low half).  sm_80+: cvt.rn.bf16x2.f32, nearest
// even on the bits, infinities and subnormals included, as f32_to_bf16_rn; only a NaN comes out
// differently (0x7FFF, not 0x7FC0), so a pair holding one takes f32_to_bf16_rn.
__device__ __forceinline__ uint32_t f32x2_to_bf16x2_rn(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  if (!isnan32(lo) && !isnan32(hi)) return r;
#endif
  return (uint32_t)f32_to_bf16_rn(lo) | ((uint32_t)f32_to_bf16_rn(hi) << 16);
}
#endif

// ---------------------------------------------------------------- fp16 (IEEE rn)
#if defined(__CUDACC__)
SIGNOPT_HD uint16_t f32_to_f16_rn(float x) { return __half_raw(__float2half_rn(x)).x; }
SIGNOPT_HD float f16_to_f32(uint16_t b) {
  __half_raw r;
  r.x = b;
  return __half2float(__half(r));
}
#else
// IEEE binary16 of the host compiler: _Float16; g++ before 13 has no _Float16 in C++ on Arm,
// where __fp16 is the same IEEE format (__ARM_FP16_FORMAT_IEEE; conversions round to nearest even).
#if defined(__aarch64__) && defined(__ARM_FP16_FORMAT_IEEE) && !defined(__clang__) && __GNUC__ < 13
typedef __fp16 host_half;
#else
typedef _Float16 host_half;
#endif
SIGNOPT_HD uint16_t f32_to_f16_rn(float x) {
  const host_half h = (host_half)x;
  uint16_t b;
  __builtin_memcpy(&b, &h, 2);
  return b;
}
SIGNOPT_HD float f16_to_f32(uint16_t b) {
  host_half h;
  __builtin_memcpy(&h, &b, 2);
  return (float)h;
}
#endif

// ---------------------------------------------------------------- grid rounding
// x rounded onto the grid of a format with M mantissa bits and minimum normal exponent EMIN,
// clamped to maxf; NaN stays NaN.  (casting.round_to_format)
template <int M, int EMIN>
SIGNOPT_HD float round_to_grid(float x, float maxf, bool stochastic, uint32_t word) {
  const float mag = fabsf(x);
  int e = (int)((f2u(x) >> 23) & 0xFFu) - 127;
  e = e < EMIN ? EMIN : e;
  const float ulp = u2f((uint32_t)(e - M + 127) << 23);
  const float inv_ulp = u2f((uint32_t)(127 - (e - M) + 0) << 23);  // 2^-(e-M), exact
  float k = mag * inv_ulp;                                           // == mag / ulp exactly
  if (stochastic) {
    const float lo = floorf(k);
    k = (uniform_from_word(word) < k - lo) ? lo + 1.0f : lo;
  } else {
    k = rintf(k);
  }
  float out = k * ulp;
  out = out > maxf ? maxf : out;
  return isnan32(x) ? x : copysignf(out, x);
}

// fp32 value of an FP8 code (exact).  HAS_INF: E5M2 (exponent field all ones = inf/NaN);
// otherwise E4M3fn (0x7F = NaN, no inf).  The 7 magnitude bits go into an fp32's exponent and
// mantissa fields (an fp32 subnormal for an FP8 subnormal) and one product by 2^(127-BIAS)
// moves the exponent bias: exact, as long as subnormals are not flushed (no fast-math/FTZ).
template <int M, int EMIN, int BIAS, bool HAS_INF>
SIGNOPT_HD float fp8_value(uint8_t c) {
  const uint32_t sign = ((uint32_t)c & 0x80u) << 24;
  const uint32_t mag = (uint32_t)c & 0x7Fu;
  float v = u2f(mag << (23 - M)) * u2f((uint32_t)(254 - BIAS) << 23);
  if (HAS_INF) {
    constexpr uint32_t top = ((1u << (7 - M)) - 1u) << M;  // exponent field all ones, mantissa 0
    v = mag >= top ? (mag == top ? u2f(0x7F800000u) : u2f(0x7FC00000u)) : v;
  } else {
    v = mag == 0x7Fu ? u2f(0x7FC00000u) : v;
  }
  return u2f(f2u(v) | sign);
}

// ---------------------------------------------------------------- storage formats
// Element formats: load(raw) -> fp32; store(x, sr, word) -> raw.
struct FmtF32 {
  using raw = float;
  static constexpr bool blocked = fmt_block_scaled(FMT_FP32);
  static SIGNOPT_HD float load(raw x) { return x; }
  static SIGNOPT_HD raw store(float x, bool, uint32_t) { return x; }
};

struct FmtBF16 {
  using raw = uint16_t;
  static constexpr bool blocked = fmt_block_scaled(FMT_BF16);
  static SIGNOPT_HD float load(raw x) { return bf16_to_f32(x); }
  static SIGNOPT_HD raw store(float x, bool sr, uint32_t w) {
    return sr ? f32_to_bf16_sr(x, w) : f32_to_bf16_rn(x);
  }
};

struct FmtF16 {
  using raw = uint16_t;
  static constexpr bool blocked = fmt_block_scaled(FMT_FP16);
  static SIGNOPT_HD float load(raw x) { return f16_to_f32(x); }
  static SIGNOPT_HD raw store(float x, bool sr, uint32_t w) {
    // sr: grid rounding (saturating at 65504), then an exact conversion
    return sr ? f32_to_f16_rn(round_to_grid<fmt_mantissa_bits(FMT_FP16), fmt_emin(FMT_FP16)>(
                    x, fmt_max_finite(FMT_FP16), true, w))
              : f32_to_f16_rn(x);
  }
};

// Block-scaled FP8 codes of format FMT (M mantissa bits, minimum normal exponent EMIN, exponent
// bias 1 - EMIN, largest finite value Qmax: declared); HAS_INF: the all-ones exponent field holds
// infinities and NaNs (E5M2), else only the all-ones code is NaN (E4M3fn).  value = code * scale[block].
template <int FMT, bool HAS_INF>
struct FmtFP8 {
  using raw = uint8_t;
  static constexpr bool blocked = fmt_block_scaled(FMT);
  static_assert(blocked, "FmtFP8: a block-scaled format");
  static constexpr int M = fmt_mantissa_bits(FMT), EMIN = fmt_emin(FMT), BIAS = 1 - EMIN;
  static constexpr bool has_inf = HAS_INF;
  static constexpr float qmax = fmt_max_finite(FMT);
  // fp32(1/Qmax), as state_format._inv_qmax computes it
  static SIGNOPT_HD float inv_qmax() { return (float)(1.0 / (double)qmax); }
  static SIGNOPT_HD float load(raw c, float scale) { return fp8_value<M, EMIN, BIAS, HAS_INF>(c) * scale; }
  // scale from the block's absmax (non-finite values already excluded)
  static SIGNOPT_HD float scale_of(float absmax) {
    const float s = absmax * inv_qmax();
    return s < 1.17549435e-38f ? 1.17549435e-38f : s;  // max(s, 2^-126)
  }
  // The code of x*inv: clamped to +-Qmax, rounded onto the format's grid (round_to_grid: nearest
  // even, or stochastic from w) and encoded, as straight-line integer/fp32 operations that
  // vectorise (CPU loops): with e = max(exponent of y, EMIN) and k = |y|/2^(e-M) rounded (an
  // integer <= 2^(M+1)), the magnitude code is ((e - EMIN) << M) + k (BIAS = 1 - EMIN):
  // k = 2^(M+1) carries into the exponent field, and e = EMIN covers subnormals and the smallest
  // normal alike.  |y| <= Qmax (the largest finite code) after the clamp, so the result never
  // exceeds it.
  static SIGNOPT_HD raw encode(float x, float inv, bool sr, uint32_t w) {
    float y = x * inv;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    if (!sr) {
      // cvt.rn.satfinite (sm_89+): nearest even onto the format's grid, subnormals included,
      // saturating at +-Qmax -- the clamp-then-round below for every non-NaN y, infinities
      // included.  A NaN gives 0x7F whatever its sign; the sign is put back as below.
      uint16_t h;
      if (M == 3) {
        asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(h) : "f"(0.0f), "f"(y));
      } else {
        asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(h) : "f"(0.0f), "f"(y));
      }
      return (raw)(isnan32(y) ? (((f2u(y) >> 24) & 0x80u) | 0x7Fu) : (h & 0xFFu));
    }
#endif
    y = y < -qmax ? -qmax : (y > qmax ? qmax : y);  // clamp (NaN stays NaN)
    const uint32_t b = f2u(y);
    const uint32_t a = b & 0x7FFFFFFFu;
    int e = (int)(a >> 23) - 127;
    e = e < EMIN ? EMIN : e;
    const float k = u2f(a) * u2f((uint32_t)(127 - e + M) << 23);  // |y| / ulp, exact
    int ki;
    if (sr) {
      const float lo = floorf(k);
      ki = (int)lo + ((uniform_from_word(w) < k - lo) ? 1 : 0);
    } else {
      ki = (int)rintf(k);
    }
    uint32_t code = ((uint32_t)(e - EMIN) << M) + (uint32_t)ki;
    code = a > 0x7F800000u ? 0x7Fu : code;  // NaN
    return (raw)(((b >> 24) & 0x80u) | code);
  }
  // |x| as integer bits where x is finite, else 0: the unsigned max of these is the bits of the
  // finite absmax (an integer reduction, which vectorises).
  static SIGNOPT_HD uint32_t abs_bits(float x) {
    const uint32_t a = f2u(x) & 0x7FFFFFFFu;
    return a & (uint32_t)((int32_t)(a - 0x7F800000u) >> 31);  // a < 0x7F800000 ? a : 0 (mask form)
  }
};
using FmtE4M3 = FmtFP8<FMT_FP8_E4M3, false>;
using FmtE5M2 = FmtFP8<FMT_FP8_E5M2, true>;

}  // namespace signopt
