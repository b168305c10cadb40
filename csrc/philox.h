// Philox4x32-10 exactly as signopt/philox.py and Triton's tl.philox compute it: the one scalar
// implementation (CPU and CUDA) and, next to it, its AVX-512 form (CPU, where the compiler
// targets AVX-512F).
//   round:  (c0, c1, c2, c3) <- (hi(B*c2) ^ c1 ^ k0, lo(B*c2), hi(A*c0) ^ c3 ^ k1, lo(A*c0))
//           k0 += 0x9E3779B9, k1 += 0xBB67AE85            (A = 0xD2511F53, B = 0xCD9E8D57)
// Random bits v2 (element_word): with the per-(step, tensor) key, the call on counter
// (j mod 2^32, j >> 32, purpose, 0) serves the four elements i = 4j .. 4j+3 of the full tensor,
// element i taking word i & 3; the purposes are declared (signopt.declaration.RANDOM_PURPOSES,
// PURPOSE_* in the generated header).
#pragma once
#include "config.h"
#if defined(__AVX512F__) && !defined(__CUDACC__)
#define SIGNOPT_PHILOX_AVX512 1
#include <immintrin.h>
#endif

namespace signopt {

constexpr uint32_t PHILOX_A = 0xD2511F53u, PHILOX_B = 0xCD9E8D57u;    // round multipliers
constexpr uint32_t PHILOX_W0 = 0x9E3779B9u, PHILOX_W1 = 0xBB67AE85u;  // key increments

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

SIGNOPT_HD PhiloxWords philox4x32_10(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1,
                                     uint32_t c2, uint32_t c3) {
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int r = 0; r < 10; ++r) {
    const uint64_t pb = (uint64_t)PHILOX_B * (uint64_t)c2;
    const uint64_t pa = (uint64_t)PHILOX_A * (uint64_t)c0;
    const uint32_t n0 = (uint32_t)(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)pb;
    c3 = (uint32_t)pa;
    c0 = n0;
    c2 = n2;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  return PhiloxWords{c0, c1, c2, c3};
}

// The word of element i (full-tensor flat index) for a purpose: random bits v2, as
// signopt.philox.element_word. Runs of consecutive elements make each call once by calling
// philox4x32_10 themselves (counter (j, j >> 32, purpose, 0), word i & 3) and must agree with this.
SIGNOPT_HD uint32_t element_word(uint32_t k0, uint32_t k1, uint64_t i, uint32_t purpose) {
  const uint64_t j = i >> 2;
  const PhiloxWords w = philox4x32_10(k0, k1, (uint32_t)j, (uint32_t)(j >> 32), purpose, 0u);
  switch (i & 3) {
    case 0: return w.w0;
    case 1: return w.w1;
    case 2: return w.w2;
    default: return w.w3;
  }
}

// Random bits v1, still drawn by the CPU loops (csrc/cpu_*) until they move to v2: one call per
// element on counter (i mod 2^32, i >> 32, 0, 0), word WORD_* of it for each purpose. Remove
// with the last v1 caller.
SIGNOPT_HD PhiloxWords element_words(uint32_t k0, uint32_t k1, uint64_t i) {
  return philox4x32_10(k0, k1, (uint32_t)i, (uint32_t)(i >> 32), 0u, 0u);
}
constexpr int WORD_SIGN = 0, WORD_STATE_ROUNDING = 1, WORD_PARAM_ROUNDING = 2;

// u = (word >> 8) * 2^-24, exact in fp32, in [0, 1).
SIGNOPT_HD float uniform_from_word(uint32_t w) { return (float)(w >> 8) * 5.9604644775390625e-08f; }

#if defined(SIGNOPT_PHILOX_AVX512)
// philox4x32_10 of element counters on AVX-512: N independent vectors of eight counters
// (lo32(idx), hi32(idx), 0, 0), one per 64-bit lane of idx[q], their rounds interleaved (each
// vector's rounds are a latency chain).  _mm512_mul_epu32 multiplies the low 32 bits of each
// lane into the full 64-bit product: hi = product >> 32, lo = its low half; lanes carry garbage
// in their high halves between rounds (lo words, xors), which neither the next multiplication
// (it reads the low halves only) nor a narrowing of the results (low halves) sees.
// w[j][q] is word j of vector q, j < WORDS (1: word 0, 3: words 0..2, 4: all).  Multiplications
// whose results are known are left out (the same values, so the same words):
//   * round 0 has c2 = c3 = 0: B*c2 = 0, so c0 <- c1 ^ k0 and c1 <- 0;
//   * SAME_HI (every lane of every vector has the same hi32(idx), the caller checks): c0 after
//     round 0 is that hi ^ k0 in every lane, so round 1's A*c0 is one scalar product;
//   * WORDS == 1: the last round's A*c0 feeds only words 2 and 3.
template <int N, int WORDS, bool SAME_HI>
inline void philox8(const uint32_t k0, const uint32_t k1, const __m512i (&idx)[N], __m512i (&w)[WORDS][N]) {
  static_assert(WORDS == 1 || WORDS == 3 || WORDS == 4, "philox8: 1, 3 or 4 words");
  const __m512i A = _mm512_set1_epi64(PHILOX_A), B = _mm512_set1_epi64(PHILOX_B);
  __m512i c0[N], c1[N], c2[N], c3[N];
  uint32_t a = k0, b = k1;
  // round 0
  const __m512i kb0 = _mm512_set1_epi64(b);
#pragma GCC unroll 4
  for (int q = 0; q < N; ++q) {
    const __m512i pa = _mm512_mul_epu32(A, idx[q]);
    c0[q] = _mm512_xor_si512(_mm512_srli_epi64(idx[q], 32), _mm512_set1_epi64(a));
    c1[q] = _mm512_setzero_si512();
    c2[q] = _mm512_xor_si512(_mm512_srli_epi64(pa, 32), kb0);
    c3[q] = pa;
  }
  a += PHILOX_W0;
  b += PHILOX_W1;
  int r = 1;
  if (SAME_HI) {  // round 1: c0 = s0 and c1 = 0 in every lane; A*s0 is a scalar product
    const uint32_t s0 = (uint32_t)((uint64_t)_mm_cvtsi128_si64(_mm512_castsi512_si128(idx[0])) >> 32) ^ k0;
    const uint64_t P = (uint64_t)PHILOX_A * (uint64_t)s0;
    const __m512i kb = _mm512_set1_epi64((long long)((uint32_t)(P >> 32) ^ b));
    const __m512i ka = _mm512_set1_epi64(a);
#pragma GCC unroll 4
    for (int q = 0; q < N; ++q) {
      const __m512i pb = _mm512_mul_epu32(B, c2[q]);
      c0[q] = _mm512_xor_si512(_mm512_srli_epi64(pb, 32), ka);
      c2[q] = _mm512_xor_si512(c3[q], kb);
      c1[q] = pb;
      c3[q] = _mm512_set1_epi64((long long)(uint32_t)P);
    }
    a += PHILOX_W0;
    b += PHILOX_W1;
    r = 2;
  }
  // the remaining rounds but the last
#pragma GCC unroll 8
  for (; r < 9; ++r) {
    const __m512i ka = _mm512_set1_epi64(a), kb = _mm512_set1_epi64(b);
#pragma GCC unroll 4
    for (int q = 0; q < N; ++q) {
      const __m512i pb = _mm512_mul_epu32(B, c2[q]);
      const __m512i pa = _mm512_mul_epu32(A, c0[q]);
      c0[q] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pb, 32), c1[q], ka, 0x96);
      c2[q] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa, 32), c3[q], kb, 0x96);
      c1[q] = pb;
      c3[q] = pa;
    }
    a += PHILOX_W0;
    b += PHILOX_W1;
  }
  // round 9
  const __m512i ka = _mm512_set1_epi64(a), kb = _mm512_set1_epi64(b);
#pragma GCC unroll 4
  for (int q = 0; q < N; ++q) {
    const __m512i pb = _mm512_mul_epu32(B, c2[q]);
    w[0][q] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pb, 32), c1[q], ka, 0x96);
    if constexpr (WORDS > 1) {
      const __m512i pa = _mm512_mul_epu32(A, c0[q]);
      w[1][q] = pb;
      w[2][q] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa, 32), c3[q], kb, 0x96);
      if constexpr (WORDS > 3) w[3][q] = pa;
    }
  }
}
#endif

}  // namespace signopt
