// AVX-512 versions of the CPU hot loops (compiled where the compiler targets AVX-512F/BW/DQ; the
// portable loops of cpu_kernels.h / casts.h run everywhere else and for whatever is not covered):
//   * SignLoop<K, PF, SF> (fused_sign, fused_sign_blocks): SignSGD, Signum and Lion (l1) over
//     fp32/bf16 parameters and fp32/bf16/FP8 state, the whole rule on 16 lanes with AVX-512 masks;
//   * fp8_encode_block<F>: FP8 block encoding (absmax, scale, nearest-even codes);
//   * StoLoop<K, PF, SF> (fused_sto, fused_sto_blocks): the stochastic kinds (bases sgd/momentum/
//     lion/adamw) with the element envelope over fp32/bf16 parameters and fp32/bf16/FP8 state,
//     Philox word 0 computed in the loop.
// Every result is bit-identical to the portable code (same fp32 operations, same order):
//   * the update p*decay - lr*u with u in {-1, 0, 1} is p*decay - lr, p*decay + lr (x - (-y) is
//     x + y in IEEE arithmetic) or p*decay - (+0) = p*decay: SignLoop subtracts t = copysign(lr, u)
//     or +0, StoLoop masks a subtract/add of lr; both need lr finite with a clear sign bit
//     (simd_ok checks it, and the portable loop runs otherwise);
//   * FP8 decode places the code's 7 magnitude bits in an fp32's exponent/mantissa fields and
//     multiplies by 2^(127-BIAS) (exact; an fp32 subnormal in between for FP8 subnormals, so the
//     path requires MXCSR without DAZ/FTZ and with round-to-nearest, which simd_ok checks);
//   * bf16 and FP8 rounding are the integer forms of casts.h, FP8 codes as FmtFP8::encode.
#pragma once
#include <stdlib.h>

#include <type_traits>

#include "casts.h"
#include "cpu_philox.h"
#include "rules.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && !defined(__CUDACC__)
#define SIGNOPT_AVX512 1
#include <immintrin.h>
#endif

namespace signopt {
namespace cpu {
namespace simd {

constexpr bool kind_covered(int k) { return k == K_SIGN || k == K_SIGNUM || k == K_LION_L1 || k == K_LION_NORM; }

#if defined(SIGNOPT_AVX512)

// SIGNOPT_CPU_SIMD=0 in the environment turns these loops off (tests run the portable ones).
inline bool simd_enabled() {
  static const bool on = [] {
    const char* e = getenv("SIGNOPT_CPU_SIMD");
    return !(e != nullptr && e[0] == '0');
  }();
  return on;
}

// MXCSR as at process start (round to nearest, no DAZ/FTZ).
inline bool mxcsr_ok() { return simd_enabled() && (_mm_getcsr() & 0xE040u) == 0u; }

// ... and lr finite with a clear sign bit (the masked-update form of the epilogue).
inline bool simd_ok(const Scalars& s) { return mxcsr_ok() && f2u(s.lr) < 0x7F800000u; }

inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u); }

// ---------------------------------------------------------------- loads (16 lanes, masked)
// FULL: all 16 lanes (plain loads/stores: masked stores are slow on some cores), else mask k.
template <bool FULL>
inline __m512 load16(const float* p, __mmask16 k) {
  return FULL ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(k, p);
}
template <bool FULL>
inline __m512 load16(const uint16_t* p, __mmask16 k) {
  const __m256i r = FULL ? _mm256_loadu_si256((const __m256i*)p) : _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(r), 16));
}
// 2^e (exact), for constants.
constexpr float exp2i(int e) { return e > 0 ? 2.0f * exp2i(e - 1) : (e < 0 ? 0.5f * exp2i(e + 1) : 1.0f); }

// The FP8 decode constants of format F (casts.h's FmtFP8: M, EMIN, BIAS, has_inf).
// SHIFT/MASK: a sign-extended code shifted left by SHIFT and masked holds the sign and the 7
// magnitude bits in fp32's sign, exponent and mantissa fields; its value times POW = 2^(127-BIAS)
// is the code's value (exact; subnormal codes land on fp32 subnormals, hence mxcsr_ok).  SMAX =
// 2^BIAS: |scale| below it keeps scale*POW below 2^127, finite (then one multiply by scale*POW
// rounds like value*scale).  TOP: the magnitude code whose exponent field is all ones and mantissa
// 0 (an infinity where the format has them).
template <class F>
struct Fp8Params {
  static constexpr int M = F::M, EMIN = F::EMIN, SHIFT = 23 - M;
  static constexpr uint32_t MASK = 0x80000000u | (0x7Fu << SHIFT);
  static constexpr float POW = exp2i(127 - F::BIAS), SMAX = exp2i(F::BIAS);
  static constexpr int TOP = ((1 << (7 - M)) - 1) << M;
  // NaN codes (and infinities where the format has them), per byte
  static __mmask64 special(__m512i mag) {
    if constexpr (F::has_inf) return _mm512_cmpge_epu8_mask(mag, _mm512_set1_epi8(TOP));  // inf, NaN
    return _mm512_cmpeq_epi8_mask(mag, _mm512_set1_epi8(0x7F));                           // NaN
  }
};

// FP8 code -> fp32 value (exact), then * scale (one rounding, as FmtFP8::load)
template <class F>
inline __m512 fp8_decode16(__m512i c, __m512 scale) {
  using P = Fp8Params<F>;
  const __m512i mag = _mm512_and_si512(c, _mm512_set1_epi32(0x7F));
  __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, P::SHIFT)), _mm512_set1_ps(P::POW));
  if constexpr (F::has_inf) {
    const __mmask16 spec = _mm512_cmpge_epi32_mask(mag, _mm512_set1_epi32(P::TOP));
    const __mmask16 inf = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(P::TOP));
    v = _mm512_mask_mov_ps(v, spec, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
    v = _mm512_mask_mov_ps(v, inf, _mm512_castsi512_ps(_mm512_set1_epi32(0x7F800000)));
  } else {
    const __mmask16 nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7F));
    v = _mm512_mask_mov_ps(v, nan, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
  }
  // sign: (c << 24) & 0x80000000 | v
  v = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_slli_epi32(c, 24), _mm512_set1_epi32((int)0x80000000u),
                                                    _mm512_castps_si512(v), 0xEA));
  return _mm512_mul_ps(v, scale);
}
template <class F, bool FULL>
inline __m512 load16_fp8(const uint8_t* p, __mmask16 k, __m512 scale) {
  const __m128i r = FULL ? _mm_loadu_si128((const __m128i*)p) : _mm_maskz_loadu_epi8(k, p);
  return fp8_decode16<F>(_mm512_cvtepu8_epi32(r), scale);
}

