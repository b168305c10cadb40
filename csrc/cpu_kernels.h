// CPU kernels: one call runs a rule over a whole list of tensors of one (param dtype, state
// format) combination, multi-threaded with at::parallel_for over fixed work items.
//
// Passes (group by group: the first two over a group of tensors of at most GROUP_BYTES, then the
// group's apply pass, so that it finds g and the state in L3; see GroupKernel::run):
//   reduce  (lion l2/row_l2/lp norms, row/block/tensor envelopes): fixed chunks of each segment,
//           fp64 sums in the lane order of rules.h (or NaN-propagating max), folded in chunk order
//   count   (cautious): exact integer count of kept coordinates per tensor
//   apply   : tiles of decoded fp32 values -> rule core -> encoded stores (FP8: one block a tile);
//             fused load-rule-store loops for the deterministic kinds (fused_loop) and, with
//             AVX-512, the stochastic kinds with the element envelope (simd::fused_sto,
//             simd::fused_sto_blocks)
// Work items and chunks depend only on the tensor sizes, so results do not depend on the
// thread count.  With found_inf > 0 only the non-finite count runs (nothing is written).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "casts.h"
#include "cpu_philox.h"
#include "cpu_simd.h"
#include "group.h"
#include "rules.h"

namespace signopt {
namespace cpu {

constexpr int64_t ITEM = 16384;  // elements per work item
constexpr int64_t TILE = 512;    // elements per tile (element formats)
// Most stored bytes of a group of tensors whose passes run one after another (GroupKernel::run):
// a quarter of a 32 MiB L3, so that the apply pass finds what the reduce pass read still cached.
constexpr int64_t GROUP_BYTES = 8 << 20;

struct Call {
  std::vector<TensorRef> t;
  Scalars s;
  int64_t block;  // FP8 state block
  bool skip;      // found_inf > 0
};

// Decoded fp32 values of elements [a, a+n) (fp32 storage: the tensor memory itself, so the
// rule computes in place).  Blocked formats: scale[i / block] multiplies each code.
float* load_range(int fmt, void* raw, const float* scale, int64_t block, int64_t a, int64_t n, float* out);

// Store fp32 values of [a, a+n) (nothing for fp32, computed in place); for FP8, [a, a+n) is
// exactly one block and its new scale is written too.  sr: stochastic rounding with `words`.
// simd: the caller's thread may use the AVX-512 encoder (simd::mxcsr_ok(), checked once per call).
void store_range(int fmt, void* raw, float* scale, int64_t block, int64_t a, int64_t n, const float* vals,
                 bool sr, const uint32_t* words, bool simd);

// ---------------------------------------------------------------- FP8 block kernels
// Decode n codes of one block with its scale (vectorisable: bit operations of casts.h).
template <class F>
inline void load_block(const typename F::raw* __restrict r, const float sc, const int64_t n, float* __restrict out) {
  for (int64_t k = 0; k < n; ++k) out[k] = F::load(r[k], sc);
}

// Encode n values of one block: scale from the absmax of the finite values (an integer max
// over the bits of |x|), codes by F::encode; returns the scale.
template <class F>
inline float encode_block(typename F::raw* __restrict r, const int64_t n, const float* __restrict vals,
                          const bool sr, const uint32_t* __restrict words, const bool simd) {
#if defined(SIGNOPT_AVX512)
  if (!sr && simd) return simd::fp8_encode_block<F>(r, n, vals);
#endif
  uint32_t amax = 0u;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t x = F::abs_bits(vals[j]);
    amax = x > amax ? x : amax;
  }
  const float sc = F::scale_of(u2f(amax));
  const float inv = 1.0f / sc;
  if (sr) {
    for (int64_t j = 0; j < n; ++j) r[j] = F::encode(vals[j], inv, true, words[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) r[j] = F::encode(vals[j], inv, false, 0u);
  }
  return sc;
}

// Word 0 only of the Philox counters of elements base .. base+n-1 (the stochastic sign's bits):
// the AVX-512 loop (cpu_philox.h) where enabled, the scalar philox.h otherwise.
inline void philox_word0_range(const uint32_t k0, const uint32_t k1, const uint64_t base, const int64_t n,
                               uint32_t* __restrict W0) {
#if defined(SIGNOPT_AVX512)
  if (simd::simd_enabled()) {
    philox_w0_range_avx512(k0, k1, base, n, W0);
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) W0[j] = element_words(k0, k1, base + (uint64_t)j).w0;
}

struct Item {
  int64_t t, a, b;
};

// Work items [k0, k1) of one pass; results go to out[k] (per item: non-finite or kept count).
struct Span {
  int64_t k0, k1;
  int64_t* out;
};

// Tiles read Philox words 0..2 into w0, w1, w2 (philox_range), word 0 alone where only the sign
// draws (philox_word0_range): the words the declaration assigns.
static_assert(WORD_SIGN == 0 && WORD_STATE_ROUNDING == 1 && WORD_PARAM_ROUNDING == 2,
              "the CPU tiles read the sign from word 0, state rounding from word 1, parameter rounding from 2");

struct Buffers {
  std::vector<float> p, g, gp, m, v, e, seg;
  std::vector<uint32_t> w0, w1, w2;
  std::vector<uint32_t> bad;
  explicit Buffers(int64_t n)
      : p(n), g(n), gp(n), m(n), v(n), e(n), seg(n), w0(n, 0u), w1(n, 0u), w2(n, 0u), bad(n, 0) {}
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
  bool words;          // Philox words needed
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

