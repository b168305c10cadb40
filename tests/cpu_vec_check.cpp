// The CPU vector loops against the scalar rule core, without torch: a standalone program that
// tests/test_cpu_vec.py compiles for every vector target it can (x86-64 SSE2, SSE4, AVX2,
// AVX-512, the generic layer, aarch64 NEON under qemu) and runs.  It checks bit for bit:
//   * random bits v2 of runs (vec::philox_run / philox_words) against element_word, at every
//     start mod 4, across multiples of 2^32 in the element and in the call index, every purpose,
//     and the test op's philox_indices against philox4x32_10;
//   * the vector codecs (cpu_vformats.h) against casts.h: bf16 nearest/stochastic, FP8 block
//     decode (short and long form, NaN/inf codes, negative and huge scales) and encode
//     (nearest and stochastic, subnormal codes, NaN, inf); packed 4-bit (MXFP4, NVFP4 under
//     tensor scales) block encode and decode (two codes a byte, odd counts);
//   * vec::Loop (apply, cautious count, scan) of every kind but Lion-kappa lp over fp32/bf16
//     parameters and every state format, with each option (maximize, GradScaler, l2, cautious,
//     stochastic parameter and state rounding, element and segment envelopes), against rules.h
//     element by element (GroupKernel::apply_tile's order) with the scalar codecs;
//   * the scales of W blocks at once (vec::lane_max, VFmt::multipliers and put_scales) against
//     the per-block scalar scale path;
//   * the reductions (vec::norm_sum, vec::env_max) against the scalar lane sums and maxima.
// Prints "OK <checks> <target>" or the first mismatch (exit status 1).
#include <stdio.h>
#include <stdlib.h>

#include <vector>

#include "cpu_vloops.h"

using namespace signopt;
using namespace signopt::cpu;

namespace {

int failures = 0;
long checks = 0;

void fail(const char* what, long i, uint32_t got, uint32_t want) {
  if (failures++ < 10) printf("MISMATCH %s at %ld: got 0x%08x want 0x%08x\n", what, i, got, want);
}

uint64_t rng_state = 0x9E3779B97F4A7C15ull;
uint32_t rnd() {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 16);
}
float rndf(int lo, int hi) {  // a random value of magnitude 2^lo .. 2^hi, random sign
  const float m = 1.0f + (float)(rnd() & 0xFFFFFF) / 16777216.0f;
  const int e = lo + (int)(rnd() % (uint32_t)(hi - lo + 1));
  const float x = ldexpf(m, e);
  return (rnd() & 1) ? -x : x;
}
// values with zeros, signed zeros, subnormals, NaN, infinities and huge entries
float special(uint32_t i, int lo, int hi) {
  switch (rnd() % 24) {
    case 0: return 0.0f;
    case 1: return -0.0f;
    case 2: return u2f(0x7FC00000u);
    case 3: return u2f(0xFFC00001u);
    case 4: return u2f(0x7F800000u);
    case 5: return u2f(0xFF800000u);
    case 6: return u2f(1u + (rnd() & 0x7FFFFFu)) * ((i & 1) ? -1.0f : 1.0f);  // subnormal
    case 7: return rndf(100, 127);
    default: return rndf(lo, hi);
  }
}

// ---------------------------------------------------------------- Philox
void check_philox() {
  const uint64_t bases[] = {0, 1, 2, 3, 5, 123, (1ull << 32) - 40, (1ull << 32) - 3, (1ull << 34) - 6,
                            (1ull << 34) - 33, (1ull << 34) - 501, (1ull << 40) + 3, 1ull << 62};
  const int64_t ns[] = {0, 1, 3, 4, 31, 33, 100, 1000, 5000};
  for (uint32_t purpose = 0; purpose < 3; ++purpose)
    for (const uint64_t b : bases)
      for (const int64_t n : ns) {
        std::vector<uint32_t> out((size_t)n + 1, 0xA5A5A5A5u);
        philox_words(0xDEADBEEFu, 0x12345678u, purpose, b, n, out.data(), true);
        for (int64_t j = 0; j < n; ++j, ++checks) {
          const uint32_t want = element_word(0xDEADBEEFu, 0x12345678u, b + (uint64_t)j, purpose);
          if (out[(size_t)j] != want) fail("philox_words", (long)j, out[(size_t)j], want);
        }
        if (out[(size_t)n] != 0xA5A5A5A5u) fail("philox_words overrun", (long)n, out[(size_t)n], 0xA5A5A5A5u);
      }
  std::vector<int64_t> idx(1003), o(4 * 1003);
  for (int i = 0; i < 1003; ++i) idx[i] = (int64_t)i * 7919 + (i % 3 == 0 ? (1ll << 32) - 5 : (i % 5 == 0 ? 1ll << 50 : 0));
  philox_indices(1u, 2u, idx.data(), 1003, o.data());
  for (int i = 0; i < 1003; ++i) {
    const PhiloxWords w = philox4x32_10(1u, 2u, (uint32_t)idx[i], (uint32_t)((uint64_t)idx[i] >> 32), 0u, 0u);
    const uint32_t want[4] = {w.w0, w.w1, w.w2, w.w3};
    for (int k = 0; k < 4; ++k, ++checks)
      if ((uint32_t)o[4 * i + k] != want[k]) fail("philox_indices", i, (uint32_t)o[4 * i + k], want[k]);
  }
}