// ---------------------------------------------------------------- stores
template <bool FULL>
inline void store16(float* p, __m512 v, __mmask16 k) {
  if (FULL) {
    _mm512_storeu_ps(p, v);
  } else {
    _mm512_mask_storeu_ps(p, k, v);
  }
}
// bf16 nearest-even (f32_to_bf16_rn): the high halves of bits + 0x7FFF + ((bits >> 16) & 1), with
// NaN -> 0x7FC0 (the high half of 0x7FC00000).
inline __m512i bf16_rn_hi(__m512 v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), lsb);
  return _mm512_mask_mov_epi32(r, _mm512_fpclass_ps_mask(v, 0x81), _mm512_set1_epi32(0x7FC00000));  // NaN
}
template <bool FULL>
inline void store16(uint16_t* p, __m512 v, __mmask16 k) {
  const __m256i r = _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_rn_hi(v), 16));
  if (FULL) {
    _mm256_storeu_si256((__m256i*)p, r);
  } else {
    _mm256_mask_storeu_epi16(p, k, r);
  }
}
// 32 consecutive values from two vectors: bf16 through one two-source word permute of the high
// halves (cheaper than two narrowing moves).
inline void store32(float* p, __m512 v0, __m512 v1) {
  _mm512_storeu_ps(p, v0);
  _mm512_storeu_ps(p + 16, v1);
}
inline void store32(uint16_t* p, __m512 v0, __m512 v1) {
#if defined(__AVX512BF16__)
  // vcvtne2ps2bf16 rounds to nearest even like f32_to_bf16_rn except for NaN (it keeps payload and
  // sign) and subnormal inputs (it flushes them): vectors holding either take the integer path.
  // (kortest of the two masks: no mask-to-GPR moves on the hot path)
  if (_kortestz_mask16_u8(_mm512_fpclass_ps_mask(v0, 0xA1), _mm512_fpclass_ps_mask(v1, 0xA1))) {  // QNaN, SNaN, subnormal
    _mm512_storeu_si512((void*)p, (__m512i)_mm512_cvtne2ps_pbh(v1, v0));
    return;
  }
#endif
  const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27,
                                       25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  _mm512_storeu_si512((void*)p, _mm512_permutex2var_epi16(bf16_rn_hi(v0), odd, bf16_rn_hi(v1)));
}

// ---------------------------------------------------------------- FP8 block encoding
// FmtFP8::encode (nearest even) on 16 lanes; returns the 16 codes in the low bytes of int lanes.
// SIGN=false: the magnitude code only (the caller ors in the sign of y = x*inv); NANS=false: the
// caller knows x holds no NaN (y then holds none either: |y| <= absmax*inv is finite).
// SUB=false: the caller knows every |y| >= 2^EMIN (no subnormal or zero code), so the subnormal
// path is left out.
template <int M, int EMIN, bool SIGN = true, bool NANS = true, bool SUB = true>
inline __m512i fp8_codes16_y(__m512 y, __m512 q) {
  const __m512i b = _mm512_castps_si512(y);  // the sign
  // |clamp(y, -q, q)| = min(|y|, q) with the sign cleared (vrangeps, imm: min-abs, sign 0)
  const __m512i a = _mm512_castps_si512(_mm512_range_ps(y, q, 0x0A));
  // normal (a >= 2^EMIN): nearest-even at bit SH = 23-M of the fp32 bits (the bf16 integer form;
  // a mantissa carry moves into the exponent), the exponent rebiased by the same addition:
  // code = (a + 2^(SH-1) - 1 + lsb - ((126+EMIN) << 23)) >> SH
  constexpr int SH = 23 - M;
  const __mmask16 lsb = _mm512_test_epi32_mask(a, _mm512_set1_epi32(1 << SH));
  __m512i r = _mm512_add_epi32(a, _mm512_set1_epi32((1 << (SH - 1)) - 1 - ((126 + EMIN) << 23)));
  r = _mm512_mask_add_epi32(r, lsb, r, _mm512_set1_epi32(1));
  __m512i code = _mm512_srli_epi32(r, SH);
  // subnormal (a < 2^EMIN): a + C with C = 2^(EMIN-M+23) rounds a to a multiple of the subnormal
  // ulp 2^(EMIN-M) (nearest even: C's last mantissa bit is k's parity), and bits(a + C) - bits(C) = k
  // (k <= 2^M: the result stays in C's binade)
  constexpr int CB = (EMIN - M + 23 + 127) << 23;
  if constexpr (SUB) {
    const __mmask16 sub = _mm512_cmplt_epi32_mask(a, _mm512_set1_epi32((127 + EMIN) << 23));
    code = _mm512_mask_sub_epi32(code, sub,
                                 _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a),
                                                                   _mm512_castsi512_ps(_mm512_set1_epi32(CB)))),
                                 _mm512_set1_epi32(CB));
  }
  if (NANS) code = _mm512_mask_mov_epi32(code, _mm512_fpclass_ps_mask(y, 0x81), _mm512_set1_epi32(0x7F));  // NaN
  if (!SIGN) return code;
  return _mm512_ternarylogic_epi32(_mm512_srli_epi32(b, 24), _mm512_set1_epi32(0x80), code, 0xEA);
}
template <int M, int EMIN, bool SIGN = true, bool NANS = true>
inline __m512i fp8_codes16(__m512 x, __m512 inv, __m512 q) {
  return fp8_codes16_y<M, EMIN, SIGN, NANS>(_mm512_mul_ps(x, inv), q);
}