  GroupKernel(const Call& call, int pfmt, int sfmt) : c(call), s(call.s), pf(pfmt), sf(sfmt) {
    needs_seg = kind_kappa_norm(K) || (STO && s.envelope != ENV_ELEMENT);
    elem_env = STO && s.envelope == ENV_ELEMENT;
    words = kind_draws_sign(K) || s.state_stochastic_rounding || s.param_stochastic_rounding;
    tile = fmt_block_scaled(sf) ? c.block : TILE;
    const int64_t step = fmt_block_scaled(sf) ? std::max<int64_t>(c.block, (ITEM / c.block) * c.block) : ITEM;
    for (int64_t i = 0; i < (int64_t)c.t.size(); ++i) {
      item_base.push_back((int64_t)items.size());
      for (int64_t a = 0; a < c.t[i].numel; a += step)
        items.push_back(Item{i, a, std::min(a + step, c.t[i].numel)});
    }
    item_base.push_back((int64_t)items.size());
  }

  // ---------------------------------------------------------------- fp32 tile loops
  // Separate functions with restrict pointers and scalars by value; the prologue runs as its
  // own loop with the optional steps as exact multiplications (g*1 = g, g*-1 = -g), so the
  // rule loops carry no per-flag control flow and vectorise.
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

  template <bool CAUTIOUS>
  __attribute__((noipa)) static int64_t apply_tile(const Scalars sc, const float cs, const float bc1,
                                                      const float bc2, const int64_t n, float* __restrict p,
                                                      const float* __restrict g, float* __restrict m,
                                                      float* __restrict v, float* __restrict E,
                                                      const float* __restrict seg, const uint32_t* __restrict W0,
                                                      const uint32_t* __restrict badv, const uint32_t oz) {
    const float lr = sc.lr, decay = sc.decay;
    int64_t nbad = 0;
    for (int64_t j = 0; j < n; ++j) {
      const ElemIn in = elem_in(p, g, m, v, E, j);
      const bool bad = badv[j] != 0;
      const ElemOut o = direction_after_prologue<K>(sc, in, g[j], bad, seg[j], W0[j], bc1, bc2);
      float u = o.u;
      if (CAUTIOUS) u = o.u * o.g > 0.0f ? o.u * cs : 0.0f;  // cautious_apply
      // where bad everything keeps its value: "loaded ^ opaque zero" (oz = 0) keeps gcc from
      // turning these into stores masked by !bad (slow on Zen 4), as in fused_loop_impl
      const float q = in.p * decay - lr * u;  // epilogue()
      p[j] = bad ? u2f(f2u(in.p) ^ oz) : q;
      if (HAS_M) m[j] = bad ? u2f(f2u(in.m) ^ oz) : o.m;
      if (HAS_V) v[j] = bad ? u2f(f2u(in.v) ^ oz) : o.v;
      if (STO) E[j] = bad ? u2f(f2u(in.G) ^ oz) : o.G;
      nbad += bad ? 1 : 0;
    }
    return nbad;
  }

