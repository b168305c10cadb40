// The storage formats of casts.h on vectors (cpu_vec.h): the same integer and fp32 operations
// lane by lane, so every code, value and scale is the scalar codec's.
//   VFmt<F>::ok        whether format F has a vector codec (a format without one runs the scalar
//                      tiles of cpu_kernels.h: a new format is its declaration, its casts.h codec
//                      and, for the vector loops, a VFmt specialisation here)
//   element formats:   load(raw*) -> vf; store(raw*, x) nearest; store_sr(raw*, x, words)
//   FP8 block formats: Dec (a block's decoder: its scale, and the short decode where the block
//                      holds no NaN/inf code and |scale| < 2^BIAS), load(raw*, Dec);
//                      codes(x, inv[, words]) -> the codes of x*inv; encode_block (absmax, scale, codes)
#pragma once
#include <math.h>

#include "casts.h"
#include "cpu_vec.h"

namespace signopt {
namespace cpu {
namespace vec {

// U = (word >> 8) * 2^-24 (exact)
SIGNOPT_VI vf uniform(const vu w) { return to_float((vi)(w >> 8)) * 5.9604644775390625e-08f; }
// lanes of x that are finite / NaN (integer tests of the bits, as finite32 / isnan32)
SIGNOPT_VI vi finite(const vf x) { return (vi)((bits(x) & 0x7F800000u) != 0x7F800000u); }
SIGNOPT_VI vi isnan(const vf x) { return (vi)(bits(x) & 0x7FFFFFFFu) > 0x7F800000; }
// |x| (the sign bit cleared: fabsf)
SIGNOPT_VI vf vabs(const vf x) { return fbits(bits(x) & 0x7FFFFFFFu); }
// |x| as integer bits where x is finite, else 0 (FmtFP8::abs_bits): their max is the bits of the
// finite absmax
SIGNOPT_VI vu abs_bits(const vf x) {
  const vu a = bits(x) & 0x7FFFFFFFu;
  return (vi)a < 0x7F800000 ? a : vu{};
}

template <class F>
struct VFmt {
  static constexpr bool ok = false;
};

template <>
struct VFmt<FmtF32> {
  static constexpr bool ok = true;
  using raw = float;
  static SIGNOPT_VI vf load(const float* p) { return loadu<vf>(p); }
  static SIGNOPT_VI void store(float* p, const vf x) { storeu(p, x); }
  static SIGNOPT_VI void store_sr(float* p, const vf x, const vu) { storeu(p, x); }
};

template <>
struct VFmt<FmtBF16> {
  static constexpr bool ok = true;
  using raw = uint16_t;
  static SIGNOPT_VI vf load(const uint16_t* p) { return fbits(load_u16(p) << 16); }
  // f32_to_bf16_rn
  static SIGNOPT_VI vu rn(const vf x) {
    const vu b = bits(x);
    const vu r = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
    return selu(isnan(x), splatu(0x7FC0u), r);
  }
  // f32_to_bf16_sr
  static SIGNOPT_VI vu sr(const vf x, const vu w) {
    const vu b = bits(x);
    vu r = ((b + (w >> 16)) >> 16) & 0xFFFFu;
    r = selu(finite(x) & (vi)((r & 0x7FFFu) == 0x7F80u), (r & 0x8000u) | 0x7F7Fu, r);
    return selu(isnan(x), splatu(0x7FC0u), r);
  }
  static SIGNOPT_VI void store(uint16_t* p, const vf x) { store_u16(p, rn(x)); }
  static SIGNOPT_VI void store_sr(uint16_t* p, const vf x, const vu w) { store_u16(p, sr(x, w)); }
};

// 2^e (exact), for constants.
constexpr float exp2i(int e) { return e > 0 ? 2.0f * exp2i(e - 1) : (e < 0 ? 0.5f * exp2i(e + 1) : 1.0f); }

template <int FMT, bool HAS_INF>
struct VFmt<FmtFP8<FMT, HAS_INF>> {
  static constexpr bool ok = true;
  using F = FmtFP8<FMT, HAS_INF>;
  using raw = uint8_t;
  static constexpr int M = F::M, EMIN = F::EMIN, BIAS = F::BIAS, SHIFT = 23 - M;
  static constexpr float POW = exp2i(127 - BIAS);  // fp8_value's 2^(127-BIAS)
  static constexpr float SMAX = exp2i(BIAS);       // |scale| below it: scale*POW < 2^127
  static constexpr uint32_t TOP = ((1u << (7 - M)) - 1u) << M;  // exponent field all ones
  static constexpr uint32_t MASK = 0x80000000u | (0x7Fu << SHIFT);