// Whether n codes hold a NaN (or inf) code: blocks without take the short decode.
template <class F>
inline bool fp8_has_special(const uint8_t* c, const int64_t n) {
  __mmask64 any = 0;
  for (int64_t j = 0; j < n; j += 64) {
    const __mmask64 k = n - j >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - j)) - 1);
    const __m512i mag = _mm512_and_si512(_mm512_maskz_loadu_epi8(k, c + j), _mm512_set1_epi8(0x7F));
    any |= Fp8Params<F>::special(mag) & k;
  }
  return any != 0;
}

// Short decode (no NaN/inf codes, |scale| < SMAX): sfold = scale * POW.
template <class F, bool FULL>
inline __m512 load16_fp8_short(const uint8_t* p, __mmask16 k, __m512 sfold) {
  const __m128i r = FULL ? _mm_loadu_si128((const __m128i*)p) : _mm_maskz_loadu_epi8(k, p);
  const __m512i v = _mm512_and_si512(_mm512_slli_epi32(_mm512_cvtepi8_epi32(r), Fp8Params<F>::SHIFT),
                                     _mm512_set1_epi32((int)Fp8Params<F>::MASK));
  return _mm512_mul_ps(_mm512_castsi512_ps(v), sfold);
}

// A state's 16-lane loads: element formats as stored; FP8 codes with the block's scale, by the
// short decode where the n codes hold no NaN/inf code and |scale| < SMAX (the same values).
template <class SF>
struct StateLoad {
  __m512 scale = _mm512_setzero_ps(), sfold = _mm512_setzero_ps();
  bool short_dec = false;
  StateLoad(const typename SF::raw* r, const int64_t n, const float sc) {
    if constexpr (SF::blocked) {
      scale = _mm512_set1_ps(sc);
      sfold = _mm512_set1_ps(sc * Fp8Params<SF>::POW);
      short_dec = fabsf(sc) < Fp8Params<SF>::SMAX && !fp8_has_special<SF>(r, n);
    }
  }
  template <bool FULL>
  __m512 load(const typename SF::raw* r, const __mmask16 k) const {
    return short_dec ? load_t<FULL, true>(r, k) : load_t<FULL, false>(r, k);
  }
  // SHORT: short_dec known at compile time (a loop picks its version once).
  template <bool FULL, bool SHORT>
  __m512 load_t(const typename SF::raw* r, const __mmask16 k) const {
    if constexpr (SF::blocked) {
      return SHORT ? load16_fp8_short<SF, FULL>(r, k, sfold) : load16_fp8<SF, FULL>(r, k, scale);
    } else {
      return load16<FULL>(r, k);
    }
  }
};

// fp8_encode_amax's amax_flag for n new values whose max-abs a loop accumulated in acc (vrangeps,
// imm 0x0B): the bits of the finite absmax (an inf or NaN went through acc: vals rescanned
// exactly), bit 31 set where may_nan (the values may hold a NaN).
inline uint32_t fp8_amax_flag(const __m512 acc, const int64_t n, const float* vals, const bool may_nan) {
  const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF);
  uint32_t am = _mm512_reduce_max_epu32(_mm512_and_si512(_mm512_castps_si512(acc), absm));
  if (am >= 0x7F800000u) {
    __m512i fin = _mm512_setzero_si512();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 k = tail_mask(n - i);
      const __m512i a = _mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(k, vals + i)), absm);
      fin = _mm512_mask_max_epu32(fin, _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x7F800000)), fin, a);
    }
    am = _mm512_reduce_max_epu32(fin);
  }
  return may_nan ? am | 0x80000000u : am;
}

template <class F>
inline float fp8_encode_amax(uint8_t* r, const int64_t n, const float* vals, const uint32_t amax_flag,
                             const float amin = 0.0f);

// encode_block (cpu_kernels.h) for FP8 nearest: absmax of the finite values, scale, codes.
template <class F>
inline float fp8_encode_block(uint8_t* r, const int64_t n, const float* vals) {
  __m512i amax = _mm512_setzero_si512();
  __mmask16 nonfin = 0;
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tail_mask(n - j);
    const __m512i a = _mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(k, vals + j)),
                                       _mm512_set1_epi32(0x7FFFFFFF));
    const __mmask16 fin = _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x7F800000));
    nonfin |= (__mmask16)~fin;
    amax = _mm512_mask_max_epu32(amax, fin, amax, a);
  }
  return fp8_encode_amax<F>(r, n, vals, _mm512_reduce_max_epu32(amax) | (nonfin ? 0x80000000u : 0u));
}

// 64 codes from 64 values with the sign or-ed in after packing: two unsigned-saturating packs of
// the magnitude codes (0..127) and two signed-saturating packs of the y bits (which keep the sign
// of each lane) interleave the four vectors per 128-bit lane in dword groups alike, one dword
// permute restores the order.
template <class F, bool NANS, bool SUB>
inline void fp8_store64(uint8_t* r, const float* vals, __m512 inv, __m512 q) {
  constexpr int M = Fp8Params<F>::M, EMIN = Fp8Params<F>::EMIN;
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  const __m512 y0 = _mm512_mul_ps(_mm512_loadu_ps(vals), inv), y1 = _mm512_mul_ps(_mm512_loadu_ps(vals + 16), inv);
  const __m512 y2 = _mm512_mul_ps(_mm512_loadu_ps(vals + 32), inv), y3 = _mm512_mul_ps(_mm512_loadu_ps(vals + 48), inv);
  const __m512i c0 = fp8_codes16_y<M, EMIN, false, NANS, SUB>(y0, q), c1 = fp8_codes16_y<M, EMIN, false, NANS, SUB>(y1, q);
  const __m512i c2 = fp8_codes16_y<M, EMIN, false, NANS, SUB>(y2, q), c3 = fp8_codes16_y<M, EMIN, false, NANS, SUB>(y3, q);
  const __m512i b = _mm512_packus_epi16(_mm512_packus_epi32(c0, c1), _mm512_packus_epi32(c2, c3));
  const __m512i sg = _mm512_packs_epi16(_mm512_packs_epi32(_mm512_castps_si512(y0), _mm512_castps_si512(y1)),
                                        _mm512_packs_epi32(_mm512_castps_si512(y2), _mm512_castps_si512(y3)));
  const __m512i c = _mm512_ternarylogic_epi32(sg, _mm512_set1_epi8((char)0x80), b, 0xEA);  // (sg & 0x80) | b
  _mm512_storeu_si512((void*)r, _mm512_permutexvar_epi32(order, c));
}

