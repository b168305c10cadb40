// The storage formats of casts.h on vectors (cpu_vec.h): the same integer and fp32 operations
// lane by lane, so every code, value and scale is the scalar codec's.
//   VFmt<F>::ok        whether format F has a vector codec (a format without one runs the scalar
//                      tiles of cpu_kernels.h: a new format is its declaration, its casts.h codec
//                      and, for the vector loops, a VFmt specialisation here)
//   element formats:   load(raw*) -> vf; store(raw*, x) nearest; store_sr(raw*, x, words)
//   FP8 block formats: Dec (a block's decoder: its scale, and the short decode where the block
//                      holds no NaN/inf code and |scale| < 2^BIAS), load(raw*, Dec);
//                      codes(x, inv[, words]) -> the codes of x*inv; encode_block (absmax, scale, codes)
//   packed 4-bit:      decode(bytes, n, multiplier, out) -> a block's fp32 values; encode_block as
//                      FP8, under the tensor scale (NVFP4; the other formats ignore it)
#pragma once
#include <math.h>

#include <utility>

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

// casts.h's grid_code on lanes, for |y| = fbits(a) finite and on the format's range (M mantissa
// bits, minimum normal exponent EMIN): the magnitude code ((e - EMIN) << M) + k.
//   grid_sr: e = max(exponent, EMIN), k = |y| / 2^(e-M) (exact), floor(k) + (U < k - floor(k));
//   grid_rn: the same, nearest even, in integer form: a normal |y| (>= 2^EMIN) rounds at bit SH of
//   its fp32 bits like bf16 (a carry moves into the exponent), the exponent rebiased by the same
//   addition: code = (a + 2^(SH-1) - 1 + lsb - ((126 + EMIN) << 23)) >> SH; a subnormal one: a + C
//   with C = 2^(EMIN-M+23) rounds a to a multiple of the subnormal ulp 2^(EMIN-M) (nearest even:
//   C's last mantissa bit is k's parity) and bits(a + C) - bits(C) = k (k <= 2^M: the result
//   stays in C's binade).  k = |y| / ulp as in the float form, so the same codes.
template <int M, int EMIN>
SIGNOPT_VI vu grid_sr(const vu a, const vu w) {
  vi e = (vi)(a >> 23) - 127;
  e = vmaxi(e, splati(EMIN));
  const vf k = fbits(a) * fbits((vu)(127 + M - e) << 23);
  const vi lo = trunc_int(k);
  const vi ki = lo - (vi)(uniform(w) < k - to_float(lo));
  return (vu)((e - EMIN) << M) + (vu)ki;
}
template <int M, int EMIN>
SIGNOPT_VI vu grid_rn(const vu a) {
  constexpr int SH = 23 - M;
  constexpr uint32_t CB = (uint32_t)(EMIN - M + 23 + 127) << 23;
  const vu code = (a + ((1u << (SH - 1)) - 1u - ((uint32_t)(126 + EMIN) << 23)) + ((a >> SH) & 1u)) >> SH;
  const vu sub = bits(fbits(a) + fbits(splatu(CB))) - CB;
  return selu((vi)a < (int32_t)((uint32_t)(127 + EMIN) << 23), sub, code);
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

// The E4M3 codec (NVFP4's block scales), named through F so that it is looked up where used.
template <class F>
using E4 = VFmt<typename std::conditional<F::tensor_scaled, FmtE4M3, F>::type>;

// A block format's encoder from its codes (VF::encode_codes(r, n, vals, inv, words)): the finite
// absmax (its bits), the scale VF::scale_of under the tensor scale ts, the codes of
// vals * (1/multiplier) (casts.h's block_scale and encode_block; cpu_formats.cpp's store_packed).
// ts: NVFP4's tensor scale S (multiplier sb * S); every other format ignores it (multiplier: the scale).
template <class F, class VF>
struct VBlockEncoder {
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
  // the codes with amax (the bits of the values' finite absmax); returns the scale
  static inline float encode_amax(typename F::raw* r, const int64_t n, const float* vals, const uint32_t amax,
                                  const uint32_t* words, const float ts) {
    const float sc = VF::scale_of(u2f(amax), ts);
    VF::encode_codes(r, n, vals, inverse(sc, ts), words);
    return sc;
  }
  // The same for a block of R vectors x in registers (BlockRegs).
  template <int R>
  static SIGNOPT_VI float encode_regs(typename F::raw* r, const vf (&x)[R], const uint32_t amax,
                                      const uint32_t* words, const float ts) {
    const float sc = VF::scale_of(u2f(amax), ts);
    put_regs<R>(r, x, splat(inverse(sc, ts)), words);
    return sc;
  }
  // The codes of R vectors x times iv (1/multiplier), stochastic from words (null: nearest), stored
  // at r by VF::put_codes.
  template <int R>
  static SIGNOPT_VI void put_regs(typename F::raw* r, const vf (&x)[R], const vf iv, const uint32_t* words) {
    vu c[R];
    for (int k = 0; k < R; ++k) c[k] = codes_of(x[k], iv, words ? words + k * W : nullptr);
    VF::template put_codes<R>(r, c);
  }
  // the codes of one vector x times iv, stochastic from words (null: nearest)
  static SIGNOPT_VI vu codes_of(const vf x, const vf iv, const uint32_t* words) {
    return words ? VF::codes_sr(x, iv, loadu<vu>(words)) : VF::codes_rn(x, iv);
  }

  // W blocks' scales at once (BlockRegs::group), lane i for block blk + i of the stored scales p.
  // multipliers: get_scale then multiplier under the tensor scale S (NVFP4; the others ignore it).
  static SIGNOPT_VI vf multipliers(const void* p, const int64_t blk, const float S) {
    if constexpr (F::e8m0) {  // e8m0_value: code 0 is 2^-127 (subnormal), 0xFF NaN
      const vu c = load_u8((const uint8_t*)p + blk);
      return fbits(selu((vi)(c == 0u), splatu(0x00400000u), selu((vi)(c == 0xFFu), splatu(0x7FC00000u), c << 23)));
    } else if constexpr (F::tensor_scaled) {  // the E4M3 value of the code, times S
      return E4<F>::value(load_u8((const uint8_t*)p + blk)) * S;
    } else {
      return loadu<vf>((const float*)p + blk);
    }
  }
  // put_scales: scale_of the blocks' finite absmax bits A under this step's tensor scale ts, stored
  // as put_scale stores it; returns the blocks' inverses (inverse).
  static SIGNOPT_VI vf put_scales(void* p, const int64_t blk, const vu A, const float ts) {
    if constexpr (F::e8m0) {  // code E = max(exponent - emax, 0); pow2_inverse
      const vu E = (vu)vmaxi((vi)(A >> 23) - F::EMAX, vi{});
      store_u8((uint8_t*)p + blk, E);
      return fbits(selu((vi)(E == 254u), splatu(0x00400000u), (254u - E) << 23));
    } else if constexpr (F::tensor_scaled) {  // FmtFP4::e4m3_block_code, its E4M3 value sb; 1/(sb*ts)
      const vu c = (vu)vmaxi((vi)E4<F>::codes_rn(fbits(A) * (float)(1.0 / 6.0) / splat(ts), splat(1.0f)), splati(1));
      store_u8((uint8_t*)p + blk, c);
      return 1.0f / (E4<F>::value(c) * ts);
    } else {  // max(absmax * fp32(1/Qmax), 2^-126), an fp32 scale; its reciprocal
      const vf s0 = fbits(A) * F::inv_qmax();
      const vf s = sel(s0 < 1.17549435e-38f, splat(1.17549435e-38f), s0);
      storeu((float*)p + blk, s);
      return 1.0f / s;
    }
  }
  // 1/multiplier of a block of scale s under tensor scale ts: pow2_inverse for an E8M0 scale, else
  // the division
  static SIGNOPT_VI float inverse(const float s, const float ts) {
    return F::e8m0 ? pow2_inverse(s) : 1.0f / VF::multiplier(s, ts);
  }
  // 1/s of an E8M0 scale s = 2^(E-127) (E = e8m0_code(s) < 255): 2^(127-E), exact as the
  // division (whose latency, after the absmax reduction, stalled every MX block's encode)
  static SIGNOPT_VI float pow2_inverse(const float s) {
    const uint32_t E = e8m0_code(s);
    return u2f(E == 254u ? 0x00400000u : (254u - E) << 23);  // (E = 254: 2^-127, an fp32 subnormal)
  }
  static inline float encode_block(typename F::raw* r, const int64_t n, const float* vals, const uint32_t* words,
                                   const float ts) {
    return encode_amax(r, n, vals, amax_of(vals, n), words, ts);
  }
};

template <int FMT, bool HAS_INF>
struct VFmt<FmtFP8<FMT, HAS_INF>> : VBlockEncoder<FmtFP8<FMT, HAS_INF>, VFmt<FmtFP8<FMT, HAS_INF>>> {
  static constexpr bool ok = true;
  using F = FmtFP8<FMT, HAS_INF>;
  static constexpr int regs_block = 32;  // the MX block (BlockRegs)
  static SIGNOPT_VI float scale_of(const float absmax, const float) { return F::scale_of(absmax); }  // (no tensor scale)
  static SIGNOPT_VI float multiplier(const float s, const float) { return s; }
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

  // Whether the n codes at r hold a NaN code (or an infinity, where the format has them): vectors
  // of BYTES, then of 16 bytes (an MX block of 32 is shorter than an AVX-512 vector), then bytes.
  template <class V8, class V8S>  // byte vectors, unsigned and signed
  static SIGNOPT_VI bool special_in(const uint8_t* r) {
    const V8 mag = loadu<V8>(r) & (uint8_t)0x7F;
    const V8S hit = HAS_INF ? (V8S)(mag >= (uint8_t)TOP) : (V8S)(mag == (uint8_t)0x7F);
    if constexpr (sizeof(V8) == BYTES) {
      return any((vi)hit);
    } else {
      uint64_t h[sizeof(V8) / 8];
      memcpy(h, &hit, sizeof(V8));
      uint64_t o = 0;
      for (size_t i = 0; i < sizeof(V8) / 8; ++i) o |= h[i];
      return o != 0;
    }
  }
  static inline bool has_special(const uint8_t* r, const int64_t n) {
    int64_t j = 0;
    typedef uint8_t vB __attribute__((vector_size(BYTES)));
    typedef int8_t vBs __attribute__((vector_size(BYTES)));
    typedef uint8_t v16 __attribute__((vector_size(16)));
    typedef int8_t v16s __attribute__((vector_size(16)));
    for (; j + BYTES <= n; j += BYTES)
      if (special_in<vB, vBs>(r + j)) return true;
    for (; j + 16 <= n; j += 16)
      if (special_in<v16, v16s>(r + j)) return true;
    bool found = false;
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

  // FmtFP8::encode of x*inv, stochastic (grid_sr) or nearest even (grid_rn): clamp to +-Qmax,
  // the grid code of |y| with the sign; NaN -> 0x7F with the sign.
  static SIGNOPT_VI vu codes_sr(const vf x, const vf inv, const vu w) {
    const vu b = bits(clamp(x * inv));
    const vu a = b & 0x7FFFFFFFu;
    const vu code = selu((vi)a > 0x7F800000, splatu(0x7Fu), grid_sr<M, EMIN>(a, w));
    return ((b >> 24) & 0x80u) | code;
  }
  static SIGNOPT_VI vu codes_rn(const vf x, const vf inv) {
    const vu b = bits(clamp(x * inv));
    const vu a = b & 0x7FFFFFFFu;
    const vu code = selu((vi)a > 0x7F800000, splatu(0x7Fu), grid_rn<M, EMIN>(a));
    return ((b >> 24) & 0x80u) | code;
  }
  static SIGNOPT_VI vf clamp(const vf y) { return vmin(splat(F::qmax), vmax(splat(-F::qmax), y)); }  // NaN stays NaN

  // R vectors of codes at r
  template <int R>
  static SIGNOPT_VI void put_codes(uint8_t* r, const vu (&c)[R]) {
    for (int k = 0; k < R; ++k) store_u8(r + k * W, c[k]);
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
};

// Lane shuffles of packed 4-bit codes (a vector of W bytes holds 2W codes: the low nibbles the even
// elements, the high nibbles the odd ones): zip<OFF> interleaves lanes OFF.. of a and b (a0 b0 a1
// b1 ...), unzip<ODD> takes the even (ODD = 0) or odd lanes of a then b.
template <int OFF, size_t... I>
SIGNOPT_VI vf zip(const vf a, const vf b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (int)(I % 2 ? W + OFF + I / 2 : OFF + I / 2)...);
}
template <int ODD, size_t... I>
SIGNOPT_VI vu unzip(const vu a, const vu b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (int)(2 * I + ODD)...);
}
// Lane i: the largest lane of a[i] (lanes < 2^31).  W - 1 steps, each the larger of neighbouring
// lanes of two vectors (their even and odd lanes, unzip), in log2(W) rounds: round r leaves W/2^r
// vectors, vector k holding 2^r of the inputs reduced to W/2^r lanes each, in order.
SIGNOPT_VI vu lane_max(const vu (&a)[W]) {
  using Lanes = std::make_index_sequence<W>;
  vu x[W];
  for (int i = 0; i < W; ++i) x[i] = a[i];
#pragma GCC unroll 16
  for (int n = W; n > 1; n /= 2)
#pragma GCC unroll 16
    for (int i = 0; i < n / 2; ++i) x[i] = maxu31(unzip<0>(x[2 * i], x[2 * i + 1], Lanes{}), unzip<1>(x[2 * i], x[2 * i + 1], Lanes{}));
  return x[0];
}
// Half a vector of bytes (W packed codes: the last W of a run whose count is not a multiple of 2W,
// as an NVFP4 block of 16 on AVX-512): load_u8_half, the W/2 bytes at p zero-extended into the
// low W/2 lanes (the rest 0); store_u8_half, the low W/2 lanes (each < 256) as W/2 bytes.
typedef uint8_t vbh __attribute__((vector_size(W / 2)));
typedef uint32_t vuh __attribute__((vector_size(BYTES / 2)));
template <size_t... I>
SIGNOPT_VI vu widen(const vuh h, std::index_sequence<I...>) {
  return __builtin_shufflevector(h, vuh{}, (int)I...);
}
template <size_t... I>
SIGNOPT_VI vuh low_half(const vu x, std::index_sequence<I...>) {
  return __builtin_shufflevector(x, x, (int)I...);
}
SIGNOPT_VI vu load_u8_half(const uint8_t* p) {
  vbh h;
  memcpy(&h, p, sizeof h);
  return widen(__builtin_convertvector(h, vuh), std::make_index_sequence<W>{});
}
SIGNOPT_VI void store_u8_half(uint8_t* p, const vu x) {
  const vbh h = __builtin_convertvector(low_half(x, std::make_index_sequence<W / 2>{}), vbh);
  memcpy(p, &h, sizeof h);
}

// Packed E2M1 codes (FmtFP4) with either kind of block scale: E8M0 (MXFP4) or E4M3 under an fp32
// tensor scale S (NVFP4: multiplier sb * S, the encode's inverse a true division; casts.h).  The
// codes are the same; the scale, multiplier and inverse come from FmtFP4 and VBlockEncoder.  The
// vector loops run on a block's values decoded to fp32 (decode, with the block's multiplier) and
// encode its new values (encode_block), two codes a byte, element 2j in the low nibble of byte j:
// W bytes a step, as 2W lanes.  Codes as FmtFP4::encode: clamp to +-6, the grid code of |y| with
// the sign; NaN -> +0.
template <int FMT>
struct VFmt<FmtFP4<FMT>> : VBlockEncoder<FmtFP4<FMT>, VFmt<FmtFP4<FMT>>> {
  static constexpr bool ok = true;
  using F = FmtFP4<FMT>;
  static constexpr int regs_block = F::tensor_scaled ? 16 : 32;  // the default block (BlockRegs)
  static SIGNOPT_VI float scale_of(const float absmax, const float S) { return F::scale_of(absmax, S); }
  static SIGNOPT_VI float multiplier(const float s, const float S) { return F::multiplier(s, S); }
  static constexpr int M = F::M, EMIN = F::EMIN;
  using Lanes = std::make_index_sequence<W>;

  // e2m1_value of codes c < 16 (exact).  16 lanes: the 16 values as a table indexed by the codes
  // (one vpermps); 8 lanes: the 8 magnitudes so, with the sign bit; otherwise (or without g++'s
  // variable __builtin_shuffle) e = 0: 0.5 or +0; else 2^(e-1) * (1 + f/2); the sign bit.
  static SIGNOPT_VI vf value(const vu c) {
#if defined(__GNUC__) && !defined(__clang__) && SIGNOPT_VEC_BYTES == 64
    const vf T = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
    return __builtin_shuffle(T, (vi)c);
#elif defined(__GNUC__) && !defined(__clang__) && SIGNOPT_VEC_BYTES == 32
    const vf T = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    return fbits(bits(__builtin_shuffle(T, (vi)c)) | ((c & 8u) << 28));
#else
    const vu e = (c >> 1) & 3u, f = c & 1u;
    const vu mag = selu((vi)(e == 0u), f * 0x3F000000u, ((e + 126u) << 23) | (f << 22));
    return fbits(mag | ((c & 8u) << 28));
#endif
  }
  // The 2W values (code * s) of bytes b (lane i: elements 2i, 2i+1): elements 0..W-1 in a, the
  // next W in c.
  static SIGNOPT_VI void decode2(const vu b, const vf s, vf& a, vf& c) {
    const vf lo = value(b & 0xFu) * s, hi = value(b >> 4) * s;
    a = zip<0>(lo, hi, Lanes{});
    c = zip<W / 2>(lo, hi, Lanes{});
  }
  // The same to out; the next W only where FULL.
  template <bool FULL>
  static SIGNOPT_VI void decode_pairs(const vu b, const vf s, float* out) {
    vf a, c;
    decode2(b, s, a, c);
    storeu(out, a);
    if (FULL) storeu(out + W, c);
  }
  // The n values (code * multiplier) of the packed codes at r (element 0 in the low nibble of r[0]):
  // 2W a step, then W (half a vector of bytes), the last n mod W through a zero-padded copy.
  static inline void decode(const uint8_t* r, const int64_t n, const float mult, float* out) {
    const vf s = splat(mult);
    int64_t j = 0;
    for (; j + 2 * W <= n; j += 2 * W) decode_pairs<true>(load_u8(r + j / 2), s, out + j);
    if (j + W <= n) {
      decode_pairs<false>(load_u8_half(r + j / 2), s, out + j);
      j += W;
    }
    if (j < n) {
      uint8_t b[W / 2] = {};
      float o[W];
      memcpy(b, r + j / 2, (size_t)(n - j + 1) / 2);
      decode_pairs<false>(load_u8_half(b), s, o);
      memcpy(out + j, o, sizeof(float) * (size_t)(n - j));
    }
  }

  static SIGNOPT_VI vf clamp(const vf y) { return vmin(splat(F::qmax), vmax(splat(-F::qmax), y)); }  // NaN stays NaN
  static SIGNOPT_VI vu codes_sr(const vf x, const vf inv, const vu w) {
    const vu b = bits(clamp(x * inv));
    const vu a = b & 0x7FFFFFFFu;
    return selu((vi)a > 0x7F800000, vu{}, ((b >> 28) & 8u) | grid_sr<M, EMIN>(a, w));
  }
  static SIGNOPT_VI vu codes_rn(const vf x, const vf inv) {
    const vu b = bits(clamp(x * inv));
    const vu a = b & 0x7FFFFFFFu;
    return selu((vi)a > 0x7F800000, vu{}, ((b >> 28) & 8u) | grid_rn<M, EMIN>(a));
  }
  // the codes of the W values x[j..] (stochastic from the words w[j..] where SR, else nearest)
  template <bool SR>
  static SIGNOPT_VI vu codes(const float* x, const uint32_t* w, const int64_t j, const vf iv) {
    if constexpr (SR) {
      return codes_sr(loadu<vf>(x + j), iv, loadu<vu>(w + j));
    } else {
      return codes_rn(loadu<vf>(x + j), iv);
    }
  }
  // the bytes of codes c0 (elements 0..W-1) and c1 (W..2W-1): lane i holds elements 2i, 2i+1
  static SIGNOPT_VI vu pairs(const vu c0, const vu c1) {
    return unzip<0>(c0, c1, Lanes{}) | (unzip<1>(c0, c1, Lanes{}) << 4);
  }
  // The packed codes of n values (one block) with inv = 1/multiplier, stochastic from the words w
  // (SR) or nearest: 2W a step, then W (half a vector of bytes), the last n mod W through
  // zero-padded copies (a pad codes as +0, so an odd n's last byte has a 0 high nibble).
  template <bool SR>
  static inline void encode_run(uint8_t* r, const int64_t n, const float* vals, const vf iv, const uint32_t* w) {
    int64_t j = 0;
    for (; j + 2 * W <= n; j += 2 * W)
      store_u8(r + j / 2, pairs(codes<SR>(vals, w, j, iv), codes<SR>(vals, w, j + W, iv)));
    if (j + W <= n) {
      store_u8_half(r + j / 2, pairs(codes<SR>(vals, w, j, iv), vu{}));
      j += W;
    }
    if (j < n) {
      float x[W] = {};
      uint32_t xw[W] = {};
      uint8_t c[W / 2];
      memcpy(x, vals + j, sizeof(float) * (size_t)(n - j));
      if constexpr (SR) memcpy(xw, w + j, sizeof(uint32_t) * (size_t)(n - j));
      store_u8_half(c, pairs(codes<SR>(x, xw, 0, iv), vu{}));
      memcpy(r + j / 2, c, (size_t)(n - j + 1) / 2);
    }
  }
  // R vectors of codes at r, two a byte (an odd last one: half a vector of bytes)
  template <int R>
  static SIGNOPT_VI void put_codes(uint8_t* r, const vu (&c)[R]) {
    for (int k = 0; k + 1 < R; k += 2) store_u8(r + k * W / 2, pairs(c[k], c[k + 1]));
    if constexpr (R % 2 == 1) store_u8_half(r + (R - 1) * W / 2, pairs(c[R - 1], vu{}));
  }
  static inline void encode_codes(uint8_t* r, const int64_t n, const float* vals, const float inv,
                                  const uint32_t* words) {
    if (words) {
      encode_run<true>(r, n, vals, splat(inv), words);
    } else {
      encode_run<false>(r, n, vals, splat(inv), nullptr);
    }
  }
};

}  // namespace vec
}  // namespace cpu
}  // namespace signopt