  // fp8_value of codes c (exact)
  static SIGNOPT_VI vf value(const vu c) {
    const vu sign = (c & 0x80u) << 24;
    const vu mag = c & 0x7Fu;
    vf v = fbits(mag << SHIFT) * POW;
    if (HAS_INF) {
      v = sel((vi)mag >= (int32_t)TOP, sel((vi)(mag == TOP), fbits(splatu(0x7F800000u)), fbits(splatu(0x7FC00000u))), v);
    } else {
      v = sel((vi)(mag == 0x7Fu), fbits(splatu(0x7FC00000u)), v);
    }
    return fbits(bits(v) | sign);
  }

  // Whether the n codes at r hold a NaN code (or an infinity, where the format has them).
  static inline bool has_special(const uint8_t* r, const int64_t n) {
    typedef uint8_t v8 __attribute__((vector_size(BYTES)));
    typedef int8_t v8s __attribute__((vector_size(BYTES)));
    v8s acc{};
    int64_t j = 0;
    for (; j + BYTES <= n; j += BYTES) {
      const v8 mag = loadu<v8>(r + j) & (uint8_t)0x7F;
      acc |= HAS_INF ? (v8s)(mag >= (uint8_t)TOP) : (v8s)(mag == (uint8_t)0x7F);
    }
    bool found = any((vi)acc);  // (a loop over the bytes here compiles to a scalar loop)
    for (; j < n; ++j) {
      const uint32_t mag = r[j] & 0x7Fu;
      found |= HAS_INF ? mag >= TOP : mag == 0x7Fu;
    }
    return found;
  }

  // A block's decoder: value = fp8_value(code) * scale, one rounding.  Short decode (no NaN/inf
  // code in the block, |scale| < SMAX): the code's sign and 7 magnitude bits placed in an fp32's
  // sign, exponent and mantissa fields (a sign-extended code shifted and masked) times
  // scale*POW (exact): the exact product value*scale, rounded once, as the long form.
  struct Dec {
    vf scale, sfold;
    bool short_dec;
    Dec() : scale(vf{}), sfold(vf{}), short_dec(false) {}
    Dec(const uint8_t* r, const int64_t n, const float sc)
        : scale(splat(sc)), sfold(splat(sc * POW)), short_dec(fabsf(sc) < SMAX && !has_special(r, n)) {}
  };
  static SIGNOPT_VI vf load_short(const uint8_t* p, const vf sfold) {
    return fbits(((vu)load_s8(p) << SHIFT) & MASK) * sfold;
  }
  static SIGNOPT_VI vf load_long(const uint8_t* p, const vf scale) {
    return value(load_u8(p)) * scale;
  }
  static SIGNOPT_VI vf load(const uint8_t* p, const Dec& d) {
    return d.short_dec ? load_short(p, d.sfold) : load_long(p, d.scale);
  }