// The same with the bits of the finite absmax already known (SignLoop computes them; bit 31 of
// amax_flag set: the values may hold a NaN, clear: none is NaN).  amin: with NaN-free values,
// their min |value| when the caller tracked it (else 0): when amin*inv >= 2^EMIN (so every
// |x*inv| is, rounding being monotone) no code is subnormal or zero and that path is left out.
template <class F>
inline float fp8_encode_amax(uint8_t* r, const int64_t n, const float* vals, const uint32_t amax_flag,
                             const float amin) {
  const uint32_t amax = amax_flag & 0x7FFFFFFFu;
  const bool nan_free = amax_flag == amax;
  const float sc = F::scale_of(u2f(amax));
  const float invs = 1.0f / sc;
  const __m512 inv = _mm512_set1_ps(invs), q = _mm512_set1_ps(F::qmax);
  int64_t j = 0;
  if (nan_free && amin * invs >= u2f((uint32_t)(127 + Fp8Params<F>::EMIN) << 23)) {
    for (; j + 64 <= n; j += 64) fp8_store64<F, false, false>(r + j, vals + j, inv, q);
  } else if (nan_free) {
    for (; j + 64 <= n; j += 64) fp8_store64<F, false, true>(r + j, vals + j, inv, q);
  } else {
    for (; j + 64 <= n; j += 64) fp8_store64<F, true, true>(r + j, vals + j, inv, q);
  }
  for (; j + 16 <= n; j += 16) {
    const __m512i c = fp8_codes16<Fp8Params<F>::M, Fp8Params<F>::EMIN>(_mm512_loadu_ps(vals + j), inv, q);
    _mm_storeu_si128((__m128i*)(r + j), _mm512_cvtepi32_epi8(c));
  }
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    const __m512i c = fp8_codes16<Fp8Params<F>::M, Fp8Params<F>::EMIN>(_mm512_maskz_loadu_ps(k, vals + j), inv, q);
    _mm_mask_storeu_epi8(r + j, k, _mm512_cvtepi32_epi8(c));
  }
  return sc;
}

// What SignLoop learns of a block's new m for fp8_encode_amax.
struct BlockStats {
  uint32_t amax_flag = 0u;
  float amin = 0.0f;
};

// The rule's scalars as vectors (prologue, momentum, epilogue), shared by the fused loops.
struct RuleVectors {
  bool prol, has_l2;  // any prologue work; an L2 term
  __m512 mul, sg, l2, b1, omb1, b2, omb2, lr, decay;
  explicit RuleVectors(const Scalars& sc)
      : prol(sc.has_inv_scale || sc.maximize || sc.l2 != 0.0f),
        has_l2(sc.l2 != 0.0f),
        mul(_mm512_set1_ps(sc.has_inv_scale ? sc.inv_scale : 1.0f)),
        sg(_mm512_set1_ps(sc.maximize ? -1.0f : 1.0f)),
        l2(_mm512_set1_ps(sc.l2)),
        b1(_mm512_set1_ps(sc.beta1)),
        omb1(_mm512_set1_ps(sc.omb1)),
        b2(_mm512_set1_ps(sc.beta2)),
        omb2(_mm512_set1_ps(sc.omb2)),
        lr(_mm512_set1_ps(sc.lr)),
        decay(_mm512_set1_ps(sc.decay)) {}
  // rules.h's prologue on the live lanes k: g*inv_scale, -g (maximize); non-finite lanes are bad
  // (g = 0 there, good = k without them); + l2*p.  Returns the gradient the rule uses.
  // PROL: prol known at compile time (a loop picks its version once, not per vector).
  template <bool PROL>
  __m512 prologue_t(const __m512 pv, __m512 gv, const __mmask16 k, __mmask16& bad, __mmask16& good) const {
    if constexpr (PROL) gv = _mm512_mul_ps(_mm512_mul_ps(gv, mul), sg);
    bad = _mm512_mask_fpclass_ps_mask(k, gv, 0x99);  // QNaN, +inf, -inf, SNaN
    good = _kandn_mask16(bad, k);
    const __m512 gg = _mm512_maskz_mov_ps(good, gv);
    if constexpr (PROL) return has_l2 ? _mm512_add_ps(gg, _mm512_mul_ps(l2, pv)) : gg;
    return gg;
  }
  __m512 prologue(const __m512 pv, __m512 gv, const __mmask16 k, __mmask16& bad, __mmask16& good) const {
    return prol ? prologue_t<true>(pv, gv, k, bad, good) : prologue_t<false>(pv, gv, k, bad, good);
  }
};

// ---------------------------------------------------------------- SignSGD / Signum / Lion
// fused_loop of cpu_kernels.h for K in kind_covered, as a loop object whose vector scalars are set
// up once (fused_sign_blocks runs it block after block); FP8 state (SF::blocked): m read as codes
// with mscale, the new m written to mout (fp32) and fp8_encode_amax's amax_flag and amin to *stats.
// run returns the non-finite count.
template <int K, class PF, class SF>
struct SignLoop {
  const RuleVectors R;
  const float beta1, beta2;
  const __m512 segv;      // K_LION_NORM: the segment's norm (one segment per loop object)
  const __mmask16 segpos;  // ... all lanes where it is > 0
  const bool decay1;       // decay == 1 (no weight decay this step)
  SignLoop(const Scalars& sc, const float seg)
      : R(sc), beta1(sc.beta1), beta2(sc.beta2), segv(_mm512_set1_ps(seg)),
        segpos(seg > 0.0f ? (__mmask16)0xFFFF : (__mmask16)0), decay1(sc.decay == 1.0f) {}

