// The portable vector layer of the CPU loops: fixed-width vectors of the build target's native
// width (GCC/Clang vector extensions), so that the vector loops (cpu_vformats.h, cpu_vloops.h,
// cpu_philox.h) are written once and the compiler emits them for whatever -march the build has:
// AVX-512 (64-byte vectors: 16 fp32 lanes), AVX2 (32 bytes: 8 lanes), SSE2/SSE4, NEON, SVE at
// 128 bits, VSX... (16 bytes: 4 lanes).  Arithmetic, comparisons (lane masks of -1/0), selects
// (`mask ? a : b`), shifts, bit casts (`(vu)x`) and lane conversions (__builtin_convertvector)
// are the compiler's own, lane by lane with IEEE semantics: a vector loop computes exactly what
// the scalar loop of the same operations computes (no FMA: -ffp-contract=off).
//
// A few primitives have an ISA form because g++ 12 compiles the generic one badly (read in the
// assembly; timed by bench/vec_primitives.py against -DSIGNOPT_VEC_GENERIC=1 on the Xeon of
// bench/results/vec_primitives_cpu.txt, ns per element generic -> ISA, AVX2 | AVX-512):
//   * mul32 (Philox's 32x32->64-bit products): g++ lowers a 64-bit lane product to three
//     vpmuludq and shifts on AVX2, to vpmullq (3 uops) on AVX-512 and to scalar multiplies on
//     aarch64; vpmuludq / umull are one instruction.  Random bits v2 of a run: 2.18 -> 0.83 |
//     0.64 -> 0.35;
//   * the lane conversions between bytes / 16-bit values and 32-bit lanes (FP8 codes, bf16) and
//     max/min: g++ widens and narrows vectors of bytes lane by lane through general registers
//     (movsbl, vpinsrb, ...) on AVX2, AVX-512 and NEON alike (16-bit ones on NEON), and keeps a
//     compare and blend for `a > b ? a : b`.  FP8 block decode + encode: 1.54 -> 0.69 |
//     1.00 -> 0.52; bf16 load + store: 0.23 -> 0.21 | 0.21 -> 0.18;
//   * sqrt on AVX-512 (a lane loop over __builtin_sqrtf is split into halves and spilled): 0.40 ->
//     0.22 (AVX2: the generic form is as fast, 0.22, and is kept); NEON's and its fp64 widening
//     (fcvt and ins lane by lane) are read in the assembly only (tests/test_cpu_vec.py checks
//     that no probe function moves lanes one at a time).
//   * any (whether a lane mask has a set bit): g++ compiles the generic shuffle tree into one
//     masked broadcast per lane, and the FP8 block decoder's NaN/inf scan (a byte loop before)
//     runs it once per block: Lion bf16/E4M3 step 1.16 -> 0.96 ns/element, StoSignSGD fp32/E4M3
//     2.04 -> 1.70 (AMD EPYC Zen 4, AVX-512 build, one thread, 4M elements, in cache);
//   * fill_short (a tail's elements into a zero-padded vector buffer): a masked load stored as one
//     vector, where the generic zero fill and piecewise copy make the loop's next vector load
//     wait for store forwarding (~20 cycles per load): Lion on 300 tensors of 8 elements
//     (bench/step_overhead.py) 121 -> 109 us per step on the same machine.
// SIGNOPT_VEC_GENERIC=1 (a -D flag) compiles the generic forms everywhere (for measuring them).
#pragma once
#include <stdint.h>
#include <string.h>

#include "config.h"

#if !defined(SIGNOPT_VEC_GENERIC)
#define SIGNOPT_VEC_GENERIC 0
#endif
#if (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
#define SIGNOPT_VEC_X86 1
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define SIGNOPT_VEC_NEON 1
#include <arm_neon.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define SIGNOPT_VEC_BYTES 64
#elif defined(__AVX2__)
#define SIGNOPT_VEC_BYTES 32
#else
#define SIGNOPT_VEC_BYTES 16
#endif

