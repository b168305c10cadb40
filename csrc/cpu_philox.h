// Philox4x32-10 words of runs of element indices on the CPU: AVX-512 (eight counters a vector,
// one counter per 64-bit lane) where the compiler targets it, the scalar philox.h otherwise and
// for the tail.  Bit-identical to philox4x32_10 (signopt/philox.py).
//   In 64-bit lanes, _mm512_mul_epu32 multiplies the low 32 bits of each lane into the full
//   64-bit product: hi = product >> 32, lo = the low half.  Lanes carry garbage in their high
//   halves between rounds (lo words, xors), which neither the next multiplication (it reads the
//   low halves only) nor the final narrowing (vpmovqd) sees.
#pragma once
#include "philox.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace signopt {
namespace cpu {

#if defined(__AVX512F__)
// Words of the eight counters (lo32(idx), hi32(idx), 0, 0) of the 64-bit lanes of idx.
inline void philox8(const uint32_t k0, const uint32_t k1, const __m512i idx, __m512i& w0, __m512i& w1,
                    __m512i& w2, __m512i& w3) {
  const __m512i A = _mm512_set1_epi64(0xD2511F53ll), B = _mm512_set1_epi64(0xCD9E8D57ll);
  __m512i c0 = idx, c1 = _mm512_srli_epi64(idx, 32), c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  uint32_t a = k0, b = k1;
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const __m512i pb = _mm512_mul_epu32(B, c2);
    const __m512i pa = _mm512_mul_epu32(A, c0);
    const __m512i n0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pb, 32), c1, _mm512_set1_epi64(a), 0x96);
    const __m512i n2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa, 32), c3, _mm512_set1_epi64(b), 0x96);
    c1 = pb;
    c3 = pa;
    c0 = n0;
    c2 = n2;
    a += 0x9E3779B9u;
    b += 0xBB67AE85u;
  }
  w0 = c0;
  w1 = c1;
  w2 = c2;
  w3 = c3;
}

// Two independent groups of eight counters, interleaved.
inline void philox8x2(const uint32_t k0, const uint32_t k1, const __m512i ia, const __m512i ib, __m512i& a0,
                      __m512i& a1, __m512i& a2, __m512i& a3, __m512i& b0, __m512i& b1, __m512i& b2, __m512i& b3) {
  const __m512i A = _mm512_set1_epi64(0xD2511F53ll), B = _mm512_set1_epi64(0xCD9E8D57ll);
  __m512i x0 = ia, x1 = _mm512_srli_epi64(ia, 32), x2 = _mm512_setzero_si512(), x3 = _mm512_setzero_si512();
  __m512i y0 = ib, y1 = _mm512_srli_epi64(ib, 32), y2 = _mm512_setzero_si512(), y3 = _mm512_setzero_si512();
  uint32_t a = k0, b = k1;
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const __m512i ka = _mm512_set1_epi64(a), kb = _mm512_set1_epi64(b);
    const __m512i pbx = _mm512_mul_epu32(B, x2), pax = _mm512_mul_epu32(A, x0);
    const __m512i pby = _mm512_mul_epu32(B, y2), pay = _mm512_mul_epu32(A, y0);
    x0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pbx, 32), x1, ka, 0x96);
    x2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pax, 32), x3, kb, 0x96);
    y0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pby, 32), y1, ka, 0x96);
    y2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pay, 32), y3, kb, 0x96);
    x1 = pbx;
    x3 = pax;
    y1 = pby;
    y3 = pay;
    a += 0x9E3779B9u;
    b += 0xBB67AE85u;
  }
  a0 = x0, a1 = x1, a2 = x2, a3 = x3;
  b0 = y0, b1 = y1, b2 = y2, b3 = y3;
}
#endif

// Words 0..2 of elements base .. base+n-1 (counter (i mod 2^32, i >> 32, 0, 0)).
inline void philox_range(const uint32_t k0, const uint32_t k1, const uint64_t base, const int64_t n,
                         uint32_t* __restrict W0, uint32_t* __restrict W1, uint32_t* __restrict W2) {
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i lane8 = _mm512_set_epi64(15, 14, 13, 12, 11, 10, 9, 8);
  for (; j + 16 <= n; j += 16) {  // two independent vectors a step: the rounds are a latency chain
    __m512i a0, a1, a2, a3, b0, b1, b2, b3;
    const __m512i bs = _mm512_set1_epi64((long long)(base + (uint64_t)j));
    philox8x2(k0, k1, _mm512_add_epi64(bs, lane), _mm512_add_epi64(bs, lane8), a0, a1, a2, a3, b0, b1, b2, b3);
    _mm256_storeu_si256((__m256i*)(W0 + j), _mm512_cvtepi64_epi32(a0));
    _mm256_storeu_si256((__m256i*)(W1 + j), _mm512_cvtepi64_epi32(a1));
    _mm256_storeu_si256((__m256i*)(W2 + j), _mm512_cvtepi64_epi32(a2));
    _mm256_storeu_si256((__m256i*)(W0 + j + 8), _mm512_cvtepi64_epi32(b0));
    _mm256_storeu_si256((__m256i*)(W1 + j + 8), _mm512_cvtepi64_epi32(b1));
    _mm256_storeu_si256((__m256i*)(W2 + j + 8), _mm512_cvtepi64_epi32(b2));
  }
  for (; j + 8 <= n; j += 8) {
    __m512i w0, w1, w2, w3;
    philox8(k0, k1, _mm512_add_epi64(_mm512_set1_epi64((long long)(base + (uint64_t)j)), lane), w0, w1, w2, w3);
    _mm256_storeu_si256((__m256i*)(W0 + j), _mm512_cvtepi64_epi32(w0));
    _mm256_storeu_si256((__m256i*)(W1 + j), _mm512_cvtepi64_epi32(w1));
    _mm256_storeu_si256((__m256i*)(W2 + j), _mm512_cvtepi64_epi32(w2));
  }
#endif
  for (; j < n; ++j) {
    const PhiloxWords w = element_words(k0, k1, base + (uint64_t)j);
    W0[j] = w.w0;
    W1[j] = w.w1;
    W2[j] = w.w2;
  }
}

// All four words of arbitrary element indices (the philox test op): out[4*j + w].
inline void philox_indices(const uint32_t k0, const uint32_t k1, const int64_t* idx, const int64_t n, int64_t* out) {
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j + 8 <= n; j += 8) {
    __m512i w[4];
    philox8(k0, k1, _mm512_loadu_si512((const void*)(idx + j)), w[0], w[1], w[2], w[3]);
    alignas(64) uint32_t tmp[4][8];
    for (int q = 0; q < 4; ++q) _mm256_store_si256((__m256i*)tmp[q], _mm512_cvtepi64_epi32(w[q]));
    for (int l = 0; l < 8; ++l)
      for (int q = 0; q < 4; ++q) out[4 * (j + l) + q] = tmp[q][l];
  }
#endif
  for (; j < n; ++j) {
    const PhiloxWords w = element_words(k0, k1, (uint64_t)idx[j]);
    out[4 * j] = w.w0;
    out[4 * j + 1] = w.w1;
    out[4 * j + 2] = w.w2;
    out[4 * j + 3] = w.w3;
  }
}

}  // namespace cpu
}  // namespace signopt