// ---------------------------------------------------------------- codecs
void check_bf16() {
  const int n = 4096;
  std::vector<float> x(n);
  std::vector<uint32_t> w(n);
  for (int i = 0; i < n; ++i) x[i] = special(i, -140, 127), w[i] = rnd();
  std::vector<uint16_t> rn(n), sr(n);
  for (int j = 0; j + vec::W <= n; j += vec::W) {
    vec::VFmt<FmtBF16>::store(rn.data() + j, vec::loadu<vec::vf>(x.data() + j));
    vec::VFmt<FmtBF16>::store_sr(sr.data() + j, vec::loadu<vec::vf>(x.data() + j), vec::loadu<vec::vu>(w.data() + j));
  }
  for (int i = 0; i < n; ++i, checks += 3) {
    if (rn[i] != FmtBF16::store(x[i], false, 0u)) fail("bf16 nearest", i, rn[i], FmtBF16::store(x[i], false, 0u));
    if (sr[i] != FmtBF16::store(x[i], true, w[i])) fail("bf16 stochastic", i, sr[i], FmtBF16::store(x[i], true, w[i]));
  }
  for (int j = 0; j + vec::W <= n; j += vec::W) {
    float d[vec::W];
    vec::storeu(d, vec::VFmt<FmtBF16>::load(rn.data() + j));
    for (int k = 0; k < vec::W; ++k)
      if (f2u(d[k]) != f2u(FmtBF16::load(rn[j + k]))) fail("bf16 load", j + k, f2u(d[k]), f2u(FmtBF16::load(rn[j + k])));
  }
}

template <class F>
float scalar_encode_block(uint8_t* r, int64_t n, const float* vals, const uint32_t* words) {
  uint32_t amax = 0u;
  for (int64_t j = 0; j < n; ++j) amax = F::abs_bits(vals[j]) > amax ? F::abs_bits(vals[j]) : amax;
  const float sc = F::scale_of(u2f(amax));
  const float inv = 1.0f / sc;
  for (int64_t j = 0; j < n; ++j) r[j] = F::encode(vals[j], inv, words != nullptr, words ? words[j] : 0u);
  return sc;
}

template <class F>
void check_fp8() {
  using V = vec::VFmt<F>;
  const int64_t blocks[] = {1, 3, 16, 37, 64, 256};
  for (const int64_t B : blocks) {
    const int64_t n = 40 * B;
    std::vector<float> x((size_t)n);
    std::vector<uint32_t> w((size_t)n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t blk = i / B;  // blocks of tiny, ordinary and huge values, some with NaN/inf
      x[(size_t)i] = blk % 5 == 4 ? special((uint32_t)i, -40, 40) : rndf(blk % 5 == 0 ? -140 : -20, blk % 5 == 1 ? 120 : 10);
      if (blk % 7 == 3 && rnd() % 4 == 0) x[(size_t)i] = 0.0f;
      if (blk % 11 == 5) x[(size_t)i] = (rnd() & 1) ? 0.0f : u2f(rnd() & 0xFFu);  // zero/subnormal blocks
      w[(size_t)i] = rnd();
    }
    for (int sr = 0; sr < 2; ++sr) {
      std::vector<uint8_t> got((size_t)n), want((size_t)n);
      for (int64_t a = 0; a < n; a += B) {
        const float sg = V::encode_block(got.data() + a, B, x.data() + a, sr ? w.data() + a : nullptr, 1.0f);
        const float sw = scalar_encode_block<F>(want.data() + a, B, x.data() + a, sr ? w.data() + a : nullptr);
        ++checks;
        if (f2u(sg) != f2u(sw)) fail("fp8 scale", (long)a, f2u(sg), f2u(sw));
      }
      for (int64_t i = 0; i < n; ++i, ++checks)
        if (got[(size_t)i] != want[(size_t)i]) fail(sr ? "fp8 encode stochastic" : "fp8 encode", (long)i, got[(size_t)i], want[(size_t)i]);
    }
  }
  // decode: every code, with scales ordinary, negative, huge (long form) and blocks with and
  // without NaN/inf codes (short form)
  const float scales[] = {1.0f, 0.0123f, -3.0f, -1048576.0f, 1e30f, 1.17549435e-38f, 3e-41f};
  std::vector<uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[c] = (uint8_t)c;
  std::vector<uint8_t> plain;
  for (int c = 0; c < 256; ++c)
    if ((c & 0x7F) != 0x7F && !(F::has_inf && (c & 0x7F) >= 0x7C)) plain.push_back((uint8_t)c);
  while (plain.size() % vec::W) plain.push_back(0);
  for (const float sc : scales)
    for (int which = 0; which < 2; ++which) {
      const std::vector<uint8_t>& cs = which ? plain : codes;
      const typename V::Dec d(cs.data(), (int64_t)cs.size(), sc);
      for (size_t j = 0; j + vec::W <= cs.size(); j += vec::W) {
        float got[vec::W];
        vec::storeu(got, V::load(cs.data() + j, d));
        for (int k = 0; k < vec::W; ++k, ++checks) {
          const float want = F::load(cs[j + k], sc);
          if (f2u(got[k]) != f2u(want) && !(want != want && got[k] != got[k])) fail("fp8 decode", (long)(j + k), f2u(got[k]), f2u(want));
        }
      }
    }
}