#define SIGNOPT_VI inline __attribute__((always_inline))

namespace signopt {
namespace cpu {
namespace vec {

constexpr int BYTES = SIGNOPT_VEC_BYTES;
constexpr int W = BYTES / 4;  // fp32 lanes of a vector
constexpr int Q = BYTES / 8;  // 64-bit lanes

typedef float vf __attribute__((vector_size(BYTES)));
typedef int32_t vi __attribute__((vector_size(BYTES)));
typedef uint32_t vu __attribute__((vector_size(BYTES)));
typedef uint64_t vq __attribute__((vector_size(BYTES)));
typedef int64_t vqi __attribute__((vector_size(BYTES)));
typedef double vd __attribute__((vector_size(BYTES)));         // W/2 fp64 lanes
typedef float vfh __attribute__((vector_size(BYTES / 2)));     // W/2 fp32 lanes (half a vector)
typedef uint16_t vh __attribute__((vector_size(BYTES / 2)));   // W 16-bit lanes
typedef uint8_t vb __attribute__((vector_size(BYTES / 4)));    // W 8-bit lanes
typedef int8_t vsb __attribute__((vector_size(BYTES / 4)));

// A short name of the target, for messages and tests (signopt::vector_isa).
inline const char* isa_name() {
#if SIGNOPT_VEC_GENERIC
  constexpr const char* kind = "generic";
#elif defined(SIGNOPT_VEC_X86)
#if defined(__SSE4_1__)
  constexpr const char* sse = "sse4";
#else
  constexpr const char* sse = "sse2";
#endif
  constexpr const char* kind = BYTES == 64 ? "avx512" : (BYTES == 32 ? "avx2" : sse);
#elif defined(SIGNOPT_VEC_NEON)
  constexpr const char* kind = "neon";
#else
  constexpr const char* kind = "generic";
#endif
  return kind;
}

// ---------------------------------------------------------------- memory
template <class V, class T>
SIGNOPT_VI V loadu(const T* p) {
  V v;
  memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class T>
SIGNOPT_VI void storeu(T* p, const V v) {
  memcpy(p, &v, sizeof(V));
}
// The first n elements of s into d, for n shorter than a vector (the loops' tails): pieces of
// constant size, so that no library call is made (a memcpy of a variable size is one).
template <class T>
SIGNOPT_VI void copy_short(T* d, const T* s, const int64_t n) {
  static_assert(sizeof(T) * W <= 128, "copy_short: a tail is at most 127 bytes");
  char* D = (char*)d;
  const char* S = (const char*)s;
  const size_t b = sizeof(T) * (size_t)n;
  if (b & 64) { memcpy(D, S, 64); D += 64; S += 64; }
  if (b & 32) { memcpy(D, S, 32); D += 32; S += 32; }
  if (b & 16) { memcpy(D, S, 16); D += 16; S += 16; }
  if (b & 8) { memcpy(D, S, 8); D += 8; S += 8; }
  if (b & 4) { memcpy(D, S, 4); D += 4; S += 4; }
  if (b & 2) { memcpy(D, S, 2); D += 2; S += 2; }
  if (b & 1) *D = *S;
}

// d[0, W) = the first n (< W) elements of s, then zeros, written by one vector store, so that the
// vector load of d that follows is forwarded from it (a load over several smaller stores waits
// for them to reach the cache: a zero fill then a copy_short costs ~20 cycles per load).  A masked
// load where the ISA has one (it reads no element past n); else the fill and the copy.
template <class T>
SIGNOPT_VI void fill_short(T* d, const T* s, const int64_t n) {
#if !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 64
  const __mmask16 k = (__mmask16)((1u << n) - 1u);
  if constexpr (sizeof(T) == 4) {
    _mm512_storeu_si512((void*)d, _mm512_maskz_loadu_epi32(k, (const void*)s));
  } else if constexpr (sizeof(T) == 2) {
    _mm256_storeu_si256((__m256i*)d, _mm256_maskz_loadu_epi16(k, (const void*)s));
  } else {
    static_assert(sizeof(T) == 1, "fill_short: 1-, 2- or 4-byte elements");
    _mm_storeu_si128((__m128i*)d, _mm_maskz_loadu_epi8(k, (const void*)s));
  }
#else
#if !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 32
  if constexpr (sizeof(T) == 4) {
    const __m256i k = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_storeu_si256((__m256i*)d, _mm256_maskload_epi32((const int*)s, k));
    return;
  }
#endif
  memset((void*)d, 0, sizeof(T) * W);
  copy_short(d, s, n);
#endif
}

// ---------------------------------------------------------------- lanes
SIGNOPT_VI vf splat(const float x) { return vf{} + x; }
SIGNOPT_VI vu splatu(const uint32_t x) { return vu{} + x; }
SIGNOPT_VI vi splati(const int32_t x) { return vi{} + x; }
SIGNOPT_VI vq splatq(const uint64_t x) { return vq{} + x; }

// Lane i = i (0 .. W-1) / 64-bit lane i = i.
SIGNOPT_VI vq iotaq() {
  vq r;
  for (int i = 0; i < Q; ++i) r[i] = (uint64_t)i;
  return r;
}

// Bit casts.
SIGNOPT_VI vu bits(const vf x) { return (vu)x; }
SIGNOPT_VI vf fbits(const vu x) { return (vf)x; }

// Selects on a lane mask (comparisons give -1 where true, 0 where false).
SIGNOPT_VI vf sel(const vi m, const vf a, const vf b) { return m ? a : b; }
SIGNOPT_VI vu selu(const vi m, const vu a, const vu b) { return m ? a : b; }

// a > b ? a : b and a < b ? a : b lane by lane (b where unordered), and the signed integer max:
// x86's maxps/minps/pmaxsd are exactly these (g++ keeps the compare and blend of the select).
#if !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 64
SIGNOPT_VI vf vmax(const vf a, const vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
SIGNOPT_VI vf vmin(const vf a, const vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
SIGNOPT_VI vi vmaxi(const vi a, const vi b) { return (vi)_mm512_max_epi32((__m512i)a, (__m512i)b); }
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 32
SIGNOPT_VI vf vmax(const vf a, const vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
SIGNOPT_VI vf vmin(const vf a, const vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
SIGNOPT_VI vi vmaxi(const vi a, const vi b) { return (vi)_mm256_max_epi32((__m256i)a, (__m256i)b); }
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && defined(__SSE4_1__)
SIGNOPT_VI vf vmax(const vf a, const vf b) { return (vf)_mm_max_ps((__m128)a, (__m128)b); }
SIGNOPT_VI vf vmin(const vf a, const vf b) { return (vf)_mm_min_ps((__m128)a, (__m128)b); }
SIGNOPT_VI vi vmaxi(const vi a, const vi b) { return (vi)_mm_max_epi32((__m128i)a, (__m128i)b); }
#else
SIGNOPT_VI vf vmax(const vf a, const vf b) { return a > b ? a : b; }
SIGNOPT_VI vf vmin(const vf a, const vf b) { return a < b ? a : b; }
SIGNOPT_VI vi vmaxi(const vi a, const vi b) { return a > b ? a : b; }
#endif

// Integer max of lanes known to be < 2^31 (signed compare: AVX2 has no unsigned one).
SIGNOPT_VI vu maxu31(const vu a, const vu b) { return (vu)vmaxi((vi)a, (vi)b); }

// The largest lane of a (lanes < 2^31).
SIGNOPT_VI uint32_t hmax31(const vu a) {
  uint32_t m = a[0];
  for (int i = 1; i < W; ++i) m = a[i] > m ? a[i] : m;
  return m;
}
SIGNOPT_VI int64_t hsum(const vi a) {
  int64_t s = 0;
  for (int i = 0; i < W; ++i) s += a[i];
  return s;
}
// Whether any bit of m is set (g++ compiles a shuffle tree of lanes into one masked broadcast per
// lane: a test instruction where the ISA has one, else an OR of the 64-bit lanes).
SIGNOPT_VI bool any(const vi m) {
#if !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 64
  return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 32
  return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_NEON)
  return vmaxvq_u32((uint32x4_t)m) != 0;
#else
  const vq x = (vq)m;
  uint64_t r = 0;
  for (int i = 0; i < Q; ++i) r |= x[i];
  return r != 0;
#endif
}

// fp32 of a lane integer (|x| < 2^31: exact when < 2^24).
SIGNOPT_VI vf to_float(const vi x) { return __builtin_convertvector(x, vf); }
// Truncation toward 0 (x in int32 range).
SIGNOPT_VI vi trunc_int(const vf x) { return __builtin_convertvector(x, vi); }

// The two halves of a as fp64 lanes (exact).
SIGNOPT_VI void to_double(const vf a, vd& lo, vd& hi) {
#if !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_NEON)
  // g++ converts 2-lane halves lane by lane (fcvt, ins); fcvtl/fcvtl2 convert them whole
  lo = (vd)vcvt_f64_f32(vget_low_f32((float32x4_t)a));
  hi = (vd)vcvt_high_f64_f32((float32x4_t)a);
  return;
#endif
  vfh l, h;
  memcpy(&l, &a, sizeof(vfh));
  memcpy(&h, (const char*)&a + sizeof(vfh), sizeof(vfh));
  lo = __builtin_convertvector(l, vd);
  hi = __builtin_convertvector(h, vd);
}

// ---------------------------------------------------------------- primitives with an ISA form
// (a mod 2^32) * b, the full 64-bit product, per 64-bit lane (the high halves of a are ignored).
SIGNOPT_VI vq mul32(const vq a, const uint32_t b) {
#if !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 64
  return (vq)_mm512_mul_epu32((__m512i)a, _mm512_set1_epi64((long long)b));
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 32
  return (vq)_mm256_mul_epu32((__m256i)a, _mm256_set1_epi64x((long long)b));
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86)
  return (vq)_mm_mul_epu32((__m128i)a, _mm_set1_epi64x((long long)b));
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_NEON)
  return (vq)vmull_n_u32(vmovn_u64((uint64x2_t)a), b);
#else
  return (a & 0xFFFFFFFFull) * (uint64_t)b;
#endif
}

// Lane conversions between bytes / 16-bit values in memory and 32-bit lanes:
//   load_u8 / load_s8: W bytes zero- / sign-extended; store_u8: lanes (each < 256) as W bytes;
//   load_u16: W 16-bit values zero-extended; store_u16: lanes (each < 65536) as 16-bit values.
#if !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 64
SIGNOPT_VI vu load_u8(const uint8_t* p) { return (vu)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)); }
SIGNOPT_VI vi load_s8(const uint8_t* p) { return (vi)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)); }
SIGNOPT_VI void store_u8(uint8_t* p, const vu x) { _mm_storeu_si128((__m128i*)p, _mm512_cvtepi32_epi8((__m512i)x)); }
SIGNOPT_VI vu load_u16(const uint16_t* p) {
  return (vu)_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
}
SIGNOPT_VI void store_u16(uint16_t* p, const vu x) {
  _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16((__m512i)x));
}
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 32
SIGNOPT_VI vu load_u8(const uint8_t* p) { return (vu)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
SIGNOPT_VI vi load_s8(const uint8_t* p) { return (vi)_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
SIGNOPT_VI void store_u8(uint8_t* p, const vu x) {
  const __m256i v = (__m256i)x;
  const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  _mm_storel_epi64((__m128i*)p, _mm_packus_epi16(w16, w16));
}
SIGNOPT_VI vu load_u16(const uint16_t* p) { return (vu)_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)); }
SIGNOPT_VI void store_u16(uint16_t* p, const vu x) {
  const __m256i v = (__m256i)x;
  _mm_storeu_si128((__m128i*)p, _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && defined(__SSE4_1__)
SIGNOPT_VI vu load_u8(const uint8_t* p) {
  int32_t b;
  memcpy(&b, p, 4);
  return (vu)_mm_cvtepu8_epi32(_mm_cvtsi32_si128(b));
}
SIGNOPT_VI vi load_s8(const uint8_t* p) {
  int32_t b;
  memcpy(&b, p, 4);
  return (vi)_mm_cvtepi8_epi32(_mm_cvtsi32_si128(b));
}
SIGNOPT_VI void store_u8(uint8_t* p, const vu x) {
  const __m128i w16 = _mm_packus_epi32((__m128i)x, (__m128i)x);
  const int32_t b = _mm_cvtsi128_si32(_mm_packus_epi16(w16, w16));
  memcpy(p, &b, 4);
}
SIGNOPT_VI vu load_u16(const uint16_t* p) { return (vu)_mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i*)p)); }
SIGNOPT_VI void store_u16(uint16_t* p, const vu x) {
  _mm_storel_epi64((__m128i*)p, _mm_packus_epi32((__m128i)x, (__m128i)x));
}
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_NEON)
SIGNOPT_VI vu load_u8(const uint8_t* p) {
  uint32_t b;
  memcpy(&b, p, 4);
  return (vu)vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(b)))));
}
SIGNOPT_VI vi load_s8(const uint8_t* p) {
  uint32_t b;
  memcpy(&b, p, 4);
  return (vi)vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(b)))));
}
SIGNOPT_VI void store_u8(uint8_t* p, const vu x) {
  const uint16x4_t h = vmovn_u32((uint32x4_t)x);
  const uint8x8_t b = vmovn_u16(vcombine_u16(h, h));
  const uint32_t w = vget_lane_u32(vreinterpret_u32_u8(b), 0);
  memcpy(p, &w, 4);
}
SIGNOPT_VI vu load_u16(const uint16_t* p) { return (vu)vmovl_u16(vld1_u16(p)); }
SIGNOPT_VI void store_u16(uint16_t* p, const vu x) { vst1_u16(p, vmovn_u32((uint32x4_t)x)); }
#else
SIGNOPT_VI vu load_u8(const uint8_t* p) { return __builtin_convertvector(loadu<vb>(p), vu); }
SIGNOPT_VI vi load_s8(const uint8_t* p) { return __builtin_convertvector(loadu<vsb>(p), vi); }
SIGNOPT_VI void store_u8(uint8_t* p, const vu x) { storeu(p, __builtin_convertvector(x, vb)); }
SIGNOPT_VI vu load_u16(const uint16_t* p) { return __builtin_convertvector(loadu<vh>(p), vu); }
SIGNOPT_VI void store_u16(uint16_t* p, const vu x) { storeu(p, __builtin_convertvector(x, vh)); }
#endif

// Correctly rounded square root (as sqrtf).
SIGNOPT_VI vf vsqrt(const vf x) {
#if !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_X86) && SIGNOPT_VEC_BYTES == 64
  return (vf)_mm512_sqrt_ps((__m512)x);
#elif !SIGNOPT_VEC_GENERIC && defined(SIGNOPT_VEC_NEON)
  return (vf)vsqrtq_f32((float32x4_t)x);
#else
  vf r;
  for (int i = 0; i < W; ++i) r[i] = __builtin_sqrtf(x[i]);
  return r;
#endif
}

// ---------------------------------------------------------------- the floating-point environment
// The vector loops compute what the scalar loops compute under the same floating-point
// environment; the FP8 decode relies on fp32 subnormals (no flush to zero) and the rounding of
// the lane conversions on round-to-nearest.  env_ok: that environment (x86: MXCSR as at process
// start; elsewhere the default is assumed).
inline bool env_ok() {
#if defined(SIGNOPT_VEC_X86)
  return (_mm_getcsr() & 0xE040u) == 0u;  // round to nearest, no DAZ/FTZ
#else
  return true;
#endif
}

}  // namespace vec
}  // namespace cpu
}  // namespace signopt
