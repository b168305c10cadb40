// CPU kernels: one call runs a rule over a whole list of tensors of one (param dtype, state
// format) combination, multi-threaded with at::parallel_for over fixed work items.
//
// Passes (group by group: the first three over a group of tensors of at most GROUP_BYTES, then the
// group's apply pass, so that it finds g and the state in L3; see GroupKernel::run):
//   reduce  (lion l2/row_l2/lp norms, row/block/tensor envelopes): fixed chunks of each segment,
//           fp64 sums in the lane order of rules.h (or NaN-propagating max), folded in chunk order
//   count   (cautious): exact integer count of kept coordinates per tensor
//   scan    (NVFP4 state): the rule evaluated, nothing written: the finite absmax of each new state
//           per tensor, whose tensor scale the apply pass encodes against
//   apply   : every element once: decode, rule, encode (FP8/FP4: one block at a time)
// Two implementations of each pass, the same bits:
//   * the vector loops (cpu_vloops.h on the portable vector layer cpu_vec.h: AVX-512, AVX2, SSE,
//     NEON, ... whatever the build targets), one fused loop from the stored values to the stored
//     results, random bits v2 drawn a run at a time (cpu_philox.h); packed 4-bit state (MXFP4,
//     NVFP4) one block at a time, decoded to fp32 first;
//   * the scalar tiles below (the readable oracle: decode a tile into fp32 buffers, the rules.h
//     rule element by element, encode), which SIGNOPT_CPU_SIMD=0 selects everywhere and which run
//     what has no vector form (Lion-kappa lp; fp16 parameters).
// Work items and chunks depend only on the tensor sizes, so results do not depend on the
// thread count.  With found_inf > 0 only the non-finite count runs (nothing is written).
#pragma once
#include <ATen/Parallel.h>
#include <stdlib.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "casts.h"
#include "cpu_philox.h"
#include "cpu_vloops.h"
#include "group.h"
#include "rules.h"
#include "step_stats.h"