// Packed 4-bit codecs F (MXFP4; NVFP4 under each tensor scale S of tscales, and under the tensor
// scale of the values' finite absmax): encode_block against casts.h's codes two a byte as
// cpu_formats.cpp's scalar store_packed takes them (scale_of(absmax, S), inv = 1/multiplier), over
// blocks of even and odd counts, nearest and stochastic, values tiny to huge with NaN/inf/zeros;
// decode of every byte (two codes) with the multipliers scale * S of each scale of `scales`, from
// the first element of a block.  NVFP4: the block scales must reach their floor 2^-9 and the
// clamp 448 somewhere (counted).
template <class F>
void check_fp4(std::vector<float> tscales, const std::vector<float>& scales) {
  using V = vec::VFmt<F>;
  const int64_t blocks[] = {2, 3, 12, 16, 24, 32, 33, 50, 64, 256};  // 2W steps, W steps (half vectors), tails
  long floors = 0, clamps = 0;
  for (const int64_t B : blocks) {
    const int64_t n = 40 * B;
    std::vector<float> x((size_t)n);
    std::vector<uint32_t> w((size_t)n);
    uint32_t T = 0u;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t blk = i / B;
      x[(size_t)i] = blk % 5 == 4 ? special((uint32_t)i, -40, 40) : rndf(blk % 5 == 0 ? -140 : -20, blk % 5 == 1 ? 120 : 10);
      if (blk % 7 == 3 && rnd() % 4 == 0) x[(size_t)i] = 0.0f;
      if (blk % 11 == 5) x[(size_t)i] = (rnd() & 1) ? 0.0f : u2f(rnd() & 0xFFu);  // zero/subnormal blocks
      w[(size_t)i] = rnd();
      T = F::abs_bits(x[(size_t)i]) > T ? F::abs_bits(x[(size_t)i]) : T;
    }
    std::vector<float> ts = tscales;
    if (F::tensor_scaled) ts.push_back(F::tensor_scale_of(u2f(T)));
    for (const float S : ts)
      for (int sr = 0; sr < 2; ++sr) {
        const int64_t bytes = (B + 1) / 2;
        std::vector<uint8_t> got((size_t)(40 * bytes)), want((size_t)(40 * bytes));
        for (int64_t k = 0; k < 40; ++k) {
          const float* vals = x.data() + k * B;
          const uint32_t* words = sr ? w.data() + k * B : nullptr;
          const float sg = V::encode_block(got.data() + k * bytes, B, vals, words, S);
          uint32_t amax = 0u;
          for (int64_t j = 0; j < B; ++j) amax = F::abs_bits(vals[j]) > amax ? F::abs_bits(vals[j]) : amax;
          const float sw = F::scale_of(u2f(amax), S);
          const float inv = 1.0f / F::multiplier(sw, S);
          for (int64_t j = 0; j < B; j += 2) {
            const uint32_t lo = F::encode(vals[j], inv, sr != 0, sr ? words[j] : 0u);
            const uint32_t hi = j + 1 < B ? F::encode(vals[j + 1], inv, sr != 0, sr ? words[j + 1] : 0u) : 0u;
            want[(size_t)(k * bytes + j / 2)] = (uint8_t)(lo | (hi << 4));
          }
          ++checks;
          if (f2u(sg) != f2u(sw)) fail("fp4 scale", (long)k, f2u(sg), f2u(sw));
          floors += sw == 0.001953125f;
          clamps += sw == 448.0f;
        }
        for (size_t i = 0; i < got.size(); ++i, ++checks)
          if (got[i] != want[i]) fail(sr ? "fp4 encode stochastic" : "fp4 encode", (long)i, got[i], want[i]);
      }
  }
  ++checks;
  if (F::tensor_scaled && (floors == 0 || clamps == 0)) fail("nvfp4 block scales at 2^-9 / 448", 0, (uint32_t)floors, (uint32_t)clamps);
  std::vector<uint8_t> bytes(256);
  for (int c = 0; c < 256; ++c) bytes[(size_t)c] = (uint8_t)c;
  for (const float sc : scales)
    for (const float S : tscales)
      for (const int64_t n : {512L, 511L, 37L}) {
        const float mult = F::multiplier(sc, S);
        std::vector<float> got((size_t)n);
        V::decode(bytes.data(), n, mult, got.data());
        for (int64_t i = 0; i < n; ++i, ++checks) {
          const float want = F::load_code(F::code_at(bytes.data(), i), mult);
          if (f2u(got[(size_t)i]) != f2u(want)) fail("fp4 decode", (long)i, f2u(got[(size_t)i]), f2u(want));
        }
      }
}