  // FmtFP8::encode of x*inv, stochastic: clamp to +-Qmax, e = max(exponent, EMIN),
  // k = |y| / 2^(e-M) (exact), floor(k) + (U < k - floor(k)), code = ((e - EMIN) << M) + k with
  // the sign; NaN -> 0x7F with the sign.
  static SIGNOPT_VI vu codes_sr(const vf x, const vf inv, const vu w) {
    const float q = F::qmax;
    vf y = x * inv;
    y = vmin(splat(q), vmax(splat(-q), y));  // clamp (NaN stays NaN)
    const vu b = bits(y);
    const vu a = b & 0x7FFFFFFFu;
    vi e = (vi)(a >> 23) - 127;
    e = vmaxi(e, splati(EMIN));
    const vf k = fbits(a) * fbits((vu)(127 + M - e) << 23);
    const vi lo = trunc_int(k);
    const vi ki = lo - (vi)(uniform(w) < k - to_float(lo));
    vu code = (vu)((e - EMIN) << M) + (vu)ki;
    code = selu((vi)a > 0x7F800000, splatu(0x7Fu), code);
    return ((b >> 24) & 0x80u) | code;
  }
  // The same, nearest even, in integer form: a normal |y| (>= 2^EMIN) rounds at bit SH of its
  // fp32 bits like bf16 (a carry moves into the exponent), the exponent rebiased by the same
  // addition: code = (a + 2^(SH-1) - 1 + lsb - ((126 + EMIN) << 23)) >> SH; a subnormal one: a + C
  // with C = 2^(EMIN-M+23) rounds a to a multiple of the subnormal ulp 2^(EMIN-M) (nearest even:
  // C's last mantissa bit is k's parity) and bits(a + C) - bits(C) = k (k <= 2^M: the result
  // stays in C's binade).  k = |y| / ulp as in the float form, so the same codes.
  static SIGNOPT_VI vu codes_rn(const vf x, const vf inv) {
    constexpr uint32_t CB = (uint32_t)(EMIN - M + 23 + 127) << 23;
    const float q = F::qmax;
    const vf y = vmin(splat(q), vmax(splat(-q), x * inv));
    const vu b = bits(y);
    const vu a = b & 0x7FFFFFFFu;
    vu code = (a + ((1u << (SHIFT - 1)) - 1u - ((uint32_t)(126 + EMIN) << 23)) + ((a >> SHIFT) & 1u)) >> SHIFT;
    const vu sub = bits(fbits(a) + fbits(splatu(CB))) - CB;
    code = selu((vi)a < (int32_t)((uint32_t)(127 + EMIN) << 23), sub, code);
    code = selu((vi)a > 0x7F800000, splatu(0x7Fu), code);
    return ((b >> 24) & 0x80u) | code;
  }

  // The codes of n values (one block) with inv = 1/scale, nearest or stochastic (words).
  static inline void encode_codes(uint8_t* r, const int64_t n, const float* vals, const float inv,
                                  const uint32_t* words) {
    const vf iv = splat(inv);
    int64_t j = 0;
    if (words) {
      for (; j + W <= n; j += W) store_u8(r + j, codes_sr(loadu<vf>(vals + j), iv, loadu<vu>(words + j)));
    } else {
      for (; j + 2 * W <= n; j += 2 * W) {  // two independent vectors a step
        const vu c0 = codes_rn(loadu<vf>(vals + j), iv);
        const vu c1 = codes_rn(loadu<vf>(vals + j + W), iv);
        store_u8(r + j, c0);
        store_u8(r + j + W, c1);
      }
      for (; j + W <= n; j += W) store_u8(r + j, codes_rn(loadu<vf>(vals + j), iv));
    }
    if (j < n) {
      float x[W] = {};
      uint32_t w[W] = {};
      memcpy(x, vals + j, sizeof(float) * (size_t)(n - j));
      if (words) memcpy(w, words + j, sizeof(uint32_t) * (size_t)(n - j));
      uint8_t c[W];
      store_u8(c, words ? codes_sr(loadu<vf>(x), iv, loadu<vu>(w)) : codes_rn(loadu<vf>(x), iv));
      memcpy(r + j, c, (size_t)(n - j));
    }
  }

  // The bits of the finite absmax of n values.
  static inline uint32_t amax_of(const float* vals, const int64_t n) {
    vu acc{};
    int64_t j = 0;
    for (; j + W <= n; j += W) acc = maxu31(acc, abs_bits(loadu<vf>(vals + j)));
    uint32_t m = hmax31(acc);
    for (; j < n; ++j) {
      const uint32_t x = F::abs_bits(vals[j]);
      m = x > m ? x : m;
    }
    return m;
  }

  // encode_block: scale from the finite absmax (its bits: amax), codes; returns the scale.
  static inline float encode_amax(uint8_t* r, const int64_t n, const float* vals, const uint32_t amax,
                                  const uint32_t* words) {
    const float sc = F::scale_of(u2f(amax));
    encode_codes(r, n, vals, 1.0f / sc, words);
    return sc;
  }
  static inline float encode_block(uint8_t* r, const int64_t n, const float* vals, const uint32_t* words) {
    return encode_amax(r, n, vals, amax_of(vals, n), words);
  }
};

}  // namespace vec
}  // namespace cpu
}  // namespace signopt