namespace signopt {
namespace cpu {

constexpr int64_t ITEM = 16384;  // elements per work item
constexpr int64_t TILE = 512;    // elements per tile (element formats) and per vector-loop chunk
// Most stored bytes of a group of tensors whose passes run one after another (GroupKernel::run):
// a quarter of a 32 MiB L3, so that the apply pass finds what the reduce pass read still cached.
constexpr int64_t GROUP_BYTES = 8 << 20;

// SIGNOPT_CPU_SIMD=0 in the environment runs the scalar loops everywhere (the tests compare).
inline bool simd_enabled() {
  static const bool on = [] {
    const char* e = getenv("SIGNOPT_CPU_SIMD");
    return !(e != nullptr && e[0] == '0');
  }();
  return on;
}

// Whether this thread runs the vector loops (and vector codecs): enabled, and the floating-point
// environment the loops assume (cpu_vec.h's env_ok; checked once per thread and pass).
inline bool simd_here() { return simd_enabled() && vec::env_ok(); }

struct Call {
  std::vector<TensorRef> t;
  Scalars s;
  int64_t block;            // FP8 state block
  bool skip;                // found_inf > 0
  double* stats = nullptr;  // step statistics (STAT_COUNT values accumulated into), or null: off
};

// Decoded fp32 values of elements [a, a+n) (fp32 storage: the tensor memory itself, so the
// rule computes in place).  Blocked formats: the scale of block i / block (fp32, or an E8M0 byte:
// the codec's get_scale) multiplies each code; NVFP4 (fmt_tensor_scale): times the tensor scale ts
// (every other format ignores ts).  simd: the vector codecs (cpu_vformats.h) where the format has one.
float* load_range(int fmt, void* raw, const void* scale, int64_t block, int64_t a, int64_t n, float* out,
                  bool simd, float ts);

// Store fp32 values of [a, a+n) (nothing for fp32, computed in place); for FP8/FP4, [a, a+n) is
// exactly one block and its new scale is written too (NVFP4: relative to the new tensor scale ts).
// sr: stochastic rounding with `words`.
void store_range(int fmt, void* raw, void* scale, int64_t block, int64_t a, int64_t n, const float* vals,
                 bool sr, const uint32_t* words, bool simd, float ts);

// The stored tensor scale (NVFP4) of a state whose pointer p is null for every other format, whose
// loads and stores ignore it: 1 then.
inline float tensor_scale_at(const float* p) { return p != nullptr ? *p : 1.0f; }

// ---------------------------------------------------------------- FP8 block kernels (scalar)
// Decode n codes of one block with its scale.
template <class F>
inline void load_block(const typename F::raw* __restrict r, const float sc, const int64_t n, float* __restrict out) {
  for (int64_t k = 0; k < n; ++k) out[k] = F::load(r[k], sc);
}

// A block's scale from the absmax of its n finite values (an integer max over the bits of |x|);
// `extra` goes on to F::scale_of (FP4: the tensor scale).
template <class F, class... Extra>
inline float block_scale(const float* __restrict vals, const int64_t n, const Extra... extra) {
  uint32_t amax = 0u;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t x = F::abs_bits(vals[j]);
    amax = x > amax ? x : amax;
  }
  return F::scale_of(u2f(amax), extra...);
}

// Encode n values of one block: its block_scale, codes by F::encode; returns the scale.
template <class F>
inline float encode_block(typename F::raw* __restrict r, const int64_t n, const float* __restrict vals,
                          const bool sr, const uint32_t* __restrict words) {
  const float sc = block_scale<F>(vals, n);
  const float inv = 1.0f / sc;
  if (sr) {
    for (int64_t j = 0; j < n; ++j) r[j] = F::encode(vals[j], inv, true, words[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) r[j] = F::encode(vals[j], inv, false, 0u);
  }
  return sc;
}

struct Item {
  int64_t t, a, b;
};

// Work items [k0, k1) of one pass; results go to out[k] (per item: non-finite or kept count), or
// for the scan to amax[3k..3k+2].
struct Span {
  int64_t k0, k1;
  int64_t* out;
  ItemStats* stats = nullptr;  // apply pass with step statistics: per item (else null)
  uint32_t* amax = nullptr;    // scan pass: per item the finite absmax bits of the new m, v, G
};

struct Buffers {
  std::vector<float> p, g, gp, m, v, e, seg;
  std::vector<uint32_t> w0, w1, w2;
  std::vector<uint32_t> bad;
  explicit Buffers(int64_t n)
      : p(n), g(n), gp(n), m(n), v(n), e(n), seg(n), w0(n, 0u), w1(n, 0u), w2(n, 0u), bad(n, 0) {}
};

// A thread's buffers of the vector loops: the random words of a chunk per purpose (with the
// slack of vec::philox_run), block formats' new fp32 values (m, v, G; W floats of slack) and, for
// packed 4-bit state, a block's decoded values.
struct VecBuffers {
  std::vector<uint32_t> w[3];
  std::vector<float> mo, vo, Go, mi, vi, Gi;
  VecBuffers(int64_t chunk, int64_t block, bool packed) {
    for (auto& x : w) x.resize((size_t)(chunk + vec::WORD_SLACK));
    for (auto* b : {&mo, &vo, &Go}) b->resize(block > 0 ? (size_t)(block + vec::W) : 0);
    for (auto* b : {&mi, &vi, &Gi}) b->resize(packed ? (size_t)(block + vec::W) : 0);
  }
};

// Effective segment length of a tensor (a segment never exceeds the tensor).
inline int64_t seg_len(const TensorRef& t) { return std::min(t.seglen, t.numel); }
inline int64_t seg_count(const TensorRef& t) { return (t.numel + seg_len(t) - 1) / seg_len(t); }

template <int K>
struct GroupKernel {
  static constexpr bool HAS_M = kind_has_m(K);
  static constexpr bool HAS_V = kind_has_v(K);
  static constexpr bool STO = kind_stochastic(K);

  const Call& c;
  const Scalars& s;
  int pf, sf;          // param and state formats
  bool needs_seg;      // per-element segment value (norm or cell envelope)
  bool elem_env;       // element envelope state
  bool sign_words;     // which purposes of random bits this call draws (random bits v2): the
  bool state_words;    // stochastic sign, state rounding (a rounded state format), parameter
  bool param_words;    // rounding (a rounded parameter format)
  int64_t tile;
  std::vector<Item> items;
  std::vector<int64_t> item_base;  // first work item of each tensor (item_base[n] = items.size())
  struct Chunked {
    int64_t first, cps, count;  // first partial, chunks per segment, chunks of the tensor
  };
  std::vector<Chunked> ch;        // per tensor: its reduction chunks
  std::vector<double> part;       // per chunk: its partial sum (or max)
  std::vector<int64_t> seg_base;  // first segment of each tensor in segv
  std::vector<float> segv;        // per segment: fp32 norm, or new envelope value
  std::vector<float> cscale;      // per tensor: cautious scale
  std::vector<float> new_tscale;  // per tensor: this step's tensor scales of m, v, G (NVFP4; else empty)
  std::vector<uint32_t> item_amax;  // per work item: the finite absmax bits of its new m, v, G (the scan)

  GroupKernel(const Call& call, int pfmt, int sfmt) : c(call), s(call.s), pf(pfmt), sf(sfmt) {
    needs_seg = kind_kappa_norm(K) || (STO && s.envelope != ENV_ELEMENT);
    elem_env = STO && s.envelope == ENV_ELEMENT;
    sign_words = kind_draws_sign(K);
    state_words = s.state_stochastic_rounding && sf != FMT_FP32 && (HAS_M || HAS_V || elem_env);
    param_words = s.param_stochastic_rounding && pf != FMT_FP32;
    tile = fmt_block_scaled(sf) ? c.block : TILE;
    const int64_t step = fmt_block_scaled(sf) ? std::max<int64_t>(c.block, (ITEM / c.block) * c.block) : ITEM;
    for (int64_t i = 0; i < (int64_t)c.t.size(); ++i) {
      item_base.push_back((int64_t)items.size());
      for (int64_t a = 0; a < c.t[i].numel; a += step)
        items.push_back(Item{i, a, std::min(a + step, c.t[i].numel)});
    }
    item_base.push_back((int64_t)items.size());
  }

  // ================================================================ the scalar tiles (oracle)
  // Separate functions with restrict pointers and scalars by value; the prologue runs as its
  // own loop with the optional steps as exact multiplications (g*1 = g, g*-1 = -g).
  static void prologue_loop(const Scalars sc, const int64_t n, const float* __restrict p,
                            const float* __restrict g, float* __restrict gout, uint32_t* __restrict bad) {
    const float mul = sc.has_inv_scale ? sc.inv_scale : 1.0f;
    const float sgn = sc.maximize ? -1.0f : 1.0f;
    const float l2 = sc.l2;
    if (l2 != 0.0f) {
      for (int64_t j = 0; j < n; ++j) {
        const float x = (g[j] * mul) * sgn;
        const bool b = !finite32(x);
        bad[j] = b;
        gout[j] = (b ? 0.0f : x) + l2 * p[j];
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        const float x = (g[j] * mul) * sgn;
        const bool b = !finite32(x);
        bad[j] = b;
        gout[j] = b ? 0.0f : x;
      }
    }
  }

  // The decoded inputs of element j of a tile (absent states read as 0).
  __attribute__((always_inline)) static inline ElemIn elem_in(const float* __restrict p, const float* __restrict g,
                                                              const float* __restrict m, const float* __restrict v,
                                                              const float* __restrict E, const int64_t j) {
    ElemIn in;
    in.p = p[j];
    in.g = g[j];
    in.m = HAS_M ? m[j] : 0.0f;
    in.v = HAS_V ? v[j] : 0.0f;
    in.G = STO ? E[j] : 0.0f;
    return in;
  }

  // STATS: step statistics into st (the update p_new - p in fp32, 0 where bad, squared and summed
  // in fp64; sign reversals against sgn, which takes this step's signs; |new state| maxima).
  template <bool CAUTIOUS, bool STATS>
  __attribute__((noipa)) static int64_t apply_tile(const Scalars sc, const float cs, const float bc1,
                                                   const float bc2, const int64_t n, float* __restrict p,
                                                   const float* __restrict g, float* __restrict m,
                                                   float* __restrict v, float* __restrict E,
                                                   const float* __restrict seg, const uint32_t* __restrict W0,
                                                   const uint32_t* __restrict badv, int8_t* __restrict sgn,
                                                   ItemStats* st) {
    const float lr = sc.lr, decay = sc.decay;
    const bool elem_env = sc.envelope == ENV_ELEMENT;
    int64_t nbad = 0;
    for (int64_t j = 0; j < n; ++j) {
      const ElemIn in = elem_in(p, g, m, v, E, j);
      const bool bad = badv[j] != 0;
      const ElemOut o = direction_after_prologue<K>(sc, in, g[j], bad, seg[j], W0[j], bc1, bc2);
      float u = o.u;
      if (CAUTIOUS) u = cautious_apply(o.u, o.g, cs);
      p[j] = epilogue(in.p, u, lr, decay, bad);  // where bad everything keeps its value
      if (HAS_M) m[j] = bad ? in.m : o.m;
      if (HAS_V) v[j] = bad ? in.v : o.v;
      if (STO) E[j] = bad ? in.G : o.G;
      nbad += bad ? 1 : 0;
      if (STATS) {
        stats_update(*st, in.p, p[j], u, bad, sgn[j]);
        if (HAS_M) stats_absmax(st->am, m[j]);
        if (HAS_V) stats_absmax(st->av, v[j]);
        if (STO && elem_env) stats_absmax(st->aG, E[j]);
      }
    }
    return nbad;
  }

  static int64_t apply_loop(const Scalars sc, const float cs, const float bc1, const float bc2,
                            const int64_t n, float* __restrict p, const float* __restrict g,
                            float* __restrict m, float* __restrict v, float* __restrict E,
                            const float* __restrict seg, const uint32_t* __restrict W0,
                            const uint32_t* __restrict badv, int8_t* sgn, ItemStats* st) {
    if (st) {
      return sc.cautious ? apply_tile<true, true>(sc, cs, bc1, bc2, n, p, g, m, v, E, seg, W0, badv, sgn, st)
                         : apply_tile<false, true>(sc, cs, bc1, bc2, n, p, g, m, v, E, seg, W0, badv, sgn, st);
    }
    return sc.cautious ? apply_tile<true, false>(sc, cs, bc1, bc2, n, p, g, m, v, E, seg, W0, badv, nullptr, nullptr)
                       : apply_tile<false, false>(sc, cs, bc1, bc2, n, p, g, m, v, E, seg, W0, badv, nullptr, nullptr);
  }

  __attribute__((noipa)) static int64_t count_loop(const Scalars sc, const float bc1, const float bc2,
                                                   const int64_t n, const float* __restrict p,
                                                   const float* __restrict g, const float* __restrict m,
                                                   const float* __restrict v, const float* __restrict E,
                                                   const float* __restrict seg, const uint32_t* __restrict W0,
                                                   const uint32_t* __restrict badv) {
    int64_t kept = 0;
    for (int64_t j = 0; j < n; ++j) {
      const ElemIn in = elem_in(p, g, m, v, E, j);
      const ElemOut o = direction_after_prologue<K>(sc, in, g[j], badv[j] != 0, seg[j], W0[j], bc1, bc2);
      kept += cautious_keep(o.u, o.g) ? 1 : 0;
    }
    return kept;
  }

  // The decoded inputs of a tile: p, the gradient after the prologue (gp) and its bad flags, the
  // states (old tensor scales), the segment values and the words of the purposes this pass draws
  // (ROUNDING: the state and parameter rounding words too).
  struct TileIn {
    float *p, *gp, *m, *v, *E, *seg;
    uint32_t *W0, *W1, *W2, *badv;
  };
  template <bool ROUNDING>
  TileIn tile_in(const TensorRef& t, int64_t tix, int64_t a, int64_t n, Buffers& B, const bool simd) const {
    TileIn in{nullptr, B.gp.data(), B.m.data(), B.v.data(), B.e.data(), B.seg.data(),
              B.w0.data(), B.w1.data(), B.w2.data(), B.bad.data()};
    if (needs_seg) {
      const int64_t L = seg_len(t);
      const float* sv = segv.data() + seg_base[tix];
      int64_t i = a;
      while (i < a + n) {
        const int64_t sidx = i / L;
        const int64_t e = std::min((sidx + 1) * L, a + n);
        const float val = sv[sidx];
        for (int64_t k = i; k < e; ++k) in.seg[k - a] = val;
        i = e;
      }
    }
    const uint64_t i0 = t.offset + (uint64_t)a;  // the full-tensor index of element a
    if (sign_words) philox_words(t.k0, t.k1, PURPOSE_SIGN, i0, n, in.W0, simd);
    if (ROUNDING && state_words) philox_words(t.k0, t.k1, PURPOSE_STATE_ROUNDING, i0, n, in.W1, simd);
    if (ROUNDING && param_words) philox_words(t.k0, t.k1, PURPOSE_PARAM_ROUNDING, i0, n, in.W2, simd);
    in.p = load_range(pf, t.p, nullptr, 0, a, n, B.p.data(), simd, 1.0f);
    const float* g = load_range(pf, const_cast<void*>(t.g), nullptr, 0, a, n, B.g.data(), simd, 1.0f);
    if (HAS_M) in.m = load_range(sf, t.m, t.m_scale, c.block, a, n, B.m.data(), simd, tensor_scale_at(t.m_tscale));
    if (HAS_V) in.v = load_range(sf, t.v, t.v_scale, c.block, a, n, B.v.data(), simd, tensor_scale_at(t.v_tscale));
    if (elem_env) in.E = load_range(sf, t.G, t.G_scale, c.block, a, n, B.e.data(), simd, tensor_scale_at(t.G_tscale));
    prologue_loop(s, n, in.p, g, in.gp, in.badv);
    return in;
  }

  // Decodes the tile, evaluates the rule and (STORE) writes the results, or (COUNT) returns
  // the number of kept cautious coordinates.  Returns the non-finite count when STORE.
  template <bool STORE>
  int64_t tile_eval(const TensorRef& t, int64_t tix, int64_t a, int64_t n, Buffers& B, const bool simd,
                    ItemStats* st) const {
    const TileIn in = tile_in<STORE>(t, tix, a, n, B, simd);
    const float cs = s.cautious ? cscale[tix] : 1.0f;
    const int64_t acc = STORE ? apply_loop(s, cs, t.bc1, t.bc2, n, in.p, in.gp, in.m, in.v, in.E, in.seg, in.W0,
                                           in.badv, st ? t.sign + a : nullptr, st)
                              : count_loop(s, t.bc1, t.bc2, n, in.p, in.gp, in.m, in.v, in.E, in.seg, in.W0, in.badv);
    if (STORE) {
      store_range(pf, t.p, nullptr, 0, a, n, in.p, param_words, in.W2, simd, 1.0f);
      if (HAS_M) store_range(sf, t.m, t.m_scale, c.block, a, n, in.m, state_words, in.W1, simd, new_ts(tix, 0));
      if (HAS_V) store_range(sf, t.v, t.v_scale, c.block, a, n, in.v, state_words, in.W1, simd, new_ts(tix, 1));
      if (elem_env) store_range(sf, t.G, t.G_scale, c.block, a, n, in.E, state_words, in.W1, simd, new_ts(tix, 2));
    }
    return acc;
  }

  // This step's tensor scale of state slot (0: m, 1: v, 2: G) of tensor tix, which its encode is
  // relative to (NVFP4; 1 for every other format, which ignores it).
  float new_ts(const int64_t tix, const int slot) const {
    return new_tscale.empty() ? 1.0f : new_tscale[3 * (size_t)tix + slot];
  }

  // ================================================================ tensor scales (NVFP4)
  // The finite absmax (as integer bits, FmtNVFP4::abs_bits) of the new m, v and element G of n
  // elements -- the value the apply pass stores, the old one where bad -- maxed into am[0..2].
  __attribute__((noipa)) static void scan_loop(const Scalars sc, const float bc1, const float bc2, const int64_t n,
                                               const float* __restrict p, const float* __restrict g,
                                               const float* __restrict m, const float* __restrict v,
                                               const float* __restrict E, const float* __restrict seg,
                                               const uint32_t* __restrict W0, const uint32_t* __restrict badv,
                                               uint32_t* __restrict am) {
    for (int64_t j = 0; j < n; ++j) {
      const ElemIn in = elem_in(p, g, m, v, E, j);
      const bool bad = badv[j] != 0;
      const ElemOut o = direction_after_prologue<K>(sc, in, g[j], bad, seg[j], W0[j], bc1, bc2);
      if (HAS_M) am[0] = std::max(am[0], FmtNVFP4::abs_bits(bad ? in.m : o.m));
      if (HAS_V) am[1] = std::max(am[1], FmtNVFP4::abs_bits(bad ? in.v : o.v));
      if (STO && sc.envelope == ENV_ELEMENT) am[2] = std::max(am[2], FmtNVFP4::abs_bits(bad ? in.G : o.G));
    }
  }

  // The tensor scales of this step's new state of tensors [t0, t1) into new_tscale (three per
  // tensor: m, v, G): the scan pass over their work items (item_amax: each item's finite absmax
  // bits, from the vector loops or scan_loop's tiles), then per tensor
  // S = FmtNVFP4::tensor_scale_of(T), T the max of its items' absmax (an integer max: independent
  // of the thread count).  The apply pass encodes against them.
  void scan_tensor_scales(const int64_t t0, const int64_t t1) {
    run_items<vec::SCAN>(Span{item_base[t0], item_base[t1], nullptr, nullptr, item_amax.data()});
    for (int64_t i = t0; i < t1; ++i) {
      for (int slot = 0; slot < 3; ++slot) {
        uint32_t T = 0u;
        for (int64_t k = item_base[i]; k < item_base[i + 1]; ++k) T = std::max(T, item_amax[3 * k + slot]);
        new_tscale[3 * i + slot] = FmtNVFP4::tensor_scale_of(u2f(T));
      }
    }
  }

  // Store the tensor scales of tensors [t0, t1) (after their apply pass, which decodes the old ones).
  void put_tensor_scales(const int64_t t0, const int64_t t1) const {
    for (int64_t i = t0; i < t1; ++i) {
      const TensorRef& t = c.t[i];
      float* const dst[3] = {t.m_tscale, t.v_tscale, t.G_tscale};
      for (int slot = 0; slot < 3; ++slot)
        if (dst[slot] != nullptr) *dst[slot] = new_tscale[3 * i + slot];
    }
  }

  // The tiles of work items [ib, ie) of span r (pass PASS) into r.out[k] (the scan: r.amax).
  template <vec::Pass PASS>
  void tile_items(const int64_t ib, const int64_t ie, const Span& r, std::unique_ptr<Buffers>& B,
                  const bool simd) const {
    if (!B) B.reset(new Buffers(tile));
    for (int64_t k = ib; k < ie; ++k) {
      const Item& it = items[k];
      const TensorRef& t = c.t[it.t];
      int64_t acc = 0;
      for (int64_t a = it.a; a < it.b; a += tile) {
        const int64_t n = std::min(tile, it.b - a);
        if constexpr (PASS == vec::SCAN) {
          const TileIn in = tile_in<false>(t, it.t, a, n, *B, simd);
          scan_loop(s, t.bc1, t.bc2, n, in.p, in.gp, in.m, in.v, in.E, in.seg, in.W0, in.badv, r.amax + 3 * k);
        } else {
          acc += tile_eval<PASS == vec::APPLY>(t, it.t, a, n, *B, simd, r.stats ? r.stats + k : nullptr);
        }
      }
      if (PASS != vec::SCAN) r.out[k] = acc;
    }
  }

  // ================================================================ the vector loops
  // Calls fn(a0, a1, seg value) over the pieces of [a, e) of constant segment.
  template <class Fn>
  void seg_pieces(const TensorRef& t, int64_t tix, int64_t a, int64_t e, Fn&& fn) const {
    if (!needs_seg) {
      fn(a, e, 0.0f);
      return;
    }
    const int64_t L = seg_len(t);
    const float* sv = segv.data() + seg_base[tix];
    for (int64_t i = a; i < e;) {
      const int64_t sidx = i / L;
      const int64_t j = std::min((sidx + 1) * L, e);
      fn(i, j, sv[sidx]);
      i = j;
    }
  }

  // Whether elements [a, e) of tensor t lie in one segment, whose value goes to sv (0 without).
  bool one_segment(const TensorRef& t, const int64_t tix, const int64_t a, const int64_t e, float& sv) const {
    sv = 0.0f;
    if (!needs_seg) return true;
    const int64_t L = seg_len(t);
    if (a / L != (e - 1) / L) return false;
    sv = segv[seg_base[tix] + a / L];
    return true;
  }

  // Elements whose random words the vector loops draw at once: a chunk of TILE, or for block
  // formats whole blocks, TILE elements' worth where a block is shorter (a draw computes whole
  // groups of Philox calls: vec::GROUP elements, 128 on AVX-512, 4x an MX block of 32).
  int64_t words_span() const { return fmt_block_scaled(sf) ? std::max(c.block, (TILE / c.block) * c.block) : TILE; }

  // The words of elements [a, a+n) of tensor t for the purposes pass `pass` draws (null: none).
  void draw(const TensorRef& t, const int64_t a, const int64_t n, const vec::Pass pass, VecBuffers& VB,
            const uint32_t* (&w)[3]) const {
    const uint64_t i0 = t.offset + (uint64_t)a;
    const bool store = pass == vec::APPLY;
    w[0] = sign_words && pass != vec::SCAN ? vec::philox_run(t.k0, t.k1, PURPOSE_SIGN, i0, n, VB.w[0].data())
                                           : nullptr;
    w[1] = store && state_words ? vec::philox_run(t.k0, t.k1, PURPOSE_STATE_ROUNDING, i0, n, VB.w[1].data())
                                : nullptr;
    w[2] = store && param_words ? vec::philox_run(t.k0, t.k1, PURPOSE_PARAM_ROUNDING, i0, n, VB.w[2].data())
                                : nullptr;
  }

  // The first bytes of the next work item's parameter, gradient and state: on a list of small
  // tensors the loads of an item otherwise wait for the cache one tensor after another.
  template <class PF, class SF>
  void prefetch_item(const Item& it) const {
    const TensorRef& t = c.t[it.t];
    __builtin_prefetch((const typename PF::raw*)t.p + it.a, 1);
    __builtin_prefetch((const typename PF::raw*)t.g + it.a, 0);
    const int64_t i = SF::packed ? it.a >> 1 : it.a;  // (packed: two codes a byte)
    if (HAS_M) __builtin_prefetch((const typename SF::raw*)t.m + i, 1);
    if (HAS_V) __builtin_prefetch((const typename SF::raw*)t.v + i, 1);
  }

  // Whether kind K over these formats has the vector loops (Lion-kappa lp does not: pow).
  template <class PF, class SF>
  static constexpr bool vec_covered() {
    return K != K_LION_LP && vec::VFmt<PF>::ok && vec::VFmt<SF>::ok;
  }

  // One work item through the vector loops in pass PASS (COUNT: the cautious count; SCAN: the
  // finite absmax bits of the new m, v, G maxed into amax[0..2]).  Element formats: chunks of TILE
  // elements (their random words drawn first) split into pieces of constant segment; FP8/FP4
  // state: one block at a time (items start on a block boundary; packed codes decoded to fp32
  // with the block's multiplier under the old tensor scale), its pieces writing the new fp32
  // values to VB's block buffers, then the block encoded (NVFP4: under this step's tensor scale);
  // whole blocks of the format's default size (VFmt::regs_block) in registers (vec::BlockRegs),
  // W of them at once (BlockRegs::group) where they lie in one draw and one segment.
  template <vec::Pass PASS, bool STATS, class PF, class SF>
  int64_t vec_item(const Item& it, const vec::Loop<K, PF, SF>& loop, VecBuffers& VB, ItemStats* out,
                   uint32_t* amax) const {
    using L = vec::Loop<K, PF, SF>;
    using PR = typename PF::raw;
    using SR = typename SF::raw;
    using Dec = typename L::Dec;
    const TensorRef& t = c.t[it.t];
    const typename L::Tens T{t.bc1, t.bc2, s.cautious ? cscale[it.t] : 1.0f};
    PR* p = (PR*)t.p;
    const PR* g = (const PR*)t.g;
    SR* m = (SR*)t.m;
    SR* v = (SR*)t.v;
    SR* E = elem_env ? (SR*)t.G : nullptr;
    int8_t* sg = STATS ? t.sign : nullptr;
    int64_t acc = 0;
    const uint32_t* w[3];
    typename L::Stats st;
    if constexpr (STATS) st = typename L::Stats{vec::vd{}, vec::vi{}, vec::vf{}, vec::vf{}, vec::vf{}};
    if constexpr (!SF::blocked) {
      const Dec none;
      typename L::Acc a;
      for (int64_t c0 = it.a; c0 < it.b; c0 += TILE) {
        const int64_t c1 = std::min(c0 + TILE, it.b);
        draw(t, c0, c1 - c0, PASS, VB, w);
        seg_pieces(t, it.t, c0, c1, [&](int64_t a0, int64_t a1, float sv) {
          const int64_t o = a0 - c0;
          const typename L::Ptr P{p + a0, g + a0, HAS_M ? m + a0 : nullptr, HAS_V ? v + a0 : nullptr,
                                  E ? E + a0 : nullptr, nullptr, nullptr, nullptr,
                                  w[0] ? w[0] + o : nullptr, w[1] ? w[1] + o : nullptr, w[2] ? w[2] + o : nullptr,
                                  sg ? sg + a0 : nullptr};
          acc += loop.template run_acc<PASS, STATS>(P, T, a1 - a0, sv, none, none, none, a, st);
        });
      }
    } else {
      using VSF = vec::VFmt<SF>;
      using LR = typename L::SR;  // the loop's state: the codes, or (packed) the block decoded to fp32
      const int64_t B = c.block;
      // a block's first code: packed codes are two a byte (blocks are even)
      auto at = [](SR* r, int64_t b0) { return SF::packed ? r + (b0 >> 1) : r + b0; };
      // a block's multiplier under the stored (old) tensor scale (its scale but for NVFP4)
      auto mult = [](const void* sc, int64_t blk, const float* ts) {
        return VSF::multiplier(SF::get_scale(sc, blk), tensor_scale_at(ts));
      };
      typename L::Acc scan;  // SCAN: the lanes' absmax over the item's blocks
      const int64_t D = words_span();
      const uint32_t* wd[3] = {};  // the words of [d0, d0 + D)
      int64_t d0 = it.a;
      for (int64_t b0 = it.a; b0 < it.b; b0 += B) {
        const int64_t b1 = std::min(b0 + B, it.b), nb = b1 - b0, blk = b0 / B;
        if ((b0 - it.a) % D == 0) draw(t, d0 = b0, std::min(D, it.b - b0), PASS, VB, wd);
        for (int i = 0; i < 3; ++i) w[i] = wd[i] ? wd[i] + (b0 - d0) : nullptr;
        if constexpr (PASS != vec::COUNT && !STATS) {  // whole default blocks in registers (vec::BlockRegs)
          constexpr int RB = VSF::regs_block, R = RB / vec::W;
          using BR = vec::BlockRegs<K, PF, SF, R>;
          constexpr int64_t GN = BR::G * RB;  // a group's elements (it divides D)
          float sv;
          const bool grp = B == RB && b0 + GN <= it.b && b0 - d0 + GN <= D && one_segment(t, it.t, b0, b0 + GN, sv);
          if (grp || (nb == RB && B == RB && one_segment(t, it.t, b0, b1, sv))) {
            const typename L::Ptr P{p + b0, g + b0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                    w[0], w[1], w[2], nullptr};
            SR* const st[3] = {HAS_M ? at(m, b0) : nullptr, HAS_V ? at(v, b0) : nullptr, E ? at(E, b0) : nullptr};
            void* const sp[3] = {t.m_scale, t.v_scale, t.G_scale};
            const float* const tsp[3] = {t.m_tscale, t.v_tscale, t.G_tscale};
            const float ts[3] = {new_ts(it.t, 0), new_ts(it.t, 1), new_ts(it.t, 2)};
            float mu[3] = {}, sc[3];
            if (grp) {
              const float ots[3] = {tensor_scale_at(tsp[0]), tensor_scale_at(tsp[1]), tensor_scale_at(tsp[2])};
              vec::vu ga[3] = {};
              loop.with_form(P, [&](auto form) {
                const int64_t bad = BR::template group<PASS, decltype(form)>(loop, P, T, sv, st, sp, blk, ots, ts, ga);
                if constexpr (PASS == vec::APPLY) acc += bad;
              });
              if constexpr (PASS == vec::SCAN)
                scan.am = vec::maxu31(scan.am, ga[0]), scan.av = vec::maxu31(scan.av, ga[1]),
                scan.aG = vec::maxu31(scan.aG, ga[2]);
              b0 += GN - B;
              continue;
            }
            for (int i = 0; i < 3; ++i)
              if (st[i]) mu[i] = mult(sp[i], blk, tsp[i]);
            loop.with_form(P, [&](auto form) {
              if constexpr (PASS == vec::SCAN) {
                vec::vf x[3][R];
                vec::vi bad{};
                BR::template eval<PASS, decltype(form)>(loop, P, 0, T, sv, st, mu, x[0], x[1], x[2], scan.am, scan.av,
                                                        scan.aG, bad);
              } else {
                acc += BR::template apply<decltype(form)>(loop, P, T, sv, st, mu, ts, sc);
              }
            });
            if constexpr (PASS == vec::APPLY) {
              for (int i = 0; i < 3; ++i)
                if (st[i]) SF::put_scale(sp[i], blk, sc[i]);
            }
            continue;
          }
        }
        LR *ml = nullptr, *vl = nullptr, *El = nullptr;
        Dec md, vd, Gd;
        if constexpr (SF::packed) {
          if (HAS_M) VSF::decode(at(m, b0), nb, mult(t.m_scale, blk, t.m_tscale), ml = VB.mi.data());
          if (HAS_V) VSF::decode(at(v, b0), nb, mult(t.v_scale, blk, t.v_tscale), vl = VB.vi.data());
          if (E) VSF::decode(at(E, b0), nb, mult(t.G_scale, blk, t.G_tscale), El = VB.Gi.data());
        } else {
          ml = m ? m + b0 : nullptr, vl = v ? v + b0 : nullptr, El = E ? E + b0 : nullptr;
          if (HAS_M) md = Dec(ml, nb, SF::get_scale(t.m_scale, blk));
          if (HAS_V) vd = Dec(vl, nb, SF::get_scale(t.v_scale, blk));
          if (E) Gd = Dec(El, nb, SF::get_scale(t.G_scale, blk));
        }
        typename L::Acc blk_acc;
        typename L::Acc& a = PASS == vec::SCAN ? scan : blk_acc;
        seg_pieces(t, it.t, b0, b1, [&](int64_t a0, int64_t a1, float sv) {
          const int64_t o = a0 - b0;
          const typename L::Ptr P{p + a0, g + a0, HAS_M ? ml + o : nullptr, HAS_V ? vl + o : nullptr,
                                  E ? El + o : nullptr, VB.mo.data() + o, VB.vo.data() + o, VB.Go.data() + o,
                                  w[0] ? w[0] + o : nullptr, w[1] ? w[1] + o : nullptr, w[2] ? w[2] + o : nullptr,
                                  sg ? sg + a0 : nullptr};
          acc += loop.template run_acc<PASS, STATS>(P, T, a1 - a0, sv, md, vd, Gd, a, st);
        });
        if (PASS != vec::APPLY) continue;
        auto enc = [&](SR* r, const float* vals, const vec::vu am, const int slot) {  // (NVFP4: this step's S)
          return VSF::encode_amax(at(r, b0), nb, vals, vec::hmax31(am), w[1], new_ts(it.t, slot));
        };
        if (HAS_M) SF::put_scale(t.m_scale, blk, enc(m, VB.mo.data(), a.am, 0));
        if (HAS_V) SF::put_scale(t.v_scale, blk, enc(v, VB.vo.data(), a.av, 1));
        if (E) SF::put_scale(t.G_scale, blk, enc(E, VB.Go.data(), a.aG, 2));
      }
      if constexpr (PASS == vec::SCAN) {
        const uint32_t got[3] = {vec::hmax31(scan.am), vec::hmax31(scan.av), vec::hmax31(scan.aG)};
        for (int slot = 0; slot < 3; ++slot) amax[slot] = std::max(amax[slot], got[slot]);
      }
    }
    if constexpr (STATS) {  // the lanes in lane order
      for (int i = 0; i < vec::W / 2; ++i) out->sq += st.sq[i];
      out->flips = -vec::hsum(st.flips);
      for (int i = 0; i < vec::W; ++i) {
        out->am = nanmax(out->am, st.xm[i]);
        out->av = nanmax(out->av, st.xv[i]);
        out->aG = nanmax(out->aG, st.xG[i]);
      }
    }
    return acc;
  }

  // Work items of span r in pass PASS, by the vector loops where this thread may run them
  // (simd_here) and the formats have them, else by the tiles.
  template <vec::Pass PASS, class PF, class SF>
  void items_pf(const Span r) const {
    at::parallel_for(r.k0, r.k1, 1, [&](int64_t ib, int64_t ie) {
      const bool simd = simd_here();
      std::unique_ptr<Buffers> B;
      if constexpr (vec_covered<PF, SF>()) {
        if (simd) {
          const vec::Loop<K, PF, SF> loop(vec::VScalars(s), elem_env, s.cautious != 0);
          VecBuffers VB(words_span(), fmt_block_scaled(sf) ? c.block : 0, SF::packed);
          if (PASS == vec::APPLY && r.stats) {
            for (int64_t k = ib; k < ie; ++k) {
              if (k + 1 < ie) prefetch_item<PF, SF>(items[k + 1]);
              r.out[k] = vec_item<vec::APPLY, true, PF, SF>(items[k], loop, VB, r.stats + k, nullptr);
            }
          } else {
            for (int64_t k = ib; k < ie; ++k) {
              if (k + 1 < ie) prefetch_item<PF, SF>(items[k + 1]);
              const int64_t n = vec_item<PASS, false, PF, SF>(items[k], loop, VB, nullptr,
                                                              PASS == vec::SCAN ? r.amax + 3 * k : nullptr);
              if (PASS != vec::SCAN) r.out[k] = n;
            }
          }
          return;
        }
      }
      tile_items<PASS>(ib, ie, r, B, simd);
    });
  }

  template <vec::Pass PASS, class PF>
  void items_p(const Span r) const {
    if constexpr (PASS == vec::SCAN) {
      if constexpr (HAS_M || HAS_V || STO) items_pf<PASS, PF, FmtNVFP4>(r);  // (the tensor-scaled format)
    } else if constexpr (!HAS_M && !HAS_V && !STO) {
      return items_pf<PASS, PF, FmtF32>(r);  // no state: the state format plays no part
    } else {
#define SIGNOPT_ITEMS_CASE(F, SF) \
  case F:                         \
    return items_pf<PASS, PF, SF>(r);
      switch (sf) { SIGNOPT_STATE_FORMATS(SIGNOPT_ITEMS_CASE) }
#undef SIGNOPT_ITEMS_CASE
      throw std::invalid_argument("signopt: unknown state format");
    }
  }

  // Pass PASS (apply, cautious count, or NVFP4's scan) over the work items of span r.
  template <vec::Pass PASS>
  void run_items(const Span r) const {
#define SIGNOPT_ITEMS_CASE(F, PF) \
  case F:                         \
    return items_p<PASS, PF>(r);
    switch (pf) { SIGNOPT_PARAM_FORMATS(SIGNOPT_ITEMS_CASE) }
#undef SIGNOPT_ITEMS_CASE
    throw std::invalid_argument("signopt: unknown parameter format");
  }

  // ================================================================ reduce pass
  // One partial per fixed chunk (RED_CHUNK elements of one segment); see rules.h for the order.
  // reduce_layout numbers the chunks and segments of every tensor once per call; reduce(t0, t1)
  // sums the chunks of tensors [t0, t1) and folds them into their segment values.
  void reduce_layout() {
    ch.resize(c.t.size());
    seg_base.assign(c.t.size() + 1, 0);
    int64_t total = 0;
    for (size_t i = 0; i < c.t.size(); ++i) {
      const TensorRef& t = c.t[i];
      const int64_t L = seg_len(t), nseg = seg_count(t);
      const int64_t cps = (L + RED_CHUNK - 1) / RED_CHUNK;
      const int64_t last = t.numel - (nseg - 1) * L;
      ch[i] = Chunked{total, cps, (nseg - 1) * cps + (last + RED_CHUNK - 1) / RED_CHUNK};
      total += ch[i].count;
      seg_base[i + 1] = seg_base[i] + nseg;
    }
    part.resize(total);
    segv.assign(seg_base.back(), 0.0f);
  }

  void reduce(const int64_t t0, const int64_t t1) {
    struct RItem {
      int64_t t, c0, c1;
    };
    std::vector<RItem> ritems;
    for (int64_t i = t0; i < t1; ++i) {
      const int64_t csize = std::min<int64_t>(seg_len(c.t[i]), RED_CHUNK);
      const int64_t per = std::max<int64_t>(1, ITEM / csize);
      for (int64_t k = 0; k < ch[i].count; k += per) ritems.push_back(RItem{i, k, std::min(k + per, ch[i].count)});
    }
    at::parallel_for(0, (int64_t)ritems.size(), 1, [&](int64_t ib, int64_t ie) {
      Buffers B(RED_CHUNK);
      std::vector<float> red(RED_CHUNK);
      const bool simd = simd_here();
      const vec::VScalars VS(s);
      for (int64_t r = ib; r < ie; ++r) {
        const RItem& ri = ritems[r];
        const TensorRef& t = c.t[ri.t];
        const int64_t L = seg_len(t), cps = ch[ri.t].cps;
        for (int64_t k = ri.c0; k < ri.c1; ++k) {
          const int64_t sidx = k / cps, kk = k % cps;
          const int64_t a = sidx * L + kk * RED_CHUNK;
          const int64_t n = std::min(std::min<int64_t>(RED_CHUNK, (sidx + 1) * L - a), t.numel - a);
          part[ch[ri.t].first + k] = chunk_part(t, a, n, B, red.data(), simd, VS);
        }
      }
    });
    // the segments' values from their chunks' partials (one pass over the partials, on this
    // thread: a second parallel section would cost a synchronisation of the threads per group)
    for (int64_t i = t0; i < t1; ++i) {
      const TensorRef& t = c.t[i];
      const int64_t nseg = seg_count(t), cps = ch[i].cps;
      for (int64_t sidx = 0; sidx < nseg; ++sidx) {
        const int64_t k0 = sidx * cps, k1 = std::min(k0 + cps, ch[i].count);
        const double* pp = part.data() + ch[i].first;
        if (STO) {
          float mx = 0.0f;
          for (int64_t k = k0; k < k1; ++k) mx = nanmax(mx, (float)pp[k]);
          segv[seg_base[i] + sidx] = fmax_ign(((const float*)t.G)[sidx] * s.envelope_decay, mx);
        } else {
          double sum = 0.0;
          for (int64_t k = k0; k < k1; ++k) sum += pp[k];
          segv[seg_base[i] + sidx] = norm_from_sum<K>(sum, s.lp_root);
        }
      }
    }
  }

  // The partial of one chunk: the fp64 norm sum (Lion-kappa) or the max of the envelope source
  // |d| / |g| (stochastic kinds), from the chunk's decoded values; the vector loops (simd) for
  // every kind but Lion-kappa lp.
  double chunk_part(const TensorRef& t, int64_t a, int64_t n, Buffers& B, float* red, const bool simd,
                    const vec::VScalars& VS) const {
    if constexpr (!kind_kappa_norm(K) && !STO) {
      return 0.0;  // no reduction
    }
    // without l2 weight decay the values do not depend on p: do not stream it in
    const float* p = s.l2 != 0.0f ? load_range(pf, t.p, nullptr, 0, a, n, B.p.data(), simd, 1.0f) : nullptr;
    const float* g = load_range(pf, const_cast<void*>(t.g), nullptr, 0, a, n, B.g.data(), simd, 1.0f);
    const float* m =
        HAS_M ? load_range(sf, t.m, t.m_scale, c.block, a, n, B.m.data(), simd, tensor_scale_at(t.m_tscale)) : nullptr;
    const float* v =
        HAS_V ? load_range(sf, t.v, t.v_scale, c.block, a, n, B.v.data(), simd, tensor_scale_at(t.v_tscale)) : nullptr;
    if constexpr (K != K_LION_LP) {
      if (simd) {
        if constexpr (STO) {
          return (double)vec::env_max<K>(VS, n, p, g, m, v, t.bc1, t.bc2);
        } else {
          return vec::norm_sum<K>(VS, n, p, g, m);
        }
      }
    }
    if constexpr (K == K_LION_NORM || K == K_LION_LP) {
      return s.l2 != 0.0f ? sum_loop<true>(s, n, p, g, m) : sum_loop<false>(s, n, nullptr, g, m);
    } else {
      if (s.l2 != 0.0f) {
        red_loop<true>(s, t.bc1, t.bc2, n, p, g, m, v, red);
      } else {
        red_loop<false>(s, t.bc1, t.bc2, n, nullptr, g, m, v, red);
      }
      return chunk_max(red, n);
    }
  }

  // The fp64 norm sum of n elements in the lane order of rules.h.
  template <bool L2>
  __attribute__((noipa)) static double sum_loop(const Scalars sc, const int64_t n, const float* __restrict p,
                                                const float* __restrict g, const float* __restrict m) {
    const float mul = sc.has_inv_scale ? sc.inv_scale : 1.0f;
    const float sg = sc.maximize ? -1.0f : 1.0f;
    const float l2 = sc.l2;
    double lanes[RED_LANES];
    for (int j = 0; j < RED_LANES; ++j) lanes[j] = 0.0;
    for (int64_t r = 0; r < n; r += RED_LANES) {
      const int64_t len = std::min<int64_t>(RED_LANES, n - r);
      for (int64_t j = 0; j < len; ++j) {
        ElemIn in;
        in.p = L2 ? p[r + j] : 0.0f;
        in.g = g[r + j];
        in.m = m[r + j];
        in.v = 0.0f;
        in.G = 0.0f;
        const float x = (in.g * mul) * sg;
        const bool bad = !finite32(x);
        float gg = bad ? 0.0f : x;
        if (L2) gg = gg + l2 * in.p;
        const float cval = direction_after_prologue<K>(sc, in, gg, bad, 1.0f, 0u, 1.0f, 1.0f).red;
        lanes[j] += norm_term<K>(cval, sc.lp_p);
      }
    }
    for (int stride = RED_LANES / 2; stride >= 1; stride /= 2)
      for (int j = 0; j < stride; ++j) lanes[j] += lanes[j + stride];
    return lanes[0];
  }

  // Reduction values of n elements (prologue as in prologue_loop: no per-flag control flow).
  template <bool L2>
  __attribute__((noipa)) static void red_loop(const Scalars sc, const float bc1, const float bc2, const int64_t n,
                                              const float* __restrict p, const float* __restrict g,
                                              const float* __restrict m, const float* __restrict v,
                                              float* __restrict red) {
    const float mul = sc.has_inv_scale ? sc.inv_scale : 1.0f;
    const float sg = sc.maximize ? -1.0f : 1.0f;
    const float l2 = sc.l2;
    for (int64_t j = 0; j < n; ++j) {
      ElemIn in;
      in.p = L2 ? p[j] : 0.0f;
      in.g = g[j];
      in.m = HAS_M ? m[j] : 0.0f;
      in.v = HAS_V ? v[j] : 0.0f;
      in.G = 0.0f;
      const float x = (in.g * mul) * sg;
      const bool bad = !finite32(x);
      float gg = bad ? 0.0f : x;
      if (L2) gg = gg + l2 * in.p;
      red[j] = direction_after_prologue<K>(sc, in, gg, bad, 1.0f, 0u, bc1, bc2).red;
    }
  }

  double chunk_max(const float* red, int64_t n) const {
    float mx = 0.0f;
    for (int64_t j = 0; j < n; ++j) mx = nanmax(mx, red[j]);
    return (double)mx;
  }

  // ================================================================ driver
  // Stored bytes of one element that every pass reads: p, g and the states.
  int64_t elem_bytes() const {
    const int64_t pb = pf == FMT_FP32 ? 4 : 2;
    const int64_t sb = sf == FMT_FP32 ? 4 : (fmt_block_scaled(sf) ? 1 : 2);
    return 2 * pb + sb * ((HAS_M ? 1 : 0) + (HAS_V ? 1 : 0) + (elem_env ? 1 : 0));
  }

  // End of the group of tensors that starts at t0: the following tensors while their elements
  // take at most GROUP_BYTES together (a larger tensor is a group alone).
  int64_t group_end(const int64_t t0) const {
    const int64_t eb = elem_bytes();
    int64_t t1 = t0 + 1, bytes = c.t[t0].numel * eb;
    while (t1 < (int64_t)c.t.size() && bytes + c.t[t1].numel * eb <= GROUP_BYTES) bytes += c.t[t1++].numel * eb;
    return t1;
  }

  // The passes run group by group: the reduce and count passes of a group's tensors, then its
  // apply pass, which finds g and the states still in cache when the group fits in L3 (without
  // a reduce or count pass, the whole call is one group).  Each pass splits the group's chunks
  // or work items over the threads; the values do not depend on the grouping.
  int64_t run() {
    if (c.skip) {  // nothing changes: the statistics say so (state not read: its absmax NaN)
      const int64_t n = count_nonfinite();
      if (c.stats) stats_skipped(c.stats, n);
      return n;
    }
    const bool tscaled = fmt_tensor_scale(sf) && (HAS_M || HAS_V || elem_env);
    const bool passes = needs_seg || s.cautious || tscaled;
    if (needs_seg) reduce_layout();
    if (s.cautious) cscale.resize(c.t.size());
    if (tscaled) {
      new_tscale.resize(3 * c.t.size());
      item_amax.assign(3 * items.size(), 0u);
    }
    std::vector<int64_t> bad(items.size(), 0), kept(s.cautious ? items.size() : 0, 0);
    std::vector<ItemStats> istats(c.stats ? items.size() : 0);
    for (int64_t t0 = 0, t1; t0 < (int64_t)c.t.size(); t0 = t1) {
      t1 = passes ? group_end(t0) : (int64_t)c.t.size();
      if (needs_seg) reduce(t0, t1);
      if (s.cautious) {
        run_items<vec::COUNT>(Span{item_base[t0], item_base[t1], kept.data()});
        for (int64_t i = t0; i < t1; ++i) {
          int64_t per = 0;
          for (int64_t k = item_base[i]; k < item_base[i + 1]; ++k) per += kept[k];
          cscale[i] = (float)c.t[i].numel / (float)(per + 1);
        }
      }
      if (tscaled) scan_tensor_scales(t0, t1);
      run_items<vec::APPLY>(Span{item_base[t0], item_base[t1], bad.data(), c.stats ? istats.data() : nullptr});
      if (tscaled) put_tensor_scales(t0, t1);
    }
    if (STO && s.envelope != ENV_ELEMENT) {
      for (size_t i = 0; i < c.t.size(); ++i)
        std::memcpy(c.t[i].G, segv.data() + seg_base[i], sizeof(float) * seg_count(c.t[i]));
    }
    int64_t total = 0;
    for (int64_t b : bad) total += b;
    if (c.stats) add_stats(istats, total);
    return total;
  }

  // The call's step statistics into c.stats (accumulated over a group's calls): the items' in
  // item order (so the fp64 sum does not depend on the thread count) and the segment envelopes'.
  void add_stats(const std::vector<ItemStats>& istats, const int64_t nonfinite) const {
    ItemStats all;
    for (const ItemStats& x : istats) stats_merge(all, x);
    if (STO && s.envelope != ENV_ELEMENT) {
      for (const float x : segv) stats_absmax(all.aG, x);
    }
    stats_accumulate(c.stats, all, nonfinite);
  }

  int64_t count_nonfinite() const {
    std::vector<int64_t> out(items.size(), 0);
    at::parallel_for(0, (int64_t)items.size(), 1, [&](int64_t ib, int64_t ie) {
      std::vector<float> gb(TILE);
      const bool simd = simd_here();
      for (int64_t k = ib; k < ie; ++k) {
        const Item& it = items[k];
        int64_t acc = 0;
        for (int64_t a = it.a; a < it.b; a += TILE) {
          const int64_t n = std::min(TILE, it.b - a);
          const float* g = load_range(pf, const_cast<void*>(c.t[it.t].g), nullptr, 0, a, n, gb.data(), simd, 1.0f);
          for (int64_t j = 0; j < n; ++j) {
            bool bad;
            prologue(s, 0.0f, g[j], bad);
            acc += bad ? 1 : 0;
          }
        }
        out[k] = acc;
      }
    });
    int64_t total = 0;
    for (int64_t b : out) total += b;
    return total;
  }
};

template <int K>
int64_t run_group(int pfmt, int sfmt, const Call& call) {
  GroupKernel<K> k(call, pfmt, sfmt);
  return k.run();
}

// Entry points, one per kernel group of the generated SIGNOPT_KINDS_<GROUP> lists (cpu_*.cpp;
// signopt.declaration.kernel_group), each a switch over its list's kinds.
#define SIGNOPT_RUN_GROUP_CASE(K) \
  case K:                         \
    return run_group<K>(pfmt, sfmt, call);
int64_t run_sign(int kind, int pfmt, int sfmt, const Call& call);
int64_t run_lion(int kind, int pfmt, int sfmt, const Call& call);
int64_t run_lion_norm(int kind, int pfmt, int sfmt, const Call& call);
int64_t run_stochastic(int kind, int pfmt, int sfmt, const Call& call);

}  // namespace cpu
}  // namespace signopt