// The scales of W blocks at once (BlockRegs::group) against the per-block scalar path:
// vec::lane_max against each vector's largest lane; VFmt::multipliers of every stored scale byte
// (e8m0, E4M3 codes; NaN codes included) or of fp32 scales against get_scale then multiplier;
// VFmt::put_scales of finite absmax bits (0, subnormal, ordinary, the largest finite) against
// scale_of, put_scale and inverse, under each tensor scale S of tscales.
template <class F>
void check_group_scales(const std::vector<float>& tscales) {
  using V = vec::VFmt<F>;
  using SR = typename F::scale_raw;
  constexpr int W = vec::W;
  for (int rep = 0; rep < 200; ++rep) {
    vec::vu a[W];
    uint32_t want[W];
    for (int i = 0; i < W; ++i) {
      want[i] = 0u;
      for (int k = 0; k < W; ++k) {
        a[i][k] = rnd() >> (1 + rnd() % 31);  // < 2^31, spread over magnitudes
        want[i] = a[i][k] > want[i] ? a[i][k] : want[i];
      }
    }
    const vec::vu got = vec::lane_max(a);
    for (int i = 0; i < W; ++i, ++checks)
      if (got[i] != want[i]) fail("lane_max", (long)i, got[i], want[i]);
  }
  std::vector<SR> stored(256);
  for (int c = 0; c < 256; ++c) {
    if constexpr (sizeof(SR) == 1) {
      stored[(size_t)c] = (SR)c;
    } else {
      stored[(size_t)c] = c % 17 == 0 ? 1.17549435e-38f : fabsf(rndf(-126, 100));
    }
  }
  for (const float S : tscales)
    for (int b = 0; b < 256; b += W) {
      float got[W];
      vec::storeu(got, V::multipliers(stored.data(), b, S));
      for (int i = 0; i < W; ++i, ++checks) {
        const float want = V::multiplier(F::get_scale(stored.data(), b + i), S);
        if (f2u(got[i]) != f2u(want) && !(want != want && got[i] != got[i])) fail("group multipliers", (long)(b + i), f2u(got[i]), f2u(want));
      }
    }
  std::vector<uint32_t> amax;
  for (uint32_t x : {0u, 1u, 0x007FFFFFu, 0x00800000u, 0x3F800000u, 0x43E00000u, 0x7F7FFFFFu}) amax.push_back(x);
  for (int i = 0; i < 40 * W; ++i) amax.push_back(rnd() % 0x7F800000u);
  for (int i = 0; i < 40 * W; ++i) amax.push_back(f2u(fabsf(rndf(-30, 12))));
  while (amax.size() % W) amax.push_back(rnd() % 0x7F800000u);
  for (const float S : tscales)
    for (size_t b = 0; b < amax.size(); b += W) {
      vec::vu A;
      for (int i = 0; i < W; ++i) A[i] = amax[b + (size_t)i];
      SR got_sc[W], want_sc[W];
      float got_iv[W];
      vec::storeu(got_iv, V::put_scales(got_sc, 0, A, S));
      for (int i = 0; i < W; ++i, checks += 2) {
        const float sc = V::scale_of(u2f(A[i]), S);
        F::put_scale(want_sc, i, sc);
        const float iv = V::inverse(sc, S);
        if (memcmp(&got_sc[i], &want_sc[i], sizeof(SR)) != 0) fail("group put_scales", (long)(b + (size_t)i), (uint32_t)got_sc[i], (uint32_t)want_sc[i]);
        if (f2u(got_iv[i]) != f2u(iv)) fail("group inverses", (long)(b + (size_t)i), f2u(got_iv[i]), f2u(iv));
      }
    }
}

// ---------------------------------------------------------------- the rule loops
struct Opts {
  bool maximize, scaler, l2, cautious, psr, ssr, elem_env;
};

template <class F>
constexpr bool fp8_has_inf() {
  if constexpr (F::blocked) {
    return F::has_inf;
  } else {
    return false;
  }
}