  static int64_t apply_loop(const Scalars sc, const float cs, const float bc1, const float bc2,
                            const int64_t n, float* __restrict p, const float* __restrict g,
                            float* __restrict m, float* __restrict v, float* __restrict E,
                            const float* __restrict seg, const uint32_t* __restrict W0,
                            const uint32_t* __restrict badv) {
    // The cautious flag is hoisted out of the loop (one instantiation each) so both vectorise.
    static volatile uint32_t zero = 0u;
    const uint32_t oz = zero;
    return sc.cautious ? apply_tile<true>(sc, cs, bc1, bc2, n, p, g, m, v, E, seg, W0, badv, oz)
                       : apply_tile<false>(sc, cs, bc1, bc2, n, p, g, m, v, E, seg, W0, badv, oz);
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

  // ---------------------------------------------------------------- fused path
  // Deterministic kinds (no Philox words) without cautious masking, with fp32/bf16 parameters
  // and fp32/bf16/FP8 state: one loop per range reads the stored values, runs the whole rule
  // (prologue included) and writes the stored results, with no tile buffers in between.  FP8
  // state: the loop writes the new fp32 m of one block to a buffer, then encode_block (with
  // AVX-512, simd::fused_sign_blocks does both for a whole item).
  // The prologue's optional steps are exact multiplications (g*1 = g, g*-1 = -g) and a select,
  // so the loop has no per-flag control flow and vectorises.
  template <class PF, class SF>
  static int64_t fused_loop(const Scalars sc, const float seg, const float mscale, const int64_t n,
                            typename PF::raw* __restrict p, const typename PF::raw* __restrict g,
                            typename SF::raw* __restrict m, float* __restrict mout, const bool simd) {
    static volatile uint32_t zero = 0u;
    const uint32_t oz = zero;
    if constexpr (K == K_LION_NORM) {
      if (seg > 0.0f) return fused_loop_impl<PF, SF, true>(sc, seg, mscale, n, p, g, m, mout, simd, oz);
    }
    return fused_loop_impl<PF, SF, false>(sc, seg, mscale, n, p, g, m, mout, simd, oz);
  }

  template <class PF, class SF, bool SEGPOS>
  __attribute__((noipa)) static int64_t fused_loop_impl(const Scalars sc, const float seg, const float mscale,
                                                   const int64_t n, typename PF::raw* __restrict p,
                                                   const typename PF::raw* __restrict g,
                                                   typename SF::raw* __restrict m, float* __restrict mout,
                                                   const bool simd,
                                                        const uint32_t opaque_zero) {
#if defined(SIGNOPT_AVX512)
    if constexpr (simd::kind_covered(K) && !SF::blocked) {  // FP8 state: fused_sign_blocks
      if (simd) return simd::fused_sign<K, PF, SF>(sc, SEGPOS ? seg : 0.0f, n, p, g, m);
    }
#endif
    const float mul = sc.has_inv_scale ? sc.inv_scale : 1.0f;
    const float sg = sc.maximize ? -1.0f : 1.0f;
    const float l2 = sc.l2, lr = sc.lr, decay = sc.decay;
    int64_t nbad = 0;
    for (int64_t j = 0; j < n; ++j) {
      ElemIn in;
      in.p = PF::load(p[j]);
      in.g = PF::load(g[j]);
      if constexpr (!HAS_M) {
        in.m = 0.0f;
      } else if constexpr (SF::blocked) {
        in.m = SF::load(m[j], mscale);
      } else {
        in.m = SF::load(m[j]);
      }
      in.v = 0.0f;
      in.G = 0.0f;
      const float x = (in.g * mul) * sg;
      const bool bad = !finite32(x);
      float gg = bad ? 0.0f : x;
      gg = l2 != 0.0f ? gg + l2 * in.p : gg;
      const ElemOut o = direction_after_prologue<K>(sc, in, gg, bad, seg, 0u, 1.0f, 1.0f);
      // l2/row_l2: u = seg > 0 ? c/seg : 0 with the loop-invariant test taken outside (SEGPOS);
      // gcc did not vectorise the select next to 16-bit loads/stores
      const float u = K == K_LION_NORM ? (SEGPOS ? o.red / seg : 0.0f) : o.u;
      if constexpr (std::is_same<PF, FmtF32>::value) {
        // Where bad, p and m keep their values.  Written as "loaded value ^ opaque zero" for fp32
        // storage, so that gcc stores unconditionally instead of masking the loads and stores by
        // !bad (AVX-512 masked stores are several times slower than plain ones on AMD Zen 4).
        const float p_keep = u2f(f2u(in.p) ^ opaque_zero);
        const float q = in.p * decay - lr * u;  // epilogue()
        p[j] = bad ? p_keep : q;
        if constexpr (HAS_M) {
          const float m_keep = std::is_same<SF, FmtF32>::value ? u2f(f2u(in.m) ^ opaque_zero) : in.m;
          const float mn = bad ? m_keep : o.m;
          if constexpr (SF::blocked) {
            mout[j] = mn;
          } else {
            m[j] = SF::store(mn, false, 0u);
          }
        }
      } else {  // bf16 parameters (this form vectorises with them)
        p[j] = PF::store(epilogue(in.p, u, lr, decay, bad), false, 0u);
        if constexpr (HAS_M) {
          if constexpr (SF::blocked) {
            mout[j] = o.m;
          } else {
            m[j] = SF::store(o.m, false, 0u);
          }
        }
      }
      nbad += bad ? 1 : 0;
    }
    return nbad;
  }

  bool fused_ok() const {
    return !STO && !HAS_V && !s.cautious && !s.state_stochastic_rounding && !s.param_stochastic_rounding &&
           (pf == FMT_FP32 || pf == FMT_BF16) && sf != FMT_FP16;
  }

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

  template <class PF, class SF>
  int64_t fused_item(const Item& it, float* buf, const bool simd) const {
    const TensorRef& t = c.t[it.t];
    using PR = typename PF::raw;
    using SR = typename SF::raw;
    PR* p = (PR*)t.p;
    const PR* g = (const PR*)t.g;
    SR* m = (SR*)t.m;
    int64_t nbad = 0;
    if constexpr (!SF::blocked) {
      seg_pieces(t, it.t, it.a, it.b, [&](int64_t a0, int64_t a1, float sv) {
        nbad += fused_loop<PF, SF>(s, sv, 0.0f, a1 - a0, p + a0, g + a0, HAS_M ? m + a0 : m, nullptr, simd);
      });
    } else {
      const int64_t B = c.block;
#if defined(SIGNOPT_AVX512)
      // items start on a block boundary; K_LION_NORM: the item must lie in one segment
      const int64_t L = needs_seg ? seg_len(t) : 0;
      if (simd && simd::kind_covered(K) && (!needs_seg || it.a / L == (it.b - 1) / L))
        return simd::fused_sign_blocks<K, PF, SF>(s, needs_seg ? segv[seg_base[it.t] + it.a / L] : 0.0f, B,
                                                  it.b - it.a, p + it.a, g + it.a, (uint8_t*)m + it.a,
                                                  t.m_scale + it.a / B, buf);
#endif
      for (int64_t a = it.a; a < it.b; a += B) {
        const int64_t e = std::min(a + B, it.b);
        const float msc = t.m_scale[a / B];
        seg_pieces(t, it.t, a, e, [&](int64_t a0, int64_t a1, float sv) {
          nbad += fused_loop<PF, SF>(s, sv, msc, a1 - a0, p + a0, g + a0, m + a0, buf + (a0 - a), simd);
        });
        t.m_scale[a / B] = encode_block<SF>(m + a, e - a, buf, false, nullptr, simd);
      }
    }
    return nbad;
  }

  template <class PF, class SF>
  void fused_items(const Span r) const {
    at::parallel_for(r.k0, r.k1, 1, [&](int64_t ib, int64_t ie) {
      std::vector<float> buf(SF::blocked ? 2 * c.block : 1);  // fused_sign_blocks: two blocks
      const bool simd = simd::simd_ok(s);  // MXCSR of this thread, once per chunk
      for (int64_t k = ib; k < ie; ++k) r.out[k] = fused_item<PF, SF>(items[k], buf.data(), simd);
    });
  }

  template <class PF>
  void fused_items_p(const Span r) const {
    if constexpr (!HAS_M) return fused_items<PF, FmtF32>(r);
    else {
#define SIGNOPT_FUSED_CASE(F, SF) \
  case F:                         \
    return fused_items<PF, SF>(r);
      switch (sf) { SIGNOPT_STATE_FORMATS(SIGNOPT_FUSED_CASE) }
#undef SIGNOPT_FUSED_CASE
    }
  }

  void run_fused(const Span r) const {
    if constexpr (!STO && !HAS_V) {
      if (pf == FMT_FP32) return fused_items_p<FmtF32>(r);
      return fused_items_p<FmtBF16>(r);
    }
  }

  // ---------------------------------------------------------------- fused stochastic path
  // The stochastic kinds with the element envelope, without cautious masking or stochastic
  // rounding, fp32/bf16 parameters and fp32/bf16/FP8 state: with AVX-512 (simd::fused_sto) one loop per work
  // item computes Philox word 0, reads the stored values, runs the rule and writes back; threads
  // whose MXCSR or lr rule the loop out run the tiles (the same values).
  bool sto_fused_ok() const {
    return simd::sto_covered(K) && elem_env && !s.cautious && !s.state_stochastic_rounding &&
           !s.param_stochastic_rounding && (pf == FMT_FP32 || pf == FMT_BF16) && sf != FMT_FP16;
  }

#if defined(SIGNOPT_AVX512)
  template <class PF, class SF>
  void sto_items(const Span r) const {
    int64_t* out = r.out;
    at::parallel_for(r.k0, r.k1, 1, [&](int64_t ib, int64_t ie) {
      const bool simd = simd::simd_ok(s);  // MXCSR of this thread, once per chunk
      std::unique_ptr<Buffers> B;
      std::vector<float> fb;  // FP8 state: fused_sto_blocks' buffers
      using PR = typename PF::raw;
      using SR = typename SF::raw;
      for (int64_t k = ib; k < ie; ++k) {
        const Item& it = items[k];
        const TensorRef& t = c.t[it.t];
        if constexpr (SF::blocked) {
          // FP8 state: the whole item (it starts on a block boundary), the new fp32 values of two
          // blocks at a time through L1-sized buffers
          if (simd) {
            if (fb.empty()) fb.resize(6 * c.block);
            out[k] = simd::fused_sto_blocks<K, PF, SF>(
                s, t.bc1, t.bc2, t.k0, t.k1, t.offset + (uint64_t)it.a, c.block, it.b - it.a, (PR*)t.p + it.a,
                (const PR*)t.g + it.a, HAS_M ? (uint8_t*)t.m + it.a : nullptr, HAS_V ? (uint8_t*)t.v + it.a : nullptr,
                (uint8_t*)t.G + it.a, HAS_M ? t.m_scale + it.a / c.block : nullptr,
                HAS_V ? t.v_scale + it.a / c.block : nullptr, t.G_scale + it.a / c.block, fb.data());
            continue;
          }
        } else if (simd) {
          out[k] = simd::fused_sto<K, PF, SF>(s, t.bc1, t.bc2, t.k0, t.k1, t.offset + (uint64_t)it.a, it.b - it.a,
                                              (PR*)t.p + it.a, (const PR*)t.g + it.a,
                                              HAS_M ? (SR*)t.m + it.a : nullptr, HAS_V ? (SR*)t.v + it.a : nullptr,
                                              (SR*)t.G + it.a);
          continue;
        }
        if (!B) B.reset(new Buffers(tile));
        int64_t acc = 0;
        for (int64_t a = it.a; a < it.b; a += tile)
          acc += tile_eval<true>(t, it.t, a, std::min(tile, it.b - a), *B, false);
        out[k] = acc;
      }
    });
  }
#endif

#if defined(SIGNOPT_AVX512)
  template <class PF>
  void sto_items_p(const Span r) const {
#define SIGNOPT_STO_CASE(F, SF) \
  case F:                       \
    return sto_items<PF, SF>(r);
    switch (sf) { SIGNOPT_STATE_FORMATS(SIGNOPT_STO_CASE) }
#undef SIGNOPT_STO_CASE
  }
#endif

  void run_sto(const Span r) const {
#if defined(SIGNOPT_AVX512)
    if (pf == FMT_FP32) return sto_items_p<FmtF32>(r);
    return sto_items_p<FmtBF16>(r);
#else
    return run_items<true>(r);
#endif
  }

  // ---------------------------------------------------------------- tile evaluation
  // Decodes the tile, evaluates the rule and (STORE) writes the results, or (COUNT) returns
  // the number of kept cautious coordinates.  Returns the non-finite count when STORE.
  template <bool STORE>
  int64_t tile_eval(const TensorRef& t, int64_t tix, int64_t a, int64_t n, Buffers& B, const bool simd) const {
    float* seg = B.seg.data();
    if (needs_seg) {
      const int64_t L = seg_len(t);
      const float* sv = segv.data() + seg_base[tix];
      int64_t i = a;
      while (i < a + n) {
        const int64_t sidx = i / L;
        const int64_t e = std::min((sidx + 1) * L, a + n);
        const float val = sv[sidx];
        for (int64_t k = i; k < e; ++k) seg[k - a] = val;
        i = e;
      }
    }
    uint32_t* W0 = B.w0.data();
    uint32_t* W1 = B.w1.data();
    uint32_t* W2 = B.w2.data();
    if (words) {  // words 1 and 2 only feed stochastic rounding
      if (!s.state_stochastic_rounding && !s.param_stochastic_rounding) {
        philox_word0_range(t.k0, t.k1, t.offset + (uint64_t)a, n, W0);
      } else {
        philox_range(t.k0, t.k1, t.offset + (uint64_t)a, n, W0, W1, W2);
      }
    }
    float* p = load_range(pf, t.p, nullptr, 0, a, n, B.p.data());
    const float* g = load_range(pf, const_cast<void*>(t.g), nullptr, 0, a, n, B.g.data());
    float* m = B.m.data();
    float* v = B.v.data();
    float* E = B.e.data();
    if (HAS_M) m = load_range(sf, t.m, t.m_scale, c.block, a, n, B.m.data());
    if (HAS_V) v = load_range(sf, t.v, t.v_scale, c.block, a, n, B.v.data());
    if (elem_env) E = load_range(sf, t.G, t.G_scale, c.block, a, n, B.e.data());
    float* gp = B.gp.data();
    uint32_t* badv = B.bad.data();
    prologue_loop(s, n, p, g, gp, badv);
    const float cs = s.cautious ? cscale[tix] : 1.0f;
    const int64_t acc = STORE ? apply_loop(s, cs, t.bc1, t.bc2, n, p, gp, m, v, E, seg, W0, badv)
                              : count_loop(s, t.bc1, t.bc2, n, p, gp, m, v, E, seg, W0, badv);
    if (STORE) {
      const bool psr = s.param_stochastic_rounding != 0, ssr = s.state_stochastic_rounding != 0;
      store_range(pf, t.p, nullptr, 0, a, n, p, psr, W2, simd);
      if (HAS_M) store_range(sf, t.m, t.m_scale, c.block, a, n, m, ssr, W1, simd);
      if (HAS_V) store_range(sf, t.v, t.v_scale, c.block, a, n, v, ssr, W1, simd);
      if (elem_env) store_range(sf, t.G, t.G_scale, c.block, a, n, E, ssr, W1, simd);
    }
    return acc;
  }

  template <bool STORE>
  void run_items(const Span r) const {
    at::parallel_for(r.k0, r.k1, 1, [&](int64_t ib, int64_t ie) {
      Buffers B(tile);
      const bool simd = simd::mxcsr_ok();
      for (int64_t k = ib; k < ie; ++k) {
        const Item& it = items[k];
        int64_t acc = 0;
        for (int64_t a = it.a; a < it.b; a += tile)
          acc += tile_eval<STORE>(c.t[it.t], it.t, a, std::min(tile, it.b - a), B, simd);
        r.out[k] = acc;
      }
    });
  }

  // ---------------------------------------------------------------- reduce pass
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
      const bool simd = simd::simd_ok(s);  // MXCSR of this thread, once per chunk
      for (int64_t r = ib; r < ie; ++r) {
        const RItem& ri = ritems[r];
        const TensorRef& t = c.t[ri.t];
        const int64_t L = seg_len(t), cps = ch[ri.t].cps;
        for (int64_t k = ri.c0; k < ri.c1; ++k) {
          const int64_t sidx = k / cps, kk = k % cps;
          const int64_t a = sidx * L + kk * RED_CHUNK;
          const int64_t n = std::min(std::min<int64_t>(RED_CHUNK, (sidx + 1) * L - a), t.numel - a);
          if constexpr (K == K_LION_NORM) {
            part[ch[ri.t].first + k] = chunk_sum_fused(t, a, n, B, simd);
          } else {
            chunk_values(t, a, n, B, red.data());
            part[ch[ri.t].first + k] = STO ? chunk_max(red.data(), n) : chunk_sum(red.data(), n);
          }
        }
      }
    });
    at::parallel_for(t0, t1, 1, [&](int64_t ib, int64_t ie) {
      for (int64_t i = ib; i < ie; ++i) {
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
    });
  }

