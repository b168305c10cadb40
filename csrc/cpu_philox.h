// Random bits v2 of runs of elements on the CPU (philox.h states them): for a purpose P, the call
// on counter (j mod 2^32, j >> 32, P, 0) serves the elements 4j .. 4j+3, element i taking word
// i & 3.  A run of n consecutive elements starting at any index makes each of its calls once:
// the vector form (philox_calls: Q calls a vector, their rounds interleaved over NQ vectors) on
// the portable vector layer, and the scalar form element_word (the oracle: SIGNOPT_CPU_SIMD=0).
#pragma once
#include <algorithm>
#include <utility>

#include "cpu_vec.h"
#include "philox.h"

namespace signopt {
namespace cpu {

namespace vec {

// Vectors of calls whose rounds interleave (each vector's rounds are a latency chain); 16 ymm
// registers hold two vectors' counters without spilling, 32 zmm four.
constexpr int NQ = BYTES == 64 ? 4 : 2;
constexpr int CALLS = NQ * Q;          // calls of one group
constexpr int GROUP = 4 * CALLS;       // elements of one group
// A run's buffer (philox_run) holds n + WORD_SLACK words.
constexpr int64_t WORD_SLACK = GROUP + 4;

// The high 32-bit half of each 64-bit lane moved to its low half (and the low one up, for
// lanes whose high halves are don't-care): a shuffle, which issues on another port than the
// products (a shift would compete with them).
template <size_t... I>
SIGNOPT_VI vq swap_halves(const vq x, std::index_sequence<I...>) {
  return (vq)__builtin_shufflevector((vu)x, (vu)x, (int)(I ^ 1)...);
}
SIGNOPT_VI vq hi32(const vq x) { return swap_halves(x, std::make_index_sequence<W>{}); }

// Philox4x32-10 of NQ vectors of Q counters (lo32(j), hi32(j), purpose, 0), j in the 64-bit lanes
// of j[q]; c[0..3][q]: the four words, in the low halves of the lanes.  mul32 multiplies the low
// halves into the full 64-bit product (hi: its high half, moved down by hi32; lo: its low half);
// lanes carry garbage in their high halves between rounds (lo words, xors, hi32's swap), which
// neither the next multiplication (it reads the low halves) nor the results (low halves) see.  Products whose
// result is known are scalars: round 0's B*purpose, and with SAME_HI (every lane of every vector
// has the same hi32(j): the caller checks) round 1's A*c0.  The same words as philox4x32_10.
template <int N, bool SAME_HI>
SIGNOPT_VI void philox_calls(const uint32_t k0, const uint32_t k1, const uint32_t purpose, const vq (&j)[N],
                             vq (&c)[4][N]) {
  uint32_t a = k0, b = k1;
  // round 0: c2 = purpose, c3 = 0
  const uint64_t pb0 = (uint64_t)PHILOX_B * (uint64_t)purpose;
  const uint32_t x0 = (uint32_t)(pb0 >> 32) ^ a;
#pragma GCC unroll 4
  for (int q = 0; q < N; ++q) {
    const vq pa = mul32(j[q], PHILOX_A);
    c[0][q] = hi32(j[q]) ^ (uint64_t)x0;
    c[1][q] = splatq((uint32_t)pb0);
    c[2][q] = hi32(pa) ^ (uint64_t)b;
    c[3][q] = pa;
  }
  a += PHILOX_W0;
  b += PHILOX_W1;
  int r = 1;
  if (SAME_HI) {  // round 1: c0 is the same in every lane, A*c0 a scalar product
    const uint32_t s0 = (uint32_t)c[0][0][0];
    const uint64_t P = (uint64_t)PHILOX_A * (uint64_t)s0;
    const uint32_t xa = (uint32_t)pb0 ^ a, xb = (uint32_t)(P >> 32) ^ b;
#pragma GCC unroll 4
    for (int q = 0; q < N; ++q) {
      const vq pb = mul32(c[2][q], PHILOX_B);
      c[0][q] = hi32(pb) ^ (uint64_t)xa;
      c[2][q] = c[3][q] ^ (uint64_t)xb;
      c[1][q] = pb;
      c[3][q] = splatq((uint32_t)P);
    }
    a += PHILOX_W0;
    b += PHILOX_W1;
    r = 2;
  }
#pragma GCC unroll 9
  for (; r < 10; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < N; ++q) {
      const vq pb = mul32(c[2][q], PHILOX_B);
      const vq pa = mul32(c[0][q], PHILOX_A);
      c[0][q] = hi32(pb) ^ c[1][q] ^ (uint64_t)a;
      c[2][q] = hi32(pa) ^ c[3][q] ^ (uint64_t)b;
      c[1][q] = pb;
      c[3][q] = pa;
    }
    a += PHILOX_W0;
    b += PHILOX_W1;
  }
}

// The 4 words of each call of one vector in element order: calls j (lanes 0 .. Q-1) -> elements
// 4j .. 4j+3, as 2Q 32-bit words in lo (calls 0 .. Q/2-1) and hi (calls Q/2 .. Q-1).
template <size_t... I>
SIGNOPT_VI vq interleave_lo(const vq a, const vq b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I & 1) ? Q + (int)(I >> 1) : (int)(I >> 1))...);
}
template <size_t... I>
SIGNOPT_VI vq interleave_hi(const vq a, const vq b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, ((I & 1) ? Q + Q / 2 + (int)(I >> 1) : Q / 2 + (int)(I >> 1))...);
}
SIGNOPT_VI void store_call_words(uint32_t* out, const vq w0, const vq w1, const vq w2, const vq w3) {
  const vq e01 = (w0 & 0xFFFFFFFFull) | (w1 << 32);  // elements 4j, 4j+1 of lane j
  const vq e23 = (w2 & 0xFFFFFFFFull) | (w3 << 32);  // elements 4j+2, 4j+3
  storeu(out, interleave_lo(e01, e23, std::make_index_sequence<Q>{}));
  storeu(out + 2 * Q, interleave_hi(e01, e23, std::make_index_sequence<Q>{}));
}

