// Philox4x32-10 exactly as signopt/philox.py and Triton's tl.philox compute it.
//   round:  (c0, c1, c2, c3) <- (hi(B*c2) ^ c1 ^ k0, lo(B*c2), hi(A*c0) ^ c3 ^ k1, lo(A*c0))
//           k0 += 0x9E3779B9, k1 += 0xBB67AE85            (A = 0xD2511F53, B = 0xCD9E8D57)
// Element i of a tensor uses counter (i mod 2^32, i >> 32, 0, 0) with its per-(step, tensor)
// key; word 0 drives the stochastic sign, word 1 state rounding, word 2 parameter rounding.
#pragma once
#include "config.h"

namespace signopt {

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
    const uint64_t pb = (uint64_t)0xCD9E8D57u * (uint64_t)c2;
    const uint64_t pa = (uint64_t)0xD2511F53u * (uint64_t)c0;
    const uint32_t n0 = (uint32_t)(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
    c1 = (uint32_t)pb;
    c3 = (uint32_t)pa;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return PhiloxWords{c0, c1, c2, c3};
}

// The four words of element index i (full-tensor flat index).
SIGNOPT_HD PhiloxWords element_words(uint32_t k0, uint32_t k1, uint64_t i) {
  return philox4x32_10(k0, k1, (uint32_t)i, (uint32_t)(i >> 32), 0u, 0u);
}

// u = (word >> 8) * 2^-24, exact in fp32, in [0, 1).
SIGNOPT_HD float uniform_from_word(uint32_t w) { return (float)(w >> 8) * 5.9604644775390625e-08f; }

}  // namespace signopt