  int64_t run(const float mscale, const int64_t n, typename PF::raw* __restrict p, const typename PF::raw* __restrict g,
              typename SF::raw* __restrict m, float* __restrict mout, BlockStats* stats) const {
    const StateLoad<SF> ml(m, n, mscale);
    if (decay1) return R.prol ? run_s<true, false>(ml, n, p, g, m, mout, stats)
                              : run_s<false, false>(ml, n, p, g, m, mout, stats);
    return R.prol ? run_s<true, true>(ml, n, p, g, m, mout, stats)
                  : run_s<false, true>(ml, n, p, g, m, mout, stats);
  }

  template <bool PROL, bool DECAY>
  int64_t run_s(const StateLoad<SF>& ml, const int64_t n, typename PF::raw* __restrict p,
                const typename PF::raw* __restrict g, typename SF::raw* __restrict m, float* __restrict mout,
                BlockStats* stats) const {
    if constexpr (SF::blocked) {
      if (ml.short_dec) return run_t<PROL, true, DECAY>(ml, n, p, g, m, mout, stats);
    }
    return run_t<PROL, false, DECAY>(ml, n, p, g, m, mout, stats);
  }

  // run with R.prol = PROL, ml.short_dec = SHORT and decay != 1 = DECAY (the per-vector branches
  // hoisted; with decay = 1, p*decay = p for every p, sNaN included: the multiply is left out).
  template <bool PROL, bool SHORT, bool DECAY>
  int64_t run_t(const StateLoad<SF>& ml, const int64_t n, typename PF::raw* __restrict p,
                const typename PF::raw* __restrict g, typename SF::raw* __restrict m, float* __restrict mout,
                BlockStats* stats) const {
    const __m512 zero = _mm512_setzero_ps();
    int64_t nbad = 0;
    __m512 amax = _mm512_setzero_ps();  // FP8 state: max |new m| (vrangeps)
    __m512 amin = _mm512_set1_ps(INFINITY);  // ... and min |new m| (NaN-free only: see may_nan)
    struct Out {
      __m512 pn, mn;
    };
    auto body = [&](const int64_t j, const __mmask16 k, auto full) -> Out {
      constexpr bool FULL = decltype(full)::value;
      const __m512 pv = load16<FULL>(p + j, k);
      __mmask16 bad, good;
      const __m512 gg = R.template prologue_t<PROL>(pv, load16<FULL>(g + j, k), k, bad, good);
      __m512 src;  // the value whose sign is u
      __m512 mn = zero;
      if constexpr (K == K_SIGN) {
        src = gg;
      } else {
        const __m512 mv = ml.template load_t<FULL, SHORT>(m + j, k);
        if constexpr (K == K_SIGNUM) {
          mn = _mm512_mask_add_ps(mv, good, _mm512_mul_ps(mv, R.b1), _mm512_mul_ps(gg, R.omb1));
          src = mn;
        } else {  // Lion, Lion-kappa norm: c from the old m, m <- ema with beta2
          src = _mm512_add_ps(_mm512_mul_ps(mv, R.b1), _mm512_mul_ps(gg, R.omb1));
          mn = _mm512_mask_add_ps(mv, good, _mm512_mul_ps(mv, R.b2), _mm512_mul_ps(gg, R.omb2));
        }
        if constexpr (SF::blocked) {
          store16<FULL>(mout + j, mn, k);
          amax = _mm512_mask_range_ps(amax, k, amax, mn, 0x0B);  // max-abs, sign 0
          amin = _mm512_mask_range_ps(amin, k, amin, mn, 0x0A);  // min-abs, sign 0
        }
      }
      __m512 pn;
      if constexpr (K == K_LION_NORM) {  // u = c/seg where seg > 0, else 0; p*decay - lr*u
        const __m512 u = _mm512_maskz_div_ps(segpos, src, segv);
        pn = _mm512_mask_sub_ps(pv, good, DECAY ? _mm512_mul_ps(pv, R.decay) : pv, _mm512_mul_ps(R.lr, u));
      } else {
        // t = lr*u: copysign(lr, src) where src != 0 (ordered), +0 elsewhere (sign(NaN) = 0)
        const __mmask16 nz = _mm512_mask_cmp_ps_mask(good, src, zero, _CMP_NEQ_OQ);
        const __m512 t = _mm512_castsi512_ps(_mm512_maskz_ternarylogic_epi32(
            nz, _mm512_castps_si512(src), _mm512_set1_epi32((int)0x80000000u), _mm512_castps_si512(R.lr), 0xEA));
        pn = DECAY ? _mm512_mask_mul_ps(pv, good, pv, R.decay) : pv;
        pn = _mm512_mask_sub_ps(pn, good, pn, t);
      }
      nbad += __builtin_popcount((unsigned)bad);
      return Out{pn, mn};
    };
    constexpr bool STORE_M = K != K_SIGN && !SF::blocked;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      const Out o0 = body(j, (__mmask16)0xFFFF, std::true_type{});
      const Out o1 = body(j + 16, (__mmask16)0xFFFF, std::true_type{});
      store32(p + j, o0.pn, o1.pn);
      if constexpr (STORE_M) store32(m + j, o0.mn, o1.mn);
    }
    for (; j < n; j += 16) {
      const __mmask16 k = tail_mask(n - j);
      const Out o = body(j, k, std::false_type{});
      store16<false>(p + j, o.pn, k);
      if constexpr (STORE_M) store16<false>(m + j, o.mn, k);
    }
    if constexpr (SF::blocked) {
      // bit 31: the new m may hold a NaN, so that fp8_encode_amax keeps the NaN select.  With the
      // short decode every decoded m is finite, below 2^31 in magnitude; without L2 the gradient
      // term is finite where good (0 elsewhere); with |beta| <= 1 neither m*beta nor g*(1-beta) is
      // NaN and their sum is finite or +-inf (never inf - inf), so no new m is NaN.
      const bool may_nan = !(SHORT && !(PROL && R.has_l2) && fabsf(beta1) <= 1.0f && fabsf(beta2) <= 1.0f);
      stats->amax_flag = fp8_amax_flag(amax, n, mout, may_nan);
      stats->amin = may_nan ? 0.0f : u2f(_mm512_reduce_min_epu32(_mm512_castps_si512(amin)));
    }
    return nbad;
  }
};