// The words of the GROUP elements of calls j0 .. j0+CALLS-1 into out[0 .. GROUP).
SIGNOPT_VI void philox_group(const uint32_t k0, const uint32_t k1, const uint32_t purpose, const uint64_t j0,
                             uint32_t* out) {
  vq j[NQ], c[4][NQ];
  const vq lane = iotaq();
#pragma GCC unroll 4
  for (int q = 0; q < NQ; ++q) j[q] = lane + (j0 + (uint64_t)(q * Q));
  if ((j0 >> 32) == ((j0 + CALLS - 1) >> 32)) {
    philox_calls<NQ, true>(k0, k1, purpose, j, c);
  } else {
    philox_calls<NQ, false>(k0, k1, purpose, j, c);
  }
#pragma GCC unroll 4
  for (int q = 0; q < NQ; ++q) store_call_words(out + 4 * Q * q, c[0][q], c[1][q], c[2][q], c[3][q]);
}

// Words of elements base .. base+n-1 for purpose: writes whole groups of calls into buf (which
// holds n + WORD_SLACK words) and returns where element base's word is (buf + base % 4).
inline const uint32_t* philox_run(const uint32_t k0, const uint32_t k1, const uint32_t purpose, const uint64_t base,
                                  const int64_t n, uint32_t* buf) {
  const uint64_t j0 = base >> 2;
  const int64_t calls = n > 0 ? (int64_t)(((base + (uint64_t)n - 1) >> 2) - j0 + 1) : 0;
  for (int64_t c = 0; c < calls; c += CALLS) philox_group(k0, k1, purpose, j0 + (uint64_t)c, buf + 4 * c);
  return buf + (base & 3);
}

}  // namespace vec

// Words of elements base .. base+n-1 for purpose into out[0 .. n): the vector form (simd) or
// element_word.
inline void philox_words(const uint32_t k0, const uint32_t k1, const uint32_t purpose, const uint64_t base,
                         const int64_t n, uint32_t* __restrict out, const bool simd) {
  if (!simd) {
    for (int64_t j = 0; j < n; ++j) out[j] = element_word(k0, k1, base + (uint64_t)j, purpose);
    return;
  }
  constexpr int64_t CHUNK = 8 * vec::GROUP;
  alignas(64) uint32_t buf[CHUNK + vec::WORD_SLACK];
  for (int64_t a = 0; a < n;) {
    // pieces that start on a call boundary after the first, CHUNK elements at most
    const int64_t len = std::min<int64_t>(n - a, CHUNK - (int64_t)((base + (uint64_t)a) & 3));
    const uint32_t* w = vec::philox_run(k0, k1, purpose, base + (uint64_t)a, len, buf);
    memcpy(out + a, w, sizeof(uint32_t) * (size_t)len);
    a += len;
  }
}

// All four words of the calls on counters (idx mod 2^32, idx >> 32, 0, 0) for arbitrary idx
// (the philox test op): out[4*j + w].
inline void philox_indices(const uint32_t k0, const uint32_t k1, const int64_t* idx, const int64_t n, int64_t* out) {
  int64_t j = 0;
  for (; j + vec::Q <= n; j += vec::Q) {
    vec::vq iv[1], c[4][1];
    iv[0] = vec::loadu<vec::vq>(idx + j);
    vec::philox_calls<1, false>(k0, k1, 0u, iv, c);
    for (int l = 0; l < vec::Q; ++l)
      for (int w = 0; w < 4; ++w) out[4 * (j + l) + w] = (int64_t)(uint32_t)c[w][0][l];
  }
  for (; j < n; ++j) {
    const PhiloxWords w = philox4x32_10(k0, k1, (uint32_t)idx[j], (uint32_t)((uint64_t)idx[j] >> 32), 0u, 0u);
    out[4 * j] = w.w0;
    out[4 * j + 1] = w.w1;
    out[4 * j + 2] = w.w2;
    out[4 * j + 3] = w.w3;
  }
}

}  // namespace cpu
}  // namespace signopt
