// Times the vector layer's primitives that have an ISA form (csrc/cpu_vec.h) in loops that are
// mostly that primitive, so that one build with the ISA forms and one with -DSIGNOPT_VEC_GENERIC=1
// (the generic forms everywhere) compare them.  bench/vec_primitives.py compiles and runs both.
//   philox     random bits v2 of a run (vec::philox_run): mul32
//   fp8 codec  FP8 E4M3 block decode (short and long form) and nearest encode: byte conversions,
//              max/min
//   bf16 codec bf16 load and nearest store: 16-bit conversions
//   sqrt       vsqrt
// Prints one line per loop: "<name> <ns per element>" (the best of many repetitions; L1-resident).
#include <stdio.h>

#include <chrono>
#include <vector>

#include "cpu_vloops.h"

using namespace signopt;
using namespace signopt::cpu;

template <class F>
double best_ns(const int64_t elems, F&& f) {
  double best = 1e30;
  for (int r = 0; r < 30; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < 200; ++k) f();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = dt < best ? dt : best;
  }
  return best / (200.0 * (double)elems) * 1e9;
}

int main() {
  const int64_t n = 4096;
  std::vector<uint32_t> words(n + vec::WORD_SLACK);
  uint64_t base = 7;
  const double philox = best_ns(n, [&] {
    vec::philox_run(0x1234567u, 0x89ABCDEu, 0u, base, n, words.data());
    base += (uint64_t)n;
  });
  std::vector<float> vals(n), out(n);
  for (int64_t i = 0; i < n; ++i) vals[i] = (float)((i * 7919) % 2001 - 1000) * 1e-3f * (float)(1 + (i % 5));
  std::vector<uint8_t> codes(n);
  using E4 = vec::VFmt<FmtE4M3>;
  const double fp8 = best_ns(n, [&] {
    for (int64_t a = 0; a < n; a += 256) {
      E4::encode_block(codes.data() + a, 256, vals.data() + a, nullptr, 1.0f);
      const E4::Dec d(codes.data() + a, 256, 0.01f);
      for (int64_t j = a; j < a + 256; j += vec::W) vec::storeu(out.data() + j, E4::load(codes.data() + j, d));
    }
  });
  std::vector<uint16_t> h(n);
  const double bf16 = best_ns(n, [&] {
    for (int64_t j = 0; j < n; j += vec::W) vec::VFmt<FmtBF16>::store(h.data() + j, vec::loadu<vec::vf>(vals.data() + j));
    for (int64_t j = 0; j < n; j += vec::W) vec::storeu(out.data() + j, vec::VFmt<FmtBF16>::load(h.data() + j));
  });
  const double sq = best_ns(n, [&] {
    for (int64_t j = 0; j < n; j += vec::W)
      vec::storeu(out.data() + j, vec::vsqrt(vec::vabs(vec::loadu<vec::vf>(vals.data() + j))));
  });
  printf("layer %s %d\n", vec::isa_name(), vec::W);
  printf("philox %.4f\n", philox);
  printf("fp8_codec %.4f\n", fp8);
  printf("bf16_codec %.4f\n", bf16);
  printf("sqrt %.4f\n", sq);
  return (int)(out[5] + (float)words[9] + (float)codes[3] + (float)h[2]) == 12345 ? 1 : 0;
}