// fp32/bf16 state: one range (of one segment: seg is its norm for K_LION_NORM).
template <int K, class PF, class SF>
inline int64_t fused_sign(const Scalars& sc, const float seg, const int64_t n, typename PF::raw* __restrict p,
                          const typename PF::raw* __restrict g, typename SF::raw* __restrict m) {
  static_assert(!SF::blocked, "FP8 state: fused_sign_blocks");
  return SignLoop<K, PF, SF>(sc, seg).run(0.0f, n, p, g, m, nullptr, nullptr);
}

// Blocks of B elements over n (the last may be short), software-pipelined: rule(b, a, nb, slot)
// runs block b (elements a .. a+nb) into buffer slot b & 1, and encode(b, a, nb, slot) encodes
// block b after block b+1's rule has run, so that the absmax reduction and scale of one block
// overlap the next block's loop instead of stalling it.
template <class Rule, class Encode>
inline void pipelined_blocks(const int64_t B, const int64_t n, Rule&& rule, Encode&& encode) {
  const int64_t nblocks = (n + B - 1) / B;
  for (int64_t b = 0; b <= nblocks; ++b) {
    if (b < nblocks) rule(b, b * B, n - b * B < B ? n - b * B : B, (int)(b & 1));
    if (b > 0) encode(b - 1, (b - 1) * B, n - (b - 1) * B < B ? n - (b - 1) * B : B, (int)((b - 1) & 1));
  }
}

// FP8 state over whole blocks (pipelined_blocks): each block's new m goes to an L1 buffer and is
// encoded with fp8_encode_amax; the loop's vector scalars are set up once for all blocks.  scales:
// the blocks' scales, read and replaced; buf: 2*B floats; seg: K_LION_NORM's norm (the n elements
// lie in one segment).  Returns the non-finite count.
template <int K, class PF, class SF>
inline int64_t fused_sign_blocks(const Scalars& sc, const float seg, const int64_t B, const int64_t n,
                                 typename PF::raw* __restrict p, const typename PF::raw* __restrict g,
                                 uint8_t* __restrict m, float* __restrict scales, float* __restrict buf) {
  const SignLoop<K, PF, SF> L(sc, seg);
  int64_t nbad = 0;
  BlockStats stats[2] = {};
  pipelined_blocks(
      B, n,
      [&](int64_t b, int64_t a, int64_t nb, int slot) {
        nbad += L.run(scales[b], nb, p + a, g + a, m + a, buf + slot * B, &stats[slot]);
      },
      [&](int64_t b, int64_t a, int64_t nb, int slot) {
        scales[b] = fp8_encode_amax<SF>(m + a, nb, buf + slot * B, stats[slot].amax_flag, stats[slot].amin);
      });
  return nbad;
}

// ---------------------------------------------------------------- Lion-kappa norm: reduction pass
// GroupKernel::sum_loop for K_LION_NORM on 16 lanes, reading the stored p (L2 term only), g and m
// directly: c = bad ? 0 : m*beta1 + g*(1-beta1) after the prologue, c^2 in fp64 added to lane
// e mod RED_LANES for the chunk's element e, in element order (as the portable loop), then the same
// pairwise tree.  Past n, c = 0 adds +0 (the lanes are never -0).  FP8 m: every 16-element group
// lies in one block (the caller checks that the block and the chunk start a are multiples of 16);
// mscale: the tensor's block scales.
template <class PF, class SF>
inline double norm_sum(const Scalars& sc, const int64_t n, const typename PF::raw* __restrict p,
                       const typename PF::raw* __restrict g, const typename SF::raw* __restrict m,
                       const float* __restrict mscale, const int64_t a, const int64_t block) {
  static_assert(RED_LANES % 16 == 0, "16-element groups stay in one run of lanes");
  const RuleVectors R(sc);
  alignas(64) double lanes[RED_LANES] = {};
  auto group = [&](const int64_t e, const __mmask16 k, auto full) {
    constexpr bool FULL = decltype(full)::value;
    const __m512 pv = R.has_l2 ? load16<FULL>(p + e, k) : _mm512_setzero_ps();
    __mmask16 bad, good;
    const __m512 gg = R.prologue(pv, load16<FULL>(g + e, k), k, bad, good);
    __m512 mv;
    if constexpr (SF::blocked) {
      mv = load16_fp8<SF, FULL>(m + e, k, _mm512_set1_ps(mscale[(a + e) / block]));
    } else {
      mv = load16<FULL>(m + e, k);
    }
    const __m512 c = _mm512_maskz_add_ps(good, _mm512_mul_ps(mv, R.b1), _mm512_mul_ps(gg, R.omb1));
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(c));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(c), 1)));
    double* L = lanes + e % RED_LANES;
    _mm512_store_pd(L, _mm512_add_pd(_mm512_load_pd(L), _mm512_mul_pd(lo, lo)));
    _mm512_store_pd(L + 8, _mm512_add_pd(_mm512_load_pd(L + 8), _mm512_mul_pd(hi, hi)));
  };
  int64_t e = 0;
  for (; e + 16 <= n; e += 16) group(e, (__mmask16)0xFFFF, std::true_type{});
  if (e < n) group(e, tail_mask(n - e), std::false_type{});
  for (int stride = RED_LANES / 2; stride >= 1; stride /= 2)
    for (int j = 0; j < stride; ++j) lanes[j] += lanes[j + stride];
  return lanes[0];
}