  // The value each element contributes: c (lion norms) or the envelope source |d| / |g|.
  void chunk_values(const TensorRef& t, int64_t a, int64_t n, Buffers& B, float* red) const {
    const float* p = s.l2 != 0.0f ? load_range(pf, t.p, nullptr, 0, a, n, B.p.data()) : nullptr;
    const float* g = load_range(pf, const_cast<void*>(t.g), nullptr, 0, a, n, B.g.data());
    const float* m = B.m.data();
    const float* v = B.v.data();
    if (HAS_M) m = load_range(sf, t.m, t.m_scale, c.block, a, n, B.m.data());
    if (HAS_V) v = load_range(sf, t.v, t.v_scale, c.block, a, n, B.v.data());
    // without l2 weight decay the values do not depend on p: do not stream it in
    if (s.l2 != 0.0f) {
      red_loop<true>(s, t.bc1, t.bc2, n, p, g, m, v, red);
    } else {
      red_loop<false>(s, t.bc1, t.bc2, n, nullptr, g, m, v, red);
    }
  }

  // K_LION_NORM: chunk_values and chunk_sum in one pass (the same fp64 lane order), so the
  // loads of g and m overlap the sums.
  double chunk_sum_fused(const TensorRef& t, int64_t a, int64_t n, Buffers& B, [[maybe_unused]] const bool simd) const {
#if defined(SIGNOPT_AVX512)
    // AVX-512 (simd::norm_sum) where g or m needs decoding (all fp32: the portable loop reads the
    // tensors in place as fast): fp32/bf16 parameters, fp32/bf16/FP8 state (FP8: 16-element
    // groups inside one block)
    if (simd && (pf == FMT_FP32 || pf == FMT_BF16) && sf != FMT_FP16 && !(pf == FMT_FP32 && sf == FMT_FP32) &&
        (!fmt_block_scaled(sf) || (c.block % 16 == 0 && a % 16 == 0))) {
      return pf == FMT_FP32 ? norm_sum_p<FmtF32>(t, a, n) : norm_sum_p<FmtBF16>(t, a, n);
    }
#endif
    const float* p = s.l2 != 0.0f ? load_range(pf, t.p, nullptr, 0, a, n, B.p.data()) : nullptr;
    const float* g = load_range(pf, const_cast<void*>(t.g), nullptr, 0, a, n, B.g.data());
    const float* m = load_range(sf, t.m, t.m_scale, c.block, a, n, B.m.data());
    return s.l2 != 0.0f ? sum_loop<true>(s, n, p, g, m) : sum_loop<false>(s, n, nullptr, g, m);
  }

#if defined(SIGNOPT_AVX512)
  template <class PF>
  double norm_sum_p(const TensorRef& t, int64_t a, int64_t n) const {
    using PR = typename PF::raw;
    const PR* p = (const PR*)t.p + a;
    const PR* g = (const PR*)t.g + a;
    switch (sf) {
      case FMT_FP32: return simd::norm_sum<PF, FmtF32>(s, n, p, g, (const float*)t.m + a, nullptr, a, 1);
      case FMT_BF16: return simd::norm_sum<PF, FmtBF16>(s, n, p, g, (const uint16_t*)t.m + a, nullptr, a, 1);
      case FMT_FP8_E4M3:
        return simd::norm_sum<PF, FmtE4M3>(s, n, p, g, (const uint8_t*)t.m + a, t.m_scale, a, c.block);
      default: return simd::norm_sum<PF, FmtE5M2>(s, n, p, g, (const uint8_t*)t.m + a, t.m_scale, a, c.block);
    }
  }
#endif

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
      const float* gr = g + r;
      const float* mr = m + r;
      const float* pr = L2 ? p + r : nullptr;
      for (int64_t j = 0; j < len; ++j) {
        ElemIn in;
        in.p = L2 ? pr[j] : 0.0f;
        in.g = gr[j];
        in.m = mr[j];
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

  // Reduction values of n elements (prologue as in fused_loop: no per-flag control flow).
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

  double chunk_sum(const float* red, int64_t n) const {
    double lanes[RED_LANES];
    for (int j = 0; j < RED_LANES; ++j) lanes[j] = 0.0;
    for (int64_t r = 0; r * RED_LANES < n; ++r) {
      const int64_t m = std::min<int64_t>(RED_LANES, n - r * RED_LANES);
      const float* x = red + r * RED_LANES;
      for (int64_t j = 0; j < m; ++j) lanes[j] += norm_term<K>(x[j], s.lp_p);
    }
    for (int stride = RED_LANES / 2; stride >= 1; stride /= 2)
      for (int j = 0; j < stride; ++j) lanes[j] += lanes[j + stride];
    return lanes[0];
  }

  double chunk_max(const float* red, int64_t n) const {
    float mx = 0.0f;
    for (int64_t j = 0; j < n; ++j) mx = nanmax(mx, red[j]);
    return (double)mx;
  }

  // ---------------------------------------------------------------- driver
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
    if (c.skip) return count_nonfinite();
    const bool passes = needs_seg || s.cautious;
    if (needs_seg) reduce_layout();
    if (s.cautious) cscale.resize(c.t.size());
    std::vector<int64_t> bad(items.size(), 0), kept(s.cautious ? items.size() : 0, 0);
    const bool fused = fused_ok(), sto = sto_fused_ok();
    for (int64_t t0 = 0, t1; t0 < (int64_t)c.t.size(); t0 = t1) {
      t1 = passes ? group_end(t0) : (int64_t)c.t.size();
      if (needs_seg) reduce(t0, t1);
      if (s.cautious) {
        run_items<false>(Span{item_base[t0], item_base[t1], kept.data()});
        for (int64_t i = t0; i < t1; ++i) {
          int64_t per = 0;
          for (int64_t k = item_base[i]; k < item_base[i + 1]; ++k) per += kept[k];
          cscale[i] = (float)c.t[i].numel / (float)(per + 1);
        }
      }
      const Span r{item_base[t0], item_base[t1], bad.data()};
      if (fused) {
        run_fused(r);
      } else if (sto) {
        run_sto(r);
      } else {
        run_items<true>(r);
      }
    }
    if (STO && s.envelope != ENV_ELEMENT) {
      for (size_t i = 0; i < c.t.size(); ++i)
        std::memcpy(c.t[i].G, segv.data() + seg_base[i], sizeof(float) * seg_count(c.t[i]));
    }
    int64_t total = 0;
    for (int64_t b : bad) total += b;
    return total;
  }

  int64_t count_nonfinite() const {
    std::vector<int64_t> out(items.size(), 0);
    at::parallel_for(0, (int64_t)items.size(), 1, [&](int64_t ib, int64_t ie) {
      std::vector<float> gb(TILE);
      for (int64_t k = ib; k < ie; ++k) {
        const Item& it = items[k];
        int64_t acc = 0;
        for (int64_t a = it.a; a < it.b; a += TILE) {
          const int64_t n = std::min(TILE, it.b - a);
          const float* g = load_range(pf, const_cast<void*>(c.t[it.t].g), nullptr, 0, a, n, gb.data());
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