// One tensor of n elements through vec::Loop<K, PF, SF> (FP8: blocks of B, pieces of constant
// segment inside them) and through rules.h element by element; compares every stored bit.
template <int K, class PF, class SF>
void check_loop(const Opts& o, const int64_t n, const int64_t B, const int64_t seglen, const uint64_t offset) {
  using L = vec::Loop<K, PF, SF>;
  using PR = typename PF::raw;
  using SR = typename SF::raw;
  constexpr bool HM = kind_has_m(K), HV = kind_has_v(K), STO = kind_stochastic(K);
  constexpr bool BLK = SF::blocked;
  const bool elem = STO && o.elem_env;
  const bool seg = kind_kappa_norm(K) || (STO && !o.elem_env);
  Scalars s{};
  s.lr = 0.01f;
  s.decay = o.l2 ? 1.0f : 0.999f;
  s.l2 = o.l2 ? 0.01f : 0.0f;
  s.beta1 = 0.9f;
  s.omb1 = 0.1f;
  s.beta2 = 0.99f;
  s.omb2 = 0.01f;
  s.eps = 1e-8f;
  s.huber_delta = 0.05f;
  s.envelope_decay = 0.9f;
  s.inv_scale = 0.25f;
  s.has_inv_scale = o.scaler;
  s.maximize = o.maximize;
  s.cautious = o.cautious;
  s.envelope_from_grad = (n & 1) != 0;
  s.state_stochastic_rounding = o.ssr;
  s.param_stochastic_rounding = o.psr;
  s.envelope = elem ? ENV_ELEMENT : ENV_ROW;
  const float bc1 = 0.19f, bc2 = 0.0199f, cs = 1.75f;
  // inputs
  std::vector<PR> p((size_t)n), g((size_t)n);
  std::vector<SR> m((size_t)n), v((size_t)n), E((size_t)n);
  std::vector<float> segv((size_t)(n / seglen + 2));
  for (auto& x : segv) x = rnd() % 5 == 0 ? 0.0f : fabsf(rndf(-8, 4));
  const int64_t nblk = (n + B - 1) / B;
  std::vector<float> ms((size_t)nblk), vs((size_t)nblk), Gs((size_t)nblk);
  for (int64_t i = 0; i < n; ++i) {
    p[(size_t)i] = PF::store(special((uint32_t)i, -20, 4), false, 0u);
    g[(size_t)i] = PF::store(rnd() % 9 == 0 ? special((uint32_t)i, -30, 10) : rndf(-30, 10), false, 0u);
  }
  auto state_init = [&](std::vector<SR>& st, std::vector<float>& sc, bool positive) {
    for (int64_t i = 0; i < n; ++i) {
      float x = rnd() % 11 == 0 ? special((uint32_t)i, -20, 2) : rndf(-20, 2);
      if (positive) x = fabsf(x);
      if constexpr (BLK) {
        st[(size_t)i] = (SR)(rnd() & 0xFF);
        if (positive) st[(size_t)i] &= 0x7F;
      } else {
        st[(size_t)i] = SF::store(x, false, 0u);
      }
    }
    for (auto& x : sc) x = rnd() % 13 == 0 ? -3.0f : fabsf(rndf(-12, 3));
  };
  if (HM) state_init(m, ms, false);
  if (HV) state_init(v, vs, true);
  if (elem) state_init(E, Gs, true);
  // words
  std::vector<uint32_t> w0((size_t)n), w1((size_t)n), w2((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    w0[(size_t)i] = element_word(7u, 9u, offset + (uint64_t)i, PURPOSE_SIGN);
    w1[(size_t)i] = element_word(7u, 9u, offset + (uint64_t)i, PURPOSE_STATE_ROUNDING);
    w2[(size_t)i] = element_word(7u, 9u, offset + (uint64_t)i, PURPOSE_PARAM_ROUNDING);
  }
  const bool state_words = o.ssr && !std::is_same<SF, FmtF32>::value;
  const bool param_words = o.psr && !std::is_same<PF, FmtF32>::value;
  // ---- scalar reference (GroupKernel::apply_tile / count_loop)
  std::vector<PR> rp = p;
  std::vector<SR> rm = m, rv = v, rE = E;
  std::vector<float> rms = ms, rvs = vs, rGs = Gs;
  std::vector<float> fm((size_t)n), fv((size_t)n), fE((size_t)n);
  int64_t rbad = 0, rkept = 0;
  for (int64_t i = 0; i < n; ++i) {
    ElemIn in;
    in.p = PF::load(p[(size_t)i]);
    in.g = PF::load(g[(size_t)i]);
    auto dec = [&](const std::vector<SR>& st, const std::vector<float>& sc) {
      if constexpr (BLK) {
        return SF::load(st[(size_t)i], sc[(size_t)(i / B)]);
      } else {
        return SF::load(st[(size_t)i]);
      }
    };
    in.m = HM ? dec(m, ms) : 0.0f;
    in.v = HV ? dec(v, vs) : 0.0f;
    in.G = elem ? dec(E, Gs) : 0.0f;
    const float x = (in.g * (s.has_inv_scale ? s.inv_scale : 1.0f)) * (s.maximize ? -1.0f : 1.0f);
    const bool bad = !finite32(x);
    const float gp = o.l2 ? (bad ? 0.0f : x) + s.l2 * in.p : (bad ? 0.0f : x);
    const float sv = seg ? segv[(size_t)(i / seglen)] : 0.0f;
    const ElemOut r = direction_after_prologue<K>(s, in, gp, bad, sv, w0[(size_t)i], bc1, bc2);
    rkept += cautious_keep(r.u, r.g) ? 1 : 0;
    const float u = o.cautious ? cautious_apply(r.u, r.g, cs) : r.u;
    rp[(size_t)i] = PF::store(epilogue(in.p, u, s.lr, s.decay, bad), param_words, w2[(size_t)i]);
    fm[(size_t)i] = bad ? in.m : r.m;
    fv[(size_t)i] = bad ? in.v : r.v;
    fE[(size_t)i] = bad ? in.G : r.G;
    if constexpr (!BLK) {
      if (HM) rm[(size_t)i] = SF::store(fm[(size_t)i], state_words, w1[(size_t)i]);
      if (HV) rv[(size_t)i] = SF::store(fv[(size_t)i], state_words, w1[(size_t)i]);
      if (elem) rE[(size_t)i] = SF::store(fE[(size_t)i], state_words, w1[(size_t)i]);
    }
    rbad += bad ? 1 : 0;
  }
  if constexpr (BLK) {
    for (int64_t a = 0; a < n; a += B) {
      const int64_t nb = std::min(B, n - a);
      const uint32_t* ws = state_words ? w1.data() + a : nullptr;
      if (HM) rms[(size_t)(a / B)] = scalar_encode_block<SF>(rm.data() + a, nb, fm.data() + a, ws);
      if (HV) rvs[(size_t)(a / B)] = scalar_encode_block<SF>(rv.data() + a, nb, fv.data() + a, ws);
      if (elem) rGs[(size_t)(a / B)] = scalar_encode_block<SF>(rE.data() + a, nb, fE.data() + a, ws);
    }
  }
  // ---- vector loops: chunks of one block (FP8) or of 512 elements, pieces of constant segment
  const vec::VScalars VS(s);
  const L loop(VS, elem, o.cautious);
  const typename L::Tens T{bc1, bc2, cs};
  const int64_t chunk = BLK ? B : 512;
  std::vector<float> mo((size_t)(B + vec::W)), vo((size_t)(B + vec::W)), Go((size_t)(B + vec::W));
  std::vector<uint32_t> b0((size_t)(chunk + vec::WORD_SLACK)), b1((size_t)(chunk + vec::WORD_SLACK)),
      b2((size_t)(chunk + vec::WORD_SLACK));
  int64_t vbad = 0, vkept = 0;
  typename L::Acc scanned;  // the scan pass's absmax lanes over the whole tensor (block-scaled state)
  for (int pass = 0; pass < 3; ++pass) {  // 0: cautious count, 1: scan (block-scaled state), 2: apply
    if (pass == 1 && !BLK) continue;
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
      const int64_t c1 = std::min(c0 + chunk, n), len = c1 - c0;
      const uint64_t i0 = offset + (uint64_t)c0;
      const bool sign = kind_draws_sign(K) && pass != 1, store = pass == 2;
      const uint32_t* W0 = sign ? vec::philox_run(7u, 9u, PURPOSE_SIGN, i0, len, b0.data()) : nullptr;
      const uint32_t* W1 = store && state_words ? vec::philox_run(7u, 9u, PURPOSE_STATE_ROUNDING, i0, len, b1.data()) : nullptr;
      const uint32_t* W2 = store && param_words ? vec::philox_run(7u, 9u, PURPOSE_PARAM_ROUNDING, i0, len, b2.data()) : nullptr;
      typename L::Dec md, vd, Gd;
      if constexpr (BLK) {
        if (HM) md = typename L::Dec(m.data() + c0, len, ms[(size_t)(c0 / B)]);
        if (HV) vd = typename L::Dec(v.data() + c0, len, vs[(size_t)(c0 / B)]);
        if (elem) Gd = typename L::Dec(E.data() + c0, len, Gs[(size_t)(c0 / B)]);
      }
      typename L::Acc acc;
      typename L::Stats st;  // the step statistics, off here (STATS = false)
      for (int64_t a0 = c0; a0 < c1;) {
        const int64_t a1 = seg ? std::min(c1, (a0 / seglen + 1) * seglen) : c1;
        const int64_t q = a0 - c0;
        const typename L::Ptr P{p.data() + a0, g.data() + a0, HM ? m.data() + a0 : nullptr,
                                HV ? v.data() + a0 : nullptr, elem ? E.data() + a0 : nullptr,
                                mo.data() + q, vo.data() + q, Go.data() + q,
                                W0 ? W0 + q : nullptr, W1 ? W1 + q : nullptr, W2 ? W2 + q : nullptr};
        const float sv = seg ? segv[(size_t)(a0 / seglen)] : 0.0f;
        if (pass == 0) {
          vkept += loop.template run_acc<vec::COUNT, false>(P, T, a1 - a0, sv, md, vd, Gd, acc, st);
        } else if (pass == 2) {
          vbad += loop.template run_acc<vec::APPLY, false>(P, T, a1 - a0, sv, md, vd, Gd, acc, st);
        } else if constexpr (BLK) {
          loop.template run_acc<vec::SCAN, false>(P, T, a1 - a0, sv, md, vd, Gd, scanned, st);
        }
        a0 = a1;
      }
      if constexpr (BLK) {
        if (pass == 2) {
          using VSF = vec::VFmt<SF>;
          const size_t blk = (size_t)(c0 / B);
          if (HM) ms[blk] = VSF::encode_amax(m.data() + c0, len, mo.data(), vec::hmax31(acc.am), W1, 1.0f);
          if (HV) vs[blk] = VSF::encode_amax(v.data() + c0, len, vo.data(), vec::hmax31(acc.av), W1, 1.0f);
          if (elem) Gs[blk] = VSF::encode_amax(E.data() + c0, len, Go.data(), vec::hmax31(acc.aG), W1, 1.0f);
        }
      }
    }
  }
  // ---- compare
  // bit for bit, except that a NaN matches any NaN (tests/test_cpp_core.py's `same`: the sign and
  // payload of an fp32 NaN, and the sign of an FP8 NaN code, are not specified; where two NaNs
  // meet, which one an addition returns depends on the operand order the compiler picked)
  auto nan_bits = [](uint32_t u, size_t elem_size, bool fp8) {
    if (fp8) return fp8_has_inf<SF>() ? (u & 0x7Fu) > 0x7Cu : (u & 0x7Fu) == 0x7Fu;
    return elem_size == 4 && (u & 0x7FFFFFFFu) > 0x7F800000u;
  };
  auto cmp = [&](const char* what, const void* a, const void* b, size_t bytes, size_t elem_size) {
    const uint8_t* x = (const uint8_t*)a;
    const uint8_t* y = (const uint8_t*)b;
    const bool fp8 = elem_size == 1;
    for (size_t i = 0; i < bytes; i += elem_size, ++checks) {
      uint32_t u = 0, t = 0;
      memcpy(&u, x + i, elem_size);
      memcpy(&t, y + i, elem_size);
      if (u != t && !(nan_bits(u, elem_size, fp8) && nan_bits(t, elem_size, fp8))) {
        char buf[160];
        snprintf(buf, sizeof buf, "%s kind %d param bytes %d state bytes %d%s opts %d%d%d%d%d%d%d n %ld", what, K,
                 (int)sizeof(PR), (int)sizeof(SR), SF::blocked ? " (block-scaled)" : "",
                 o.maximize, o.scaler, o.l2, o.cautious, o.psr, o.ssr, o.elem_env, (long)n);
        fail(buf, (long)(i / elem_size), u, t);
        return;
      }
    }
  };
  cmp("p", p.data(), rp.data(), sizeof(PR) * (size_t)n, sizeof(PR));
  if (HM) cmp("m", m.data(), rm.data(), sizeof(SR) * (size_t)n, sizeof(SR));
  if (HV) cmp("v", v.data(), rv.data(), sizeof(SR) * (size_t)n, sizeof(SR));
  if (elem) cmp("G", E.data(), rE.data(), sizeof(SR) * (size_t)n, sizeof(SR));
  if (BLK) {
    if (HM) cmp("m_scale", ms.data(), rms.data(), 4 * ms.size(), 4);
    if (HV) cmp("v_scale", vs.data(), rvs.data(), 4 * vs.size(), 4);
    if (elem) cmp("G_scale", Gs.data(), rGs.data(), 4 * Gs.size(), 4);
  }
  if constexpr (BLK) {  // the scan: the finite absmax bits of the new (old where bad) states
    auto amax = [](const std::vector<float>& x) {
      uint32_t a = 0u;
      for (const float y : x) a = SF::abs_bits(y) > a ? SF::abs_bits(y) : a;
      return a;
    };
    checks += 3;
    if (HM && vec::hmax31(scanned.am) != amax(fm)) fail("scan m", K, vec::hmax31(scanned.am), amax(fm));
    if (HV && vec::hmax31(scanned.av) != amax(fv)) fail("scan v", K, vec::hmax31(scanned.av), amax(fv));
    if (elem && vec::hmax31(scanned.aG) != amax(fE)) fail("scan G", K, vec::hmax31(scanned.aG), amax(fE));
  }
  checks += 2;
  if (vbad != rbad) fail("non-finite count", K, (uint32_t)vbad, (uint32_t)rbad);
  if (vkept != rkept) fail("cautious count", K, (uint32_t)vkept, (uint32_t)rkept);
}

