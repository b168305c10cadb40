// Shared configuration of the header-only rule core: host/device qualifiers and bit casts.
// Included by the CPU kernels (g++) and the CUDA kernels (nvcc, no torch headers).
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define SIGNOPT_HD __host__ __device__ __forceinline__
#else
#define SIGNOPT_HD inline __attribute__((always_inline))
#endif

namespace signopt {

// fp32 <-> uint32 bit patterns (no conversion).
SIGNOPT_HD uint32_t f2u(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  return u;
#endif
}

SIGNOPT_HD float u2f(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  __builtin_memcpy(&x, &u, 4);
  return x;
#endif
}

// |x| <= FLT_MAX: false for NaN and +-inf (integer test, vectorises everywhere).
SIGNOPT_HD bool finite32(float x) { return (f2u(x) & 0x7F800000u) != 0x7F800000u; }

}  // namespace signopt
