// Philox4x32-10 exactly as signopt/philox.py and Triton's tl.philox compute it: the one scalar
// implementation (CPU and CUDA); the CPU's vector form of runs of elements is cpu_philox.h.
//   round:  (c0, c1, c2, c3) <- (hi(B*c2) ^ c1 ^ k0, lo(B*c2), hi(A*c0) ^ c3 ^ k1, lo(A*c0))
//           k0 += 0x9E3779B9, k1 += 0xBB67AE85            (A = 0xD2511F53, B = 0xCD9E8D57)
// Random bits v2 (element_word): with the per-(step, tensor) key, the call on counter
// (j mod 2^32, j >> 32, purpose, 0) serves the four elements i = 4j .. 4j+3 of the full tensor,
// element i taking word i & 3; the purposes are declared (signopt.declaration.RANDOM_PURPOSES,
// PURPOSE_* in the generated header).
#pragma once
#include "config.h"

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
  const uint32_t lane = (uint32_t)(i & 3);
  return lane == 0 ? w.w0 : (lane == 1 ? w.w1 : (lane == 2 ? w.w2 : w.w3));
}

// The words for `purpose` of the N consecutive elements i0 .. i0+N-1 (N a multiple of 4), each
// element_word(k0, k1, i, purpose).  The indices are spelled 4j + l, so once inlined the four
// element_word calls of one j are one Philox call: N/4 calls where i0 is a multiple of 4,
// N/4 + 1 otherwise (the words then shifted by i0 & 3; a branch uniform over a run).
template <int N>
SIGNOPT_HD void run_words(uint32_t k0, uint32_t k1, uint64_t i0, uint32_t purpose, uint32_t (&w)[N]) {
  static_assert(N % 4 == 0, "run_words: whole Philox calls");
  const uint64_t j0 = i0 >> 2;
  const int a = (int)(i0 & 3);
  if (a == 0) {
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 64
#endif
    for (int k = 0; k < N; ++k) w[k] = element_word(k0, k1, ((j0 + (k >> 2)) << 2) | (uint64_t)(k & 3), purpose);
  } else {
    uint32_t f[N + 4];
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 64
#endif
    for (int k = 0; k < N + 4; ++k) f[k] = element_word(k0, k1, ((j0 + (k >> 2)) << 2) | (uint64_t)(k & 3), purpose);
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 64
#endif
    for (int k = 0; k < N; ++k) w[k] = a == 1 ? f[k + 1] : (a == 2 ? f[k + 2] : f[k + 3]);
  }
}

// u = (word >> 8) * 2^-24, exact in fp32, in [0, 1).
SIGNOPT_HD float uniform_from_word(uint32_t w) { return (float)(w >> 8) * 5.9604644775390625e-08f; }

}  // namespace signopt