template <int K, class PF, class SF>
void check_options() {
  const Opts all[] = {
      {false, false, false, false, false, false, true}, {true, true, false, false, false, false, true},
      {false, false, true, false, false, false, true},  {false, false, false, true, false, false, true},
      {false, false, false, false, true, true, true},   {false, false, false, false, false, false, false},
      {true, false, true, true, true, true, false},
  };
  for (const Opts& o : all) {
    if (!kind_stochastic(K) && !o.elem_env) continue;  // the envelope option: stochastic kinds only
    for (const int64_t n : {1L, 17L, 1000L, 1337L}) {
      check_loop<K, PF, SF>(o, n, 64, 100, (1ull << 34) - 501);
      if (n == 1337) check_loop<K, PF, SF>(o, n, 48, 37, 3);
    }
  }
}

template <int K, class PF>
void check_states() {
  check_options<K, PF, FmtF32>();
  check_options<K, PF, FmtBF16>();
  check_options<K, PF, FmtE4M3>();
  check_options<K, PF, FmtE5M2>();
}

template <int K>
void check_kind() {
  check_states<K, FmtF32>();
  check_states<K, FmtBF16>();
}

// ---------------------------------------------------------------- reductions
template <int K>
void check_reductions() {
  const int64_t n = 3000;
  std::vector<float> p((size_t)n), g((size_t)n), m((size_t)n), v((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    p[(size_t)i] = rndf(-10, 2);
    g[(size_t)i] = rnd() % 9 == 0 ? special((uint32_t)i, -30, 10) : rndf(-30, 10);
    m[(size_t)i] = rndf(-20, 2);
    v[(size_t)i] = fabsf(rndf(-20, 2));
  }
  for (int l2 = 0; l2 < 2; ++l2) {
    Scalars s{};
    s.beta1 = 0.9f, s.omb1 = 0.1f, s.beta2 = 0.99f, s.omb2 = 0.01f, s.eps = 1e-8f, s.envelope_decay = 1.0f;
    s.l2 = l2 ? 0.01f : 0.0f;
    s.maximize = l2;
    s.envelope_from_grad = 0;
    const vec::VScalars VS(s);
    for (const int64_t len : {1L, 255L, 1000L, 3000L}) {
      if constexpr (K == K_LION_NORM) {
        double lanes[RED_LANES] = {};
        for (int64_t e = 0; e < len; ++e) {
          ElemIn in{p[(size_t)e], g[(size_t)e], m[(size_t)e], 0.0f, 0.0f};
          bool bad;
          const float gg = prologue(s, in.p, in.g, bad);
          lanes[e % RED_LANES] += norm_term<K>(direction_after_prologue<K>(s, in, gg, bad, 1.0f, 0u, 1.0f, 1.0f).red, 2.0);
        }
        for (int st = RED_LANES / 2; st >= 1; st /= 2)
          for (int j = 0; j < st; ++j) lanes[j] += lanes[j + st];
        const double got = vec::norm_sum<K>(VS, len, p.data(), g.data(), m.data());
        uint64_t a, b;
        memcpy(&a, &got, 8);
        memcpy(&b, &lanes[0], 8);
        ++checks;
        if (a != b) fail("norm_sum", (long)len, (uint32_t)(a ^ b), 0u);
      } else {
        float want = 0.0f;
        for (int64_t e = 0; e < len; ++e) {
          ElemIn in{p[(size_t)e], g[(size_t)e], m[(size_t)e], v[(size_t)e], 0.0f};
          bool bad;
          const float gg = prologue(s, in.p, in.g, bad);
          want = nanmax(want, direction_after_prologue<K>(s, in, gg, bad, 1.0f, 0u, 0.19f, 0.0199f).red);
        }
        const float got = vec::env_max<K>(VS, len, p.data(), g.data(), m.data(), v.data(), 0.19f, 0.0199f);
        ++checks;
        if (f2u(got) != f2u(want) && !(got != got && want != want)) fail("env_max", (long)len, f2u(got), f2u(want));
      }
    }
  }
}

}  // namespace