// ---------------------------------------------------------------- stochastic sign (StoSignSGD, SignConversion)
constexpr bool sto_covered(int k) {
  return k == K_STO_SGD || k == K_STO_MOMENTUM || k == K_STO_LION || k == K_STO_ADAMW;
}

// apply_tile of cpu_kernels.h for the stochastic kinds with the element envelope, without
// cautious masking or stochastic rounding, fp32/bf16 parameters and fp32/bf16/FP8 state, Philox
// word 0 and the whole rule on 16 lanes, no tile buffers (the same fp32 operations in the same
// order), as a loop object whose vector scalars are set up once (fused_sto_blocks runs it block
// after block):
//   * fmax_ign(a, b) is vmaxps(a, b) (b where either is NaN, else a > b ? a : b) with a where
//     only b is NaN;
//   * u in {-1, 0, +1}: the update is a masked subtract/add of lr (see the top of this file);
//   * U = (w0 >> 8) * 2^-24 (exact conversion and product).
// FP8 state: one block, its codes decoded with the block scales msf/vsf/Gsf (StateLoad), the new
// values written to mo/vo/Go (fp32) and fp8_encode_amax's amax_flag of m, v, G to amax[0..2]
// (bit 31 always set: no NaN-freedom argument is made here).  run: `idx` is the Philox counter of
// element 0; returns the non-finite count.
template <int K, class PF, class SF>
struct StoLoop {
  using PR = typename PF::raw;
  using SR = typename SF::raw;
  static constexpr bool HM = kind_has_m(K), HV = kind_has_v(K);
  const RuleVectors R;
  const __m512 gam, eps, bc1, bc2;
  const uint32_t k0, k1;
  const bool from_grad;
  StoLoop(const Scalars& sc, const float bc1f, const float bc2f, const uint32_t key0, const uint32_t key1)
      : R(sc),
        gam(_mm512_set1_ps(sc.envelope_decay)),
        eps(_mm512_set1_ps(sc.eps)),
        bc1(_mm512_set1_ps(bc1f)),
        bc2(_mm512_set1_ps(bc2f)),
        k0(key0),
        k1(key1),
        from_grad(sc.envelope_from_grad != 0) {}

  int64_t run(const uint64_t idx, const int64_t n, PR* __restrict p, const PR* __restrict g, SR* __restrict m,
              SR* __restrict v, SR* __restrict E, const float msf = 0.0f, const float vsf = 0.0f,
              const float Gsf = 0.0f, float* __restrict mo = nullptr, float* __restrict vo = nullptr,
              float* __restrict Go = nullptr, uint32_t* amax = nullptr) const {
    const StateLoad<SF> ml(m, HM ? n : 0, msf), vl(v, HV ? n : 0, vsf), Gl(E, n, Gsf);
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f), u24 = _mm512_set1_ps(5.9604644775390625e-08f);
    const __m512i absm = _mm512_set1_epi32(0x7FFFFFFF);
    __m512 mx = _mm512_setzero_ps(), vx = mx, Gx = mx;  // FP8 state: max |new m|, |new v|, |new G| (vrangeps)
    int64_t nbad = 0;
    struct Out {
      __m512 pn, mn, vn, Gn;
    };
    auto body = [&](const int64_t j, const __mmask16 k, const __m512i w, auto full) -> Out {
      constexpr bool FULL = decltype(full)::value;
      const __m512 pv = load16<FULL>(p + j, k);
      __mmask16 bad, good;
      const __m512 gg = R.prologue(pv, load16<FULL>(g + j, k), k, bad, good);
      Out o;
      o.mn = o.vn = _mm512_setzero_ps();
      __m512 d;
      if constexpr (K == K_STO_SGD) {
        d = gg;
      } else {
        const __m512 mv = ml.template load<FULL>(m + j, k);
        if constexpr (K == K_STO_LION) {
          d = _mm512_maskz_add_ps(good, _mm512_mul_ps(mv, R.b1), _mm512_mul_ps(gg, R.omb1));
          o.mn = _mm512_mask_add_ps(mv, good, _mm512_mul_ps(mv, R.b2), _mm512_mul_ps(gg, R.omb2));
        } else {
          o.mn = _mm512_mask_add_ps(mv, good, _mm512_mul_ps(mv, R.b1), _mm512_mul_ps(gg, R.omb1));
          d = o.mn;
          if constexpr (HV) {
            const __m512 vv = vl.template load<FULL>(v + j, k);
            o.vn = _mm512_mask_add_ps(vv, good, _mm512_mul_ps(vv, R.b2), _mm512_mul_ps(_mm512_mul_ps(gg, gg), R.omb2));
            const __m512 den = _mm512_add_ps(_mm512_sqrt_ps(_mm512_div_ps(o.vn, bc2)), eps);
            d = _mm512_maskz_mov_ps(good, _mm512_div_ps(_mm512_div_ps(o.mn, bc1), den));
          }
        }
      }
      const __m512 src = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(from_grad ? gg : d), absm));
      const __m512 Gv = Gl.template load<FULL>(E + j, k);
      const __m512 ga = _mm512_mul_ps(Gv, gam);
      __m512 Ge = _mm512_max_ps(ga, src);
      const __mmask16 only_b_nan =
          _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(ga, ga, _CMP_ORD_Q), src, src, _CMP_UNORD_Q);
      Ge = _mm512_mask_mov_ps(Ge, only_b_nan, ga);
      Ge = _mm512_mask_mov_ps(Gv, good, Ge);
      o.Gn = Ge;
      const __m512 thr = _mm512_mul_ps(_mm512_add_ps(one, _mm512_div_ps(d, Ge)), half);
      const __m512 U = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(w, 8)), u24);
      const __mmask16 nz =
          _mm512_mask_test_epi32_mask(good, _mm512_or_si512(_mm512_castps_si512(d), _mm512_castps_si512(Ge)), absm);
      const __mmask16 lt = _mm512_cmp_ps_mask(U, thr, _CMP_LT_OQ);
      const __mmask16 pos = nz & lt, neg = _kandn_mask16(lt, nz);
      __m512 pn = _mm512_mask_mul_ps(pv, good, pv, R.decay);
      pn = _mm512_mask_sub_ps(pn, pos, pn, R.lr);
      pn = _mm512_mask_add_ps(pn, neg, pn, R.lr);
      o.pn = pn;
      if constexpr (SF::blocked) {  // max-abs, sign 0
        if constexpr (HM) mx = _mm512_mask_range_ps(mx, k, mx, o.mn, 0x0B);
        if constexpr (HV) vx = _mm512_mask_range_ps(vx, k, vx, o.vn, 0x0B);
        Gx = _mm512_mask_range_ps(Gx, k, Gx, o.Gn, 0x0B);
      }
      nbad += __builtin_popcount((unsigned)bad);
      return o;
    };
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      __m512i w0, w1;
      philox32_w0_any(k0, k1, idx + (uint64_t)j, w0, w1);
      const Out o0 = body(j, (__mmask16)0xFFFF, w0, std::true_type{});
      const Out o1 = body(j + 16, (__mmask16)0xFFFF, w1, std::true_type{});
      store32(p + j, o0.pn, o1.pn);
      if constexpr (SF::blocked) {  // fp32 values to the buffers (fused_sto_blocks encodes the block)
        if constexpr (HM) store32(mo + j, o0.mn, o1.mn);
        if constexpr (HV) store32(vo + j, o0.vn, o1.vn);
        store32(Go + j, o0.Gn, o1.Gn);
      } else {
        if constexpr (HM) store32(m + j, o0.mn, o1.mn);
        if constexpr (HV) store32(v + j, o0.vn, o1.vn);
        store32(E + j, o0.Gn, o1.Gn);
      }
    }
    if (j < n) {
      __m512i w[2];
      philox32_w0_any(k0, k1, idx + (uint64_t)j, w[0], w[1]);
      for (int h = 0; j < n; j += 16, ++h) {
        const __mmask16 k = tail_mask(n - j);
        const Out o = body(j, k, w[h], std::false_type{});
        store16<false>(p + j, o.pn, k);
        if constexpr (SF::blocked) {
          if constexpr (HM) store16<false>(mo + j, o.mn, k);
          if constexpr (HV) store16<false>(vo + j, o.vn, k);
          store16<false>(Go + j, o.Gn, k);
        } else {
          if constexpr (HM) store16<false>(m + j, o.mn, k);
          if constexpr (HV) store16<false>(v + j, o.vn, k);
          store16<false>(E + j, o.Gn, k);
        }
      }
    }
    if constexpr (SF::blocked) {
      if constexpr (HM) amax[0] = fp8_amax_flag(mx, n, mo, true);
      if constexpr (HV) amax[1] = fp8_amax_flag(vx, n, vo, true);
      amax[2] = fp8_amax_flag(Gx, n, Go, true);
    }
    return nbad;
  }
};

