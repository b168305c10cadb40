// Philox words of runs of element indices on the CPU, from philox.h: its AVX-512 form (philox8)
// where the compiler targets AVX-512F, its scalar form otherwise and for the tails.
// Bit-identical to philox4x32_10 (signopt/philox.py).
#pragma once
#include "philox.h"

namespace signopt {
namespace cpu {

#if defined(SIGNOPT_PHILOX_AVX512)
// Word 0 of the 32 counters base .. base+31 (four vectors of eight), where all 32 share
// hi32(base) (philox8's SAME_HI; the caller checks); out0/out1: j = 0..15 and 16..31 in 32-bit lanes.
inline void philox32_w0(const uint32_t k0, const uint32_t k1, const uint64_t base, __m512i& out0, __m512i& out1) {
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i bs = _mm512_set1_epi64((long long)base);
  const __m512i idx[4] = {_mm512_add_epi64(bs, lane), _mm512_add_epi64(bs, _mm512_add_epi64(lane, _mm512_set1_epi64(8))),
                          _mm512_add_epi64(bs, _mm512_add_epi64(lane, _mm512_set1_epi64(16))),
                          _mm512_add_epi64(bs, _mm512_add_epi64(lane, _mm512_set1_epi64(24)))};
  __m512i w[1][4];
  philox8<4, 1, true>(k0, k1, idx, w);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  out0 = _mm512_permutex2var_epi32(w[0][0], even, w[0][1]);
  out1 = _mm512_permutex2var_epi32(w[0][2], even, w[0][3]);
}

// Word 0 of counters base .. base+31, any base (the scalar form where the 32 counters cross a
// multiple of 2^32).
inline void philox32_w0_any(const uint32_t k0, const uint32_t k1, const uint64_t base, __m512i& out0,
                            __m512i& out1) {
  if ((base >> 32) == ((base + 31) >> 32)) {
    philox32_w0(k0, k1, base, out0, out1);
    return;
  }
  alignas(64) uint32_t w[32];
  for (int j = 0; j < 32; ++j) w[j] = element_words(k0, k1, base + (uint64_t)j).w0;
  out0 = _mm512_load_si512((const void*)w);
  out1 = _mm512_load_si512((const void*)(w + 16));
}

// Word 0 only of elements base .. base+n-1 (the stochastic sign's bits), 32 a step.
inline void philox_w0_range_avx512(const uint32_t k0, const uint32_t k1, const uint64_t base, const int64_t n,
                                   uint32_t* __restrict W0) {
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    __m512i a, b;
    philox32_w0_any(k0, k1, base + (uint64_t)j, a, b);
    _mm512_storeu_si512((void*)(W0 + j), a);
    _mm512_storeu_si512((void*)(W0 + j + 16), b);
  }
  if (j < n) {
    alignas(64) uint32_t w[32];
    __m512i a, b;
    philox32_w0_any(k0, k1, base + (uint64_t)j, a, b);
    _mm512_store_si512((void*)w, a);
    _mm512_store_si512((void*)(w + 16), b);
    for (int64_t i = 0; j + i < n; ++i) W0[j + i] = w[i];
  }
}
#endif

// Words 0..2 of elements base .. base+n-1 (counter (i mod 2^32, i >> 32, 0, 0)).
inline void philox_range(const uint32_t k0, const uint32_t k1, const uint64_t base, const int64_t n,
                         uint32_t* __restrict W0, uint32_t* __restrict W1, uint32_t* __restrict W2) {
  int64_t j = 0;
#if defined(SIGNOPT_PHILOX_AVX512)
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i lane8 = _mm512_set_epi64(15, 14, 13, 12, 11, 10, 9, 8);
  for (; j + 16 <= n; j += 16) {  // two independent vectors a step: the rounds are a latency chain
    const __m512i bs = _mm512_set1_epi64((long long)(base + (uint64_t)j));
    const __m512i idx[2] = {_mm512_add_epi64(bs, lane), _mm512_add_epi64(bs, lane8)};
    __m512i w[3][2];
    philox8<2, 3, false>(k0, k1, idx, w);
    for (int q = 0; q < 2; ++q) {
      _mm256_storeu_si256((__m256i*)(W0 + j + 8 * q), _mm512_cvtepi64_epi32(w[0][q]));
      _mm256_storeu_si256((__m256i*)(W1 + j + 8 * q), _mm512_cvtepi64_epi32(w[1][q]));
      _mm256_storeu_si256((__m256i*)(W2 + j + 8 * q), _mm512_cvtepi64_epi32(w[2][q]));
    }
  }
  for (; j + 8 <= n; j += 8) {
    const __m512i idx[1] = {_mm512_add_epi64(_mm512_set1_epi64((long long)(base + (uint64_t)j)), lane)};
    __m512i w[3][1];
    philox8<1, 3, false>(k0, k1, idx, w);
    _mm256_storeu_si256((__m256i*)(W0 + j), _mm512_cvtepi64_epi32(w[0][0]));
    _mm256_storeu_si256((__m256i*)(W1 + j), _mm512_cvtepi64_epi32(w[1][0]));
    _mm256_storeu_si256((__m256i*)(W2 + j), _mm512_cvtepi64_epi32(w[2][0]));
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
#if defined(SIGNOPT_PHILOX_AVX512)
  for (; j + 8 <= n; j += 8) {
    const __m512i iv[1] = {_mm512_loadu_si512((const void*)(idx + j))};
    __m512i w[4][1];
    philox8<1, 4, false>(k0, k1, iv, w);
    alignas(64) uint32_t tmp[4][8];
    for (int q = 0; q < 4; ++q) _mm256_store_si256((__m256i*)tmp[q], _mm512_cvtepi64_epi32(w[q][0]));
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