int main() {
  check_philox();
  check_bf16();
  check_fp8<FmtE4M3>();
  check_fp8<FmtE5M2>();
  check_fp8<FmtMXE4M3>();
  check_fp8<FmtMXE5M2>();
  check_fp4<FmtE2M1>({1.0f}, {1.0f, 0.125f, 1.7014118e38f, 1.17549435e-38f, 5.877472e-39f});  // E8M0 values
  // NVFP4: tensor scales 1, 2^-126 (the least), small and huge; E4M3 block scales 2^-9 (the least,
  // subnormal), 7*2^-9, 0.8125, 1, 448 (the largest)
  check_fp4<FmtNVFP4>({1.0f, 1.17549435e-38f, 3.0e-5f, 1e30f}, {0.001953125f, 0.013671875f, 0.8125f, 1.0f, 448.0f});
  check_group_scales<FmtE4M3>({1.0f});
  check_group_scales<FmtMXE4M3>({1.0f});
  check_group_scales<FmtMXE5M2>({1.0f});
  check_group_scales<FmtE2M1>({1.0f});
  check_group_scales<FmtNVFP4>({1.0f, 1.17549435e-38f, 3.0e-5f, 1e30f});
  check_kind<K_SIGN>();
  check_kind<K_SIGNUM>();
  check_kind<K_LION_L1>();
  check_kind<K_LION_L2SQ>();
  check_kind<K_LION_HUBER>();
  check_kind<K_LION_NORM>();
  check_kind<K_STO_SGD>();
  check_kind<K_STO_MOMENTUM>();
  check_kind<K_STO_LION>();
  check_kind<K_STO_ADAMW>();
  check_reductions<K_LION_NORM>();
  check_reductions<K_STO_MOMENTUM>();
  check_reductions<K_STO_ADAMW>();
  if (failures) {
    printf("FAILED %d of %ld checks (%s)\n", failures, checks, vec::isa_name());
    return 1;
  }
  printf("OK %ld %s %d\n", checks, vec::isa_name(), vec::W);
  return 0;
}