// fp32/bf16 state: one range.
template <int K, class PF, class SF>
inline int64_t fused_sto(const Scalars& sc, const float bc1f, const float bc2f, const uint32_t k0,
                         const uint32_t k1, const uint64_t idx, const int64_t n, typename PF::raw* __restrict p,
                         const typename PF::raw* __restrict g, typename SF::raw* __restrict m,
                         typename SF::raw* __restrict v, typename SF::raw* __restrict E) {
  static_assert(!SF::blocked, "FP8 state: fused_sto_blocks");
  return StoLoop<K, PF, SF>(sc, bc1f, bc2f, k0, k1).run(idx, n, p, g, m, v, E);
}

// FP8 state over whole blocks (pipelined_blocks), as fused_sign_blocks: each block's new m, v, G
// go to L1 buffers and are encoded after the next block's rule has run.  ms/vs/Gs: the blocks'
// scales of the states the kind has, read and replaced; buf: 6*B floats (m, v, G of two blocks).
// Returns the non-finite count.
template <int K, class PF, class SF>
inline int64_t fused_sto_blocks(const Scalars& sc, const float bc1f, const float bc2f, const uint32_t k0,
                                const uint32_t k1, const uint64_t idx, const int64_t B, const int64_t n,
                                typename PF::raw* __restrict p, const typename PF::raw* __restrict g,
                                uint8_t* __restrict m, uint8_t* __restrict v, uint8_t* __restrict E,
                                float* __restrict ms, float* __restrict vs, float* __restrict Gs,
                                float* __restrict buf) {
  constexpr bool HM = kind_has_m(K), HV = kind_has_v(K);
  const StoLoop<K, PF, SF> L(sc, bc1f, bc2f, k0, k1);
  int64_t nbad = 0;
  uint32_t amax[2][3];
  pipelined_blocks(
      B, n,
      [&](int64_t b, int64_t a, int64_t nb, int slot) {
        float* o = buf + slot * 3 * B;
        nbad += L.run(idx + (uint64_t)a, nb, p + a, g + a, HM ? m + a : nullptr, HV ? v + a : nullptr, E + a,
                      HM ? ms[b] : 0.0f, HV ? vs[b] : 0.0f, Gs[b], o, o + B, o + 2 * B, amax[slot]);
      },
      [&](int64_t b, int64_t a, int64_t nb, int slot) {
        const float* o = buf + slot * 3 * B;
        if constexpr (HM) ms[b] = fp8_encode_amax<SF>(m + a, nb, o, amax[slot][0]);
        if constexpr (HV) vs[b] = fp8_encode_amax<SF>(v + a, nb, o + B, amax[slot][1]);
        Gs[b] = fp8_encode_amax<SF>(E + a, nb, o + 2 * B, amax[slot][2]);
      });
  return nbad;
}

#else
inline bool mxcsr_ok() { return false; }
inline bool simd_ok(const Scalars&) { return false; }
constexpr bool sto_covered(int) { return false; }
#endif

}  // namespace simd
}  // namespace cpu
}  // namespace signopt
