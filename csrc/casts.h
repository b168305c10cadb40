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
//   MX block (E8M0 scale, state_format.e8m0_codes): byte E = max(exponent field of absmax - emax, 0),
//       s = 2^(E-127) (2^-127, an fp32 subnormal, for E = 0; 0xFF decodes to NaN), then as FP8
//   FP4 (E2M1, packed two a byte): MX scales (MXFP4) or E4M3 block scales times an fp32 tensor
//       scale (NVFP4; state_format.nvfp4_encode): FmtFP4
#pragma once
#include <math.h>

#include <type_traits>

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
  static constexpr bool packed = false;
  static SIGNOPT_HD float load(raw x) { return x; }
  static SIGNOPT_HD raw store(float x, bool, uint32_t) { return x; }
};

struct FmtBF16 {
  using raw = uint16_t;
  static constexpr bool blocked = fmt_block_scaled(FMT_BF16);
  static constexpr bool packed = false;
  static SIGNOPT_HD float load(raw x) { return bf16_to_f32(x); }
  static SIGNOPT_HD raw store(float x, bool sr, uint32_t w) {
    return sr ? f32_to_bf16_sr(x, w) : f32_to_bf16_rn(x);
  }
};

struct FmtF16 {
  using raw = uint16_t;
  static constexpr bool blocked = fmt_block_scaled(FMT_FP16);
  static constexpr bool packed = false;
  static SIGNOPT_HD float load(raw x) { return f16_to_f32(x); }
  static SIGNOPT_HD raw store(float x, bool sr, uint32_t w) {
    // sr: grid rounding (saturating at 65504), then an exact conversion
    return sr ? f32_to_f16_rn(round_to_grid<fmt_mantissa_bits(FMT_FP16), fmt_emin(FMT_FP16)>(
                    x, fmt_max_finite(FMT_FP16), true, w))
              : f32_to_f16_rn(x);
  }
};

// E8M0 block scales (MX): fp32 value of a scale byte, and the byte of a power-of-two scale.
SIGNOPT_HD float e8m0_value(uint32_t e) {
  return e == 0u ? u2f(0x00400000u) : (e == 0xFFu ? u2f(0x7FC00000u) : u2f(e << 23));
}
SIGNOPT_HD uint8_t e8m0_code(float s) { return (uint8_t)(f2u(s) >> 23); }  // 2^-127 (subnormal): 0

// The magnitude code of |y| = u2f(a) (at most the format's largest finite value) on the grid of
// M mantissa bits and smallest exponent EMIN, rounded to nearest even or stochastically from w:
// with e = max(exponent of y, EMIN) and k = |y|/2^(e-M) rounded (an integer <= 2^(M+1)), the code
// is ((e - EMIN) << M) + k (k = 2^(M+1) carries into the exponent field; e = EMIN covers
// subnormals and the smallest normal alike).  Straight-line integer/fp32 operations that
// vectorise; the FP8 and FP4 codecs share it.
template <int M, int EMIN>
SIGNOPT_HD uint32_t grid_code(const uint32_t a, const bool sr, const uint32_t w) {
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
  return ((uint32_t)(e - EMIN) << M) + (uint32_t)ki;
}

// Block-scaled FP8 codes of format FMT (M mantissa bits, minimum normal exponent EMIN, exponent
// bias 1 - EMIN, largest finite value Qmax: declared); HAS_INF: the all-ones exponent field holds
// infinities and NaNs (E5M2), else only the all-ones code is NaN (E4M3fn).  value = code * scale[block].
// The scale is fp32 (absmax/Qmax), or for the MX formats (fmt_scale_e8m0) a power of two stored as
// an E8M0 byte: scale_raw is the stored type, get_scale/put_scale read and write one.
template <int FMT, bool HAS_INF>
struct FmtFP8 {
  using raw = uint8_t;
  static constexpr bool blocked = fmt_block_scaled(FMT);
  static constexpr bool packed = false;
  static constexpr bool tensor_scaled = false;
  static_assert(blocked, "FmtFP8: a block-scaled format");
  static constexpr int M = fmt_mantissa_bits(FMT), EMIN = fmt_emin(FMT), BIAS = 1 - EMIN;
  static constexpr bool has_inf = HAS_INF;
  static constexpr float qmax = fmt_max_finite(FMT);
  static constexpr bool e8m0 = fmt_scale_e8m0(FMT);
  static constexpr int EMAX = fmt_emax(FMT);
  using scale_raw = typename std::conditional<e8m0, uint8_t, float>::type;
  // fp32(1/Qmax), as state_format._inv_qmax computes it
  static SIGNOPT_HD float inv_qmax() { return (float)(1.0 / (double)qmax); }
  static SIGNOPT_HD float load(raw c, float scale) { return fp8_value<M, EMIN, BIAS, HAS_INF>(c) * scale; }
  // scale from the block's absmax (non-finite values already excluded)
  static SIGNOPT_HD float scale_of(float absmax) {
    if (e8m0) {  // MX: 2^(floor(log2(absmax)) - emax), at least 2^-127
      const int e = (int)(f2u(absmax) >> 23) - EMAX;
      return e8m0_value(e < 0 ? 0u : (uint32_t)e);
    }
    const float s = absmax * inv_qmax();
    return s < 1.17549435e-38f ? 1.17549435e-38f : s;  // max(s, 2^-126)
  }
  // The fp32 scale of block b of stored scales p, and storing scale s (one of scale_of's) there.
  static SIGNOPT_HD float get_scale(const void* p, int64_t b) {
    if (e8m0) return e8m0_value(((const uint8_t*)p)[b]);
    return ((const float*)p)[b];
  }
  static SIGNOPT_HD void put_scale(void* p, int64_t b, float s) {
    if (e8m0) {
      ((uint8_t*)p)[b] = e8m0_code(s);
    } else {
      ((float*)p)[b] = s;
    }
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
    uint32_t code = grid_code<M, EMIN>(a, sr, w);
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
using FmtMXE4M3 = FmtFP8<FMT_MXFP8_E4M3, false>;
using FmtMXE5M2 = FmtFP8<FMT_MXFP8_E5M2, true>;

// fp32 value of an E2M1 code (4 bits: sign, 2 exponent bits, 1 mantissa bit; bias 1, no inf/NaN):
// 0, 0.5, 1, 1.5, 2, 3, 4, 6 (exact).
SIGNOPT_HD float e2m1_value(uint32_t c) {
  const uint32_t e = (c >> 1) & 3u, f = c & 1u;
  const float v = e == 0u ? (f ? 0.5f : 0.0f) : u2f(((e + 126u) << 23) | (f << 22));
  return (c & 8u) ? -v : v;
}

// Packed E2M1 codes (two a byte, element 2j in the low nibble of byte j, 0 past the end of an odd
// count; blocks are even, so a block never splits a byte) with one scale per block, of either kind:
//   MXFP4 (fmt_scale_e8m0, state_format.fp4_encode): the MX scale rule with emax 2, stored as an
//     E8M0 byte; the block's multiplier is that power of two.
//   NVFP4 (fmt_tensor_scale, state_format.nvfp4_encode): one fp32 tensor scale
//     S = max(T * fp32(1/2688), 2^-126) (T: finite absmax of the whole tensor, 6*448 = 2688) and per
//     block an E4M3 scale sb = max(e4m3_nearest(min((a_b * fp32(1/6)) / S, 448)), 2^-9) (a_b: the
//     block's finite absmax; FmtE4M3's rounding and codes); the multiplier is eff = sb * S.
// Codes as FmtFP8's (x * fp32(1/multiplier), clamp to +-6, e = max(exponent, 0), k = |y|/2^(e-1)
// rounded, code (e << 1) + k), except that E2M1 has no NaN: a NaN codes as +0.  Where each runs:
// on the CPU, both in the vector loops (cpu_vformats.h's VFmt<FmtFP4<FMT>>; NVFP4 with a scan
// pass for the tensor scales) and in the scalar tiles (SIGNOPT_CPU_SIMD=0, and what has no vector
// form); both in the CUDA kernels (cuda_kernels.cu, NVFP4 with a scan kernel for the tensor
// scales: compiled for sm_80/sm_90, not yet run on a GPU); Triton has its own codecs
// (kernels/state_io.py).
template <int FMT>
struct FmtFP4 {
  using raw = uint8_t;  // a byte of two codes
  using scale_raw = uint8_t;  // an E8M0 byte, or an E4M3 code
  static constexpr bool blocked = fmt_block_scaled(FMT);
  static constexpr bool packed = fmt_packed(FMT);
  static constexpr bool tensor_scaled = fmt_tensor_scale(FMT);
  static_assert(blocked && packed && (fmt_scale_e8m0(FMT) != tensor_scaled), "FmtFP4: packed, E8M0 or E4M3 scales");
  static constexpr int M = fmt_mantissa_bits(FMT), EMIN = fmt_emin(FMT), EMAX = fmt_emax(FMT);
  static constexpr float qmax = fmt_max_finite(FMT);
  static constexpr bool e8m0 = fmt_scale_e8m0(FMT);
  // NVFP4: the tensor scale of a tensor of finite absmax T
  static SIGNOPT_HD float tensor_scale_of(float T) {
    const float s = T * (float)(1.0 / (6.0 * 448.0));
    return s < 1.17549435e-38f ? 1.17549435e-38f : s;  // max(s, 2^-126)
  }
  // The block scale (fp32 value of what put_scale stores) of a block of finite absmax a: MX
  // 2^(floor(log2(a)) - emax), at least 2^-127; NVFP4 sb under tensor scale S (S unused by MX).
  static SIGNOPT_HD float scale_of(float absmax, float S) {
    if (tensor_scaled) return FmtE4M3::load((uint8_t)e4m3_block_code(absmax, S), 1.0f);
    const int e = (int)(f2u(absmax) >> 23) - EMAX;
    return e8m0_value(e < 0 ? 0u : (uint32_t)e);
  }
  // NVFP4: the E4M3 code of sb: nearest even of min((a * fp32(1/6)) / S, 448), at least the
  // smallest subnormal 2^-9 (code 1; the quotient is >= 0)
  static SIGNOPT_HD uint32_t e4m3_block_code(float absmax, float S) {
    const uint32_t c = FmtE4M3::encode((absmax * (float)(1.0 / 6.0)) / S, 1.0f, false, 0u);
    return c < 1u ? 1u : c;
  }
  static SIGNOPT_HD float get_scale(const void* p, int64_t b) {
    const uint8_t c = ((const uint8_t*)p)[b];
    return tensor_scaled ? FmtE4M3::load(c, 1.0f) : e8m0_value(c);
  }
  static SIGNOPT_HD void put_scale(void* p, int64_t b, float s) {  // s: one of scale_of's (exact)
    ((uint8_t*)p)[b] = tensor_scaled ? FmtE4M3::encode(s, 1.0f, false, 0u) : e8m0_code(s);
  }
  // The multiplier of a block of stored scale s under tensor scale S: s * S (NVFP4), s (MX).
  static SIGNOPT_HD float multiplier(float s, float S) { return tensor_scaled ? s * S : s; }
  // the code of element i of packed bytes r
  static SIGNOPT_HD uint32_t code_at(const raw* r, int64_t i) { return ((uint32_t)r[i >> 1] >> ((i & 1) * 4)) & 0xFu; }
  static SIGNOPT_HD float load_code(uint32_t c, float mult) { return e2m1_value(c) * mult; }
  static SIGNOPT_HD uint32_t encode(float x, float inv, bool sr, uint32_t w) {
    float y = x * inv;
    y = y < -qmax ? -qmax : (y > qmax ? qmax : y);  // clamp (NaN stays NaN)
    const uint32_t b = f2u(y);
    const uint32_t a = b & 0x7FFFFFFFu;
    const uint32_t code = grid_code<M, EMIN>(a, sr, w);
    return a > 0x7F800000u ? 0u : (((b >> 28) & 8u) | code);  // NaN: +0
  }
  static SIGNOPT_HD uint32_t abs_bits(float x) {
    const uint32_t a = f2u(x) & 0x7FFFFFFFu;
    return a < 0x7F800000u ? a : 0u;
  }
};
using FmtE2M1 = FmtFP4<FMT_FP4_E2M1>;
using FmtNVFP4 = FmtFP4<FMT_FP4_E2M1_E4M3>;

}  // namespace signopt
