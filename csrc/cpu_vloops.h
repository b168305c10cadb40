// The CPU kernels' vector loops, written once on the portable vector layer (cpu_vec.h) and its
// format codecs (cpu_vformats.h): rules.h's per-element rule on W lanes (every kind but Lion-kappa
// lp, whose pow has no exact vector form), with the prologue, cautious masking and the epilogue,
// stochastic signs and roundings from the random bits v2 of cpu_philox.h, fp32/bf16 parameters
// and every state format with a vector codec; the cautious count; the scan of NVFP4's tensor
// scales; the reductions (the Lion-kappa norm's fp64 lane sums, the envelopes' maxima).  The same
// fp32 operations in the same order as the scalar loops of cpu_kernels.h (SIGNOPT_CPU_SIMD=0 runs
// those), so the same bits:
//   * a select `m ? a : b` computes both sides and picks per lane, as the scalar ternaries do;
//   * the update p*decay - lr*u, the EMAs and the envelope are the scalar expressions;
//   * the stores are the codecs of casts.h (cpu_vformats.h).
#pragma once
#include <type_traits>

#include "cpu_philox.h"
#include "cpu_vformats.h"
#include "rules.h"

namespace signopt {
namespace cpu {
namespace vec {

// ---------------------------------------------------------------- rule core on W lanes
// The scalars of a call, broadcast once.
struct VScalars {
  float mul, sg, l2, b1, omb1, b2, omb2, lr, decay, eps, hdelta, gamma;  // splat where used
  bool prol, has_l2, from_grad;
  explicit VScalars(const Scalars& s)
      : mul(s.has_inv_scale ? s.inv_scale : 1.0f),
        sg(s.maximize ? -1.0f : 1.0f),
        l2(s.l2),
        b1(s.beta1),
        omb1(s.omb1),
        b2(s.beta2),
        omb2(s.omb2),
        lr(s.lr),
        decay(s.decay),
        eps(s.eps),
        hdelta(s.huber_delta),
        gamma(s.envelope_decay),
        prol(s.has_inv_scale || s.maximize),
        has_l2(s.l2 != 0.0f),
        from_grad(s.envelope_from_grad != 0) {}
};

// torch.sign (0 for 0 and NaN): +-1.0 with x's sign bit where |x| > 0 (false for NaN), else +0
SIGNOPT_VI vf vsgn(const vf x) {
  return fbits(((bits(x) & 0x80000000u) | 0x3F800000u) & (vu)(vabs(x) > 0.0f));
}
SIGNOPT_VI vf vema(const vf x, const vf y, const vf beta, const vf omb) { return x * beta + y * omb; }
// rules.h's fmax_ign (a NaN operand gives the other; vmax gives b where either is NaN) and nanmax
SIGNOPT_VI vf vfmax_ign(const vf a, const vf b) { return sel(a != a, b, sel(b != b, a, vmax(a, b))); }
SIGNOPT_VI vf vnanmax(const vf a, const vf b) { return sel(a != a, a, sel(b != b, b, sel(b > a, b, a))); }
// rules.h's stochastic_sign
SIGNOPT_VI vf vstochastic_sign(const vf d, const vf G, const vf U) {
  const vf thr = (1.0f + d / G) * 0.5f;
  // +1.0 where U < thr, else -1.0; +0 where d = G = 0 (either sign)
  const vu s = 0x3F800000u | (~(vu)(U < thr) & 0x80000000u);
  return fbits(s & ~(vu)(((bits(d) | bits(G)) & 0x7FFFFFFFu) == 0u));
}

struct In {
  vf p, g, m, v, G;  // decoded parameter, raw gradient, state (G: old element envelope)
};
struct Out {
  vf gg;   // gradient after the prologue
  vf u;    // direction before cautious masking
  vf m, v, G;
  vf red;  // c (Lion norms) or |src| (envelopes)
  vi bad;  // -1 where the gradient is not finite
};

// rules.h's prologue and direction_after_prologue<K> on W lanes.  seg: the segment's value
// (Lion-kappa norm, or the envelope of a row/block/tensor cell), segpos: seg > 0; elem_env:
// the element envelope (G from in.G) or a segment one (seg); w0: the sign words.  PLAIN: the
// call has no prologue and no l2 term (tested once per piece, not per vector).
template <int K, bool PLAIN = false>
SIGNOPT_VI Out rule(const VScalars& S, const In& in, const vf seg, const bool segpos, const bool elem_env,
                    const vu w0, const vf bc1, const vf bc2) {
  static_assert(K != K_LION_LP, "Lion-kappa lp has no vector form (pow)");
  Out o;
  vf x = in.g;
  if (!PLAIN && S.prol) x = (x * splat(S.mul)) * splat(S.sg);
  o.bad = ~finite(x);
  vf g = sel(o.bad, splat(0.0f), x);
  if (!PLAIN && S.has_l2) g = g + splat(S.l2) * in.p;
  o.gg = g;
  o.m = in.m;
  o.v = in.v;
  o.G = in.G;
  o.red = splat(0.0f);
  if constexpr (K == K_SIGN) {
    o.u = vsgn(g);
  } else if constexpr (K == K_SIGNUM) {
    o.m = sel(o.bad, in.m, vema(in.m, g, splat(S.b1), splat(S.omb1)));
    o.u = vsgn(o.m);
  } else if constexpr (!kind_stochastic(K)) {  // Lion: c and m from the old m
    const vf c = sel(o.bad, splat(0.0f), vema(in.m, g, splat(S.b1), splat(S.omb1)));
    o.m = sel(o.bad, in.m, vema(in.m, g, splat(S.b2), splat(S.omb2)));
    o.red = c;
    if constexpr (K == K_LION_L1) {
      o.u = vsgn(c);
    } else if constexpr (K == K_LION_L2SQ) {
      o.u = c;
    } else if constexpr (K == K_LION_HUBER) {
      const vf h = c / splat(S.hdelta);
      o.u = vmin(splat(1.0f), vmax(splat(-1.0f), h));  // clamp (NaN stays NaN)
    } else {  // K_LION_NORM
      o.u = segpos ? c / seg : splat(0.0f);
    }
  } else {
    vf d;
    if constexpr (K == K_STO_SGD) {
      d = g;
    } else if constexpr (K == K_STO_MOMENTUM) {
      o.m = sel(o.bad, in.m, vema(in.m, g, splat(S.b1), splat(S.omb1)));
      d = o.m;
    } else if constexpr (K == K_STO_ADAMW) {
      o.m = sel(o.bad, in.m, vema(in.m, g, splat(S.b1), splat(S.omb1)));
      o.v = sel(o.bad, in.v, vema(in.v, g * g, splat(S.b2), splat(S.omb2)));
      d = sel(o.bad, splat(0.0f), (o.m / bc1) / (vsqrt(o.v / bc2) + splat(S.eps)));
    } else {  // K_STO_LION
      d = sel(o.bad, splat(0.0f), vema(in.m, g, splat(S.b1), splat(S.omb1)));
      o.m = sel(o.bad, in.m, vema(in.m, g, splat(S.b2), splat(S.omb2)));
    }
    const vf src = vabs(S.from_grad ? g : d);
    o.red = src;
    const vf Ge = sel(o.bad, in.G, vfmax_ign(in.G * splat(S.gamma), src));
    o.G = Ge;
    o.u = vstochastic_sign(d, elem_env ? Ge : seg, uniform(w0));
  }
  return o;
}

// ---------------------------------------------------------------- the apply and count loops
// Kind K over fp32/bf16 parameters (PF) and state format SF (both with a vector codec), one
// piece of a tensor at a time: elements [0, n) of constant segment value, inside one FP8 block
// for a block-scaled SF.  Element-format state is read and written in place; FP8 state is read
// with the block's decoders and its new fp32 values written to mo/vo/Go (W floats of slack), the
// block's finite absmax bits kept in the accumulators (GroupKernel encodes the block).
// The block decoder of a block-scaled format (an empty one for element formats).
struct NoDec {
  NoDec() {}
};
template <class SF, bool BLK>
struct DecOf {
  using type = NoDec;
};
template <class SF>
struct DecOf<SF, true> {  // FP8 (a packed format's block is decoded to fp32 before the loop)
  using type = typename VFmt<SF>::Dec;
};

// What a piece's loop knows at compile time (run_acc picks one per piece: a runtime test in every
// vector costs ~20%, as g++ then rematerialises the loop's constants each iteration).  PLAIN: no
// prologue, l2 term or cautious masking, and the piece draws state rounding words iff W1 and
// parameter rounding words iff W2.  Not PLAIN: every one of these tested at run time.
template <bool PLAIN, bool W1 = false, bool W2 = false>
struct Form {
  static constexpr bool plain = PLAIN, w1 = W1, w2 = W2;
};
using General = Form<false>;

// What a pass of the loops does with the rule's results: APPLY stores them (and counts the
// non-finite lanes), COUNT counts the kept cautious lanes, SCAN maxes the finite absmax bits of
// the new m, v, G into the accumulators (NVFP4's tensor scales; block-scaled state).  COUNT and
// SCAN store nothing and read no rounding words; SCAN no sign words either (the new state does
// not depend on them).
enum Pass { APPLY, COUNT, SCAN };

template <int K, class PF, class SF>
struct Loop {
  using VP = VFmt<PF>;
  using VS = VFmt<SF>;
  using PR = typename PF::raw;
  static constexpr bool HM = kind_has_m(K), HV = kind_has_v(K), STO = kind_stochastic(K);
  static constexpr bool BLK = SF::blocked, PK = SF::packed;
  using SR = std::conditional_t<PK, float, typename SF::raw>;  // packed: the block decoded to fp32
  static_assert(VP::ok && VS::ok, "formats with a vector codec");
  using Dec = typename DecOf<SF, BLK && !PK>::type;

  // The pointers of a piece: element j at [j].
  struct Ptr {
    PR* p;
    const PR* g;
    SR *m, *v, *E;                   // state codes (null where the kind or envelope has none)
    float *mo, *vo, *Go;             // FP8: the new fp32 values
    const uint32_t *w0, *w1, *w2;    // words: sign, state rounding, parameter rounding (null: none)
    int8_t* s;                       // step statistics: previous update signs (null: off)
  };
  struct Acc {
    vu am{}, av{}, aG{};  // FP8/FP4: finite absmax bits of the new m, v, G
    vi n{};               // minus the non-finite (apply) or kept (count) lanes
  };
  // Step statistics of the lanes (step_stats.h's ItemStats per lane): the fp64 sum of the squared
  // update (lane pairs of to_double), minus the reversed signs, the NaN-propagating max of |new m|,
  // |new v|, |new element G|.
  struct Stats {  // (no initialisers: with statistics off it is never read, and not zeroed per item)
    vd sq;
    vi flips;
    vf xm, xv, xG;
  };

  // A tensor's own scalars: bias corrections and the cautious scale (splat where used).
  struct Tens {
    float bc1, bc2, cs;
  };

  // One Loop serves a call's work items (built once per thread's range: run_acc copies it into
  // registers, and a copy of an object written just before would stall on store forwarding).
  const VScalars S;
  const bool elem_env, cautious;
  const bool plain;  // no prologue, l2 term or cautious masking: run_acc's PLAIN forms

  Loop(const VScalars& vs, const bool elem, const bool caut)
      : S(vs), elem_env(elem), cautious(caut), plain(!vs.prol && !vs.has_l2 && !caut) {}

  template <class D>
  static SIGNOPT_VI vf load_state(const SR* r, const D& d) {
    if constexpr (PK) {
      return loadu<vf>(r);
    } else if constexpr (BLK) {
      return VS::load(r, d);
    } else {
      return VS::load(r);
    }
  }
  template <class D>
  static SIGNOPT_VI vf load_state_t(const SR* r, const D& d, std::true_type) {  // short FP8 decode
    return VS::load_short(r, d.sfold);
  }
  template <class D>
  static SIGNOPT_VI vf load_state_t(const SR* r, const D& d, std::false_type) {
    return load_state(r, d);
  }

  template <Pass PASS, class FORM>
  static SIGNOPT_VI void store_state(SR* r, float* o, const int64_t j, const vf x, vu& amax, const uint32_t* w) {
    if constexpr (BLK) {
      if constexpr (PASS == APPLY) storeu(o + j, x);
      amax = maxu31(amax, abs_bits(x));
    } else if (FORM::plain ? FORM::w1 : w != nullptr) {
      VS::store_sr(r + j, x, loadu<vu>(w + j));
    } else {
      VS::store(r + j, x);
    }
  }

  // The rule on the W lanes at element j whose decoded state in.m, in.v, in.G the caller set: loads
  // p (APPLY, or for the L2 term; else 0), g and (but for SCAN) the sign words into in, evaluates;
  // APPLY: the new parameter stored, u
  // after cautious masking and q the epilogue's value (the update's target where the gradient is
  // finite).
  template <Pass PASS, class FORM>
  SIGNOPT_VI Out eval(const Ptr& P, const Tens T, const int64_t j, const vf seg, const bool segpos, In& in, vf& u,
                      vf& q) const {
    in.p = PASS != APPLY && (FORM::plain || !S.has_l2) ? splat(0.0f) : VP::load(P.p + j);
    in.g = VP::load(P.g + j);
    const vu w0 = kind_draws_sign(K) && PASS != SCAN ? loadu<vu>(P.w0 + j) : vu{};
    const Out o = rule<K, FORM::plain>(S, in, seg, segpos, elem_env, w0, splat(T.bc1), splat(T.bc2));
    if constexpr (PASS == APPLY) {
      u = o.u;
      if (!FORM::plain && cautious) u = sel(u * o.gg > 0.0f, u * splat(T.cs), splat(0.0f));  // cautious_apply
      q = in.p * splat(S.decay) - splat(S.lr) * u;                                           // epilogue
      const vf pn = sel(o.bad, in.p, q);
      if (FORM::plain ? FORM::w2 : P.w2 != nullptr) {
        VP::store_sr(P.p + j, pn, loadu<vu>(P.w2 + j));
      } else {
        VP::store(P.p + j, pn);
      }
    }
    return o;
  }

  // W lanes at element j of pass PASS (COUNT: kept lanes into acc.n; SCAN: the new states'
  // absmax bits into acc.am/av/aG).  STATS: the step statistics of the lanes where live (all but a
  // tail's padding) into st.  FORM: what the piece's loop knows at compile time (Form).
  template <Pass PASS, bool STATS, class SHORT, class FORM>
  SIGNOPT_VI void lanes(const Ptr& P, const Tens T, const int64_t j, const vf seg, const bool segpos, const Dec& md,
                        const Dec& vd, const Dec& Gd, Acc& acc, Stats& st, const vi live) const {
    static_assert(PASS != SCAN || (BLK && !STATS), "the scan: block-scaled state, no statistics");
    In in;
    in.m = HM ? load_state_t(P.m + j, md, SHORT{}) : splat(0.0f);
    in.v = HV ? load_state_t(P.v + j, vd, SHORT{}) : splat(0.0f);
    in.G = STO && elem_env ? load_state_t(P.E + j, Gd, SHORT{}) : splat(0.0f);
    vf u, q;
    const Out o = eval<PASS, FORM>(P, T, j, seg, segpos, in, u, q);
    if constexpr (PASS == COUNT) {
      acc.n += (vi)(o.u * o.gg > 0.0f);  // cautious_keep
      return;
    }
    if constexpr (HM) store_state<PASS, FORM>(P.m, P.mo, j, o.m, acc.am, P.w1);
    if constexpr (HV) store_state<PASS, FORM>(P.v, P.vo, j, o.v, acc.av, P.w1);
    if constexpr (STO) {
      if (elem_env) store_state<PASS, FORM>(P.E, P.Go, j, o.G, acc.aG, P.w1);
    }
    if constexpr (PASS == SCAN) return;
    acc.n += o.bad;
    if constexpr (STATS) {
      vec::vd lo, hi;  // (vd: the v decoder here)
      to_double(sel(o.bad | ~live, splat(0.0f), q - in.p), lo, hi);  // the update, 0 where bad
      st.sq += lo * lo;
      st.sq += hi * hi;
      const vi cur = (vi)(u < 0.0f) - (vi)(u > 0.0f);  // sign8(u)
      const vi prev = load_s8((const uint8_t*)P.s + j);
      st.flips += (vi)(prev * cur < 0) & ~o.bad;
      store_u8((uint8_t*)P.s + j, (vu)(o.bad ? prev : cur) & 0xFFu);
      if constexpr (HM) st.xm = vnanmax(st.xm, vabs(o.m));
      if constexpr (HV) st.xv = vnanmax(st.xv, vabs(o.v));
      if constexpr (STO) {
        if (elem_env) st.xG = vnanmax(st.xG, vabs(o.G));
      }
    }
  }

  // f(Form) with the Form of piece P: rounding words matter to the loop where it rounds (parameters
  // that are not fp32; element-format state that is not fp32: a block format's go to its encoder).
  template <class Fn>
  SIGNOPT_VI void with_form(const Ptr& P, Fn&& f) const {
    constexpr bool RP = !std::is_same<PF, FmtF32>::value, RS = !BLK && !std::is_same<SF, FmtF32>::value;
    const bool w1 = RS && P.w1, w2 = RP && P.w2;
    if (plain && !w1 && !w2) return f(Form<true>{});
    if constexpr (RP) {
      if (plain && !w1) return f(Form<true, false, true>{});
    }
    if constexpr (RS) {
      if (plain && !w2) return f(Form<true, true, false>{});
    }
    if constexpr (RP && RS) {
      if (plain) return f(Form<true, true, true>{});
    }
    f(General{});
  }

  // Elements [0, n) of the piece; returns the non-finite count (APPLY) or the kept count (COUNT;
  // SCAN: 0, the absmax in acc); STATS: the step statistics into st.  Inlined into the caller's piece loop: a call passes P in
  // memory, a copy of the pointers just stored one by one, which stalls on store forwarding (27%
  // of Lion fp32/MXFP8's samples, where a piece is a 32-element block).
  template <Pass PASS, bool STATS>
  SIGNOPT_VI int64_t run_acc(const Ptr P, const Tens T, const int64_t n, const float seg, const Dec& md, const Dec& vd,
                  const Dec& Gd, Acc& acc, Stats& st) const {
    const vf segv = splat(seg);
    const bool segpos = seg > 0.0f;
    int64_t j = 0;
    bool short_all = false;
    if constexpr (BLK && !PK) short_all = (!HM || md.short_dec) && (!HV || vd.short_dec) && (!(STO && elem_env) || Gd.short_dec);
    // local copies of the loop's scalars and accumulators (P and T are values): the stores
    // through the tensors' pointers cannot alias them, so they stay in registers
    const Loop L = *this;
    Acc a = acc;
    Stats t;
    if constexpr (STATS) t = st;  // (off: not copied in and out, 5 vectors per piece)
    const vi all = splati(-1);
    const vi n0 = a.n;
    auto body = [&](auto shrt, auto form) {
      for (; j + W <= n; j += W)
        L.template lanes<PASS, STATS, decltype(shrt), decltype(form)>(P, T, j, segv, segpos, md, vd, Gd, a, t, all);
    };
    if (short_all) {
      if constexpr (BLK && !PK) L.with_form(P, [&](auto form) { body(std::true_type{}, form); });
    } else {
      L.with_form(P, [&](auto form) { body(std::false_type{}, form); });
    }
    if (j < n) L.template tail<PASS, STATS>(P, T, j, n - j, segv, segpos, md, vd, Gd, a, t);
    acc = a;
    if constexpr (STATS) st = t;
    return -hsum(a.n - n0);
  }

  // The last n < W elements: read into zero-padded lanes (a padded lane has p = g = 0 and state
  // code 0: finite, not kept, new state 0, so it changes no count and no absmax), run, and the n
  // results copied back.
  template <Pass PASS, bool STATS>
  void tail(const Ptr& P, const Tens T, const int64_t j, const int64_t n, const vf segv, const bool segpos,
            const Dec& md, const Dec& vd, const Dec& Gd, Acc& acc, Stats& st) const {
    PR p[W], g[W];
    SR m[W], v[W], E[W];
    uint32_t w0[W], w1[W], w2[W];
    int8_t s[W];
    float mo[W], vo[W], Go[W];
    vi live;
    for (int i = 0; i < W; ++i) live[i] = i < n ? -1 : 0;
    fill_short(p, P.p + j, n);
    fill_short(g, P.g + j, n);
    if (HM) fill_short(m, P.m + j, n);
    if (HV) fill_short(v, P.v + j, n);
    if (STO && elem_env) fill_short(E, P.E + j, n);
    if (P.w0) fill_short(w0, P.w0 + j, n);
    if (P.w1) fill_short(w1, P.w1 + j, n);
    if (P.w2) fill_short(w2, P.w2 + j, n);
    if (STATS) fill_short(s, P.s + j, n);
    const Ptr Q{p, g, m, v, E, mo, vo, Go, P.w0 ? w0 : nullptr, P.w1 ? w1 : nullptr, P.w2 ? w2 : nullptr, s};
    lanes<PASS, STATS, std::false_type, General>(Q, T, 0, segv, segpos, md, vd, Gd, acc, st, live);
    if (PASS != APPLY) return;
    copy_short(P.p + j, p, n);
    if (STATS) copy_short(P.s + j, s, n);
    if (BLK) {
      if (HM) copy_short(P.mo + j, mo, n);
      if (HV) copy_short(P.vo + j, vo, n);
      if (STO && elem_env) copy_short(P.Go + j, Go, n);
    } else {
      if (HM) copy_short(P.m + j, m, n);
      if (HV) copy_short(P.v + j, v, n);
      if (STO && elem_env) copy_short(P.E + j, E, n);
    }
  }
};

// ---------------------------------------------------------------- whole blocks in registers
// A block-scaled SF's block of R vectors (R*W elements: VFmt<SF>::regs_block, an MX block of 32
// or an NVFP4 block of 16) held in registers from its codes to its codes: decoded, the rule, the parameters
// stored, the new state's finite absmax, scale and codes, without Loop's block buffers and their
// separate decode and encode loops (the per-block costs that made a 32-element block slower than a
// 256-element one).  The apply pass without statistics; the same operations as lanes + encode_amax.
template <int K, class PF, class SF, int R>
struct BlockRegs {
  using L = Loop<K, PF, SF>;
  using VS = VFmt<SF>;
  using raw = typename SF::raw;
  static_assert(SF::blocked, "block formats");
  static constexpr bool STO = L::STO;

  // The state codes at r (block multiplier mult) into x (packed: two vectors a vector of bytes, an
  // odd last one from half a vector).
  static SIGNOPT_VI void decode(const raw* r, const float mult, vf (&x)[R]) {
    if constexpr (SF::packed) {
      for (int k = 0; k + 1 < R; k += 2) VS::decode2(load_u8(r + k * W / 2), splat(mult), x[k], x[k + 1]);
      if constexpr (R % 2 == 1) {
        vf unused;
        VS::decode2(load_u8_half(r + (R - 1) * W / 2), splat(mult), x[R - 1], unused);
      }
    } else {
      const typename VS::Dec d(r, R * W, mult);
      for (int k = 0; k < R; ++k) x[k] = VS::load(r + k * W, d);
    }
  }

  // The rule over the block at element j0 of P (its parameter, gradient and words) whose m, v, G
  // codes are at st (null: none) with multipliers mult: the new state to xm, xv, xG, its finite
  // absmax bits maxed into am, av, aG, its non-finite lanes counted (-1 each) into bad; APPLY: the
  // parameters stored.
  // DECODED: the caller decoded the state into xm, xv, xG already.
  template <Pass PASS, class FORM, bool DECODED = false>
  static SIGNOPT_VI void eval(const L& loop, const typename L::Ptr& P, const int64_t j0, const typename L::Tens T,
                              const float seg, raw* const (&st)[3], const float (&mult)[3], vf (&xm)[R], vf (&xv)[R],
                              vf (&xG)[R], vu& am, vu& av, vu& aG, vi& bad) {
    constexpr bool HM = L::HM, HV = L::HV;
    const bool HG = STO && st[2] != nullptr;
    if (HM && !DECODED) decode(st[0], mult[0], xm);
    if (HV && !DECODED) decode(st[1], mult[1], xv);
    if (HG && !DECODED) decode(st[2], mult[2], xG);
    const vf segv = splat(seg);
#pragma GCC unroll 8
    for (int k = 0; k < R; ++k) {
      In in;
      in.m = HM ? xm[k] : splat(0.0f);
      in.v = HV ? xv[k] : splat(0.0f);
      in.G = HG ? xG[k] : splat(0.0f);
      vf u, q;
      const Out o = loop.template eval<PASS, FORM>(P, T, j0 + k * W, segv, seg > 0.0f, in, u, q);
      if (HM) xm[k] = o.m, am = maxu31(am, abs_bits(o.m));
      if (HV) xv[k] = o.v, av = maxu31(av, abs_bits(o.v));
      if (HG) xG[k] = o.G, aG = maxu31(aG, abs_bits(o.G));
      bad += o.bad;
    }
  }

  // The apply pass over the block: eval, then the new codes and block scales sc under this step's
  // tensor scales ts (NVFP4; ignored by the other formats).  Returns the non-finite count.
  template <class FORM>
  static SIGNOPT_VI int64_t apply(const L& loop, const typename L::Ptr& P, const typename L::Tens T, const float seg,
                                  raw* const (&st)[3], const float (&mult)[3], const float (&ts)[3], float (&sc)[3]) {
    vf xm[R], xv[R], xG[R];
    vu am{}, av{}, aG{};
    vi bad{};
    eval<APPLY, FORM>(loop, P, 0, T, seg, st, mult, xm, xv, xG, am, av, aG, bad);
    if (L::HM) sc[0] = VS::template encode_regs<R>(st[0], xm, hmax31(am), P.w1, ts[0]);
    if (L::HV) sc[1] = VS::template encode_regs<R>(st[1], xv, hmax31(av), P.w1, ts[1]);
    if (STO && st[2]) sc[2] = VS::template encode_regs<R>(st[2], xG, hmax31(aG), P.w1, ts[2]);
    return -hsum(bad);
  }

  // G = W blocks in a row from block blk (scales at sp, old tensor scales ots, this step's ts):
  // their multipliers from the stored scales at once (VFmt::multipliers), each block's rule in
  // registers (eval), then SCAN: the absmax bits maxed into acc; APPLY: the W scales from the blocks'
  // absmax lanes at once (lane_max, VFmt::put_scales; no per-block horizontal reduction, scalar
  // scale or latency chain from a block's absmax to its codes) and the codes.  Packed blocks of
  // one vector (NVFP4 on AVX-512) go two at a time: one vector of bytes holds both blocks' codes.
  // Returns the non-finite count.
  static constexpr int G = W, N = R * W;  // blocks of a group, elements of a block
  static constexpr bool PAIR = SF::packed && R == 1;  // a block's codes: half a vector of bytes
  template <Pass PASS, class FORM>
  static SIGNOPT_VI int64_t group(const L& loop, const typename L::Ptr& P, const typename L::Tens T, const float seg,
                                  raw* const (&st)[3], void* const (&sp)[3], const int64_t blk, const float (&ots)[3],
                                  const float (&ts)[3], vu (&acc)[3]) {
    const L lp = loop;  // a local copy: the parameter stores cannot alias its scalars (Loop::run_acc)
    const bool has[3] = {L::HM, L::HV, STO && st[2] != nullptr};  // (the first two known at compile time)
    alignas(BYTES) float mu[3][G];
    for (int i = 0; i < 3; ++i)
      if (has[i]) storeu(mu[i], VS::multipliers(sp[i], blk, ots[i]));
    vf x[3][G][R];
    vu am[3][G];
    vi bad{};
    auto codes_at = [&](const int i, const int b) { return SF::packed ? st[i] + b * N / 2 : st[i] + b * N; };
    auto block = [&](const int b, auto decoded) {
      raw* const sb[3] = {has[0] ? codes_at(0, b) : nullptr, has[1] ? codes_at(1, b) : nullptr,
                          has[2] ? codes_at(2, b) : nullptr};
      const float mb[3] = {has[0] ? mu[0][b] : 0.0f, has[1] ? mu[1][b] : 0.0f, has[2] ? mu[2][b] : 0.0f};
      for (int i = 0; i < 3; ++i) am[i][b] = vu{};
      eval<PASS, FORM, decltype(decoded)::value>(lp, P, b * N, T, seg, sb, mb, x[0][b], x[1][b], x[2][b], am[0][b],
                                                 am[1][b], am[2][b], bad);
    };
    for (int b = 0; b < G; b += PAIR ? 2 : 1) {
      if constexpr (PAIR) {  // blocks b and b + 1 from one vector of bytes, each times its multiplier
        for (int i = 0; i < 3; ++i) {
          if (!has[i]) continue;
          vf lo, hi;
          VS::decode2(load_u8(codes_at(i, b)), splat(1.0f), lo, hi);
          x[i][b][0] = lo * mu[i][b], x[i][b + 1][0] = hi * mu[i][b + 1];
        }
        block(b, std::true_type{});
        block(b + 1, std::true_type{});
      } else {
        block(b, std::false_type{});
      }
    }
    for (int i = 0; i < 3; ++i) {
      if (!has[i]) continue;
      if constexpr (PASS == SCAN) {
        for (int b = 0; b < G; ++b) acc[i] = maxu31(acc[i], am[i][b]);
      } else {
        alignas(BYTES) float iv[G];
        storeu(iv, VS::put_scales(sp[i], blk, lane_max(am[i]), ts[i]));
        if constexpr (PAIR) {  // blocks b and b + 1 to one vector of bytes
          auto codes = [&](const int b) { return VS::codes_of(x[i][b][0], splat(iv[b]), P.w1 ? P.w1 + b * N : nullptr); };
          for (int b = 0; b < G; b += 2) store_u8(codes_at(i, b), VS::pairs(codes(b), codes(b + 1)));
        } else {
          for (int b = 0; b < G; ++b)
            VS::template put_regs<R>(codes_at(i, b), x[i][b], splat(iv[b]), P.w1 ? P.w1 + b * N : nullptr);
        }
      }
    }
    return -hsum(bad);
  }
};

// ---------------------------------------------------------------- reductions (fp32 inputs)
// GroupKernel::sum_loop on W lanes: c (the Lion c, 0 where bad) squared in fp64 and added to
// lane e mod RED_LANES for the chunk's element e, in element order, then the pairwise tree.
// Past n the padded lanes have c = 0 and add +0 (a lane is never -0).
template <int K>
inline double norm_sum(const VScalars& S, const int64_t n, const float* p, const float* g, const float* m) {
  static_assert(RED_LANES % W == 0, "W-element groups stay in one run of lanes");
  alignas(64) double lanes[RED_LANES] = {};
  auto group = [&](const vf pv, const vf gv, const vf mv, const int64_t e) {
    In in{pv, gv, mv, splat(0.0f), splat(0.0f)};
    const Out o = rule<K>(S, in, splat(1.0f), true, false, vu{}, splat(1.0f), splat(1.0f));
    vd lo, hi;
    to_double(o.red, lo, hi);
    double* L = lanes + e % RED_LANES;
    storeu(L, loadu<vd>(L) + lo * lo);
    storeu(L + W / 2, loadu<vd>(L + W / 2) + hi * hi);
  };
  int64_t e = 0;
  for (; e + W <= n; e += W)
    group(S.has_l2 ? loadu<vf>(p + e) : splat(0.0f), loadu<vf>(g + e), loadu<vf>(m + e), e);
  if (e < n) {
    float pt[W] = {}, gt[W] = {}, mt[W] = {};
    if (S.has_l2) memcpy(pt, p + e, sizeof(float) * (size_t)(n - e));
    memcpy(gt, g + e, sizeof(float) * (size_t)(n - e));
    memcpy(mt, m + e, sizeof(float) * (size_t)(n - e));
    group(loadu<vf>(pt), loadu<vf>(gt), loadu<vf>(mt), e);
  }
  for (int stride = RED_LANES / 2; stride >= 1; stride /= 2)
    for (int j = 0; j < stride; ++j) lanes[j] += lanes[j + stride];
  return lanes[0];
}

// The NaN-propagating max of |src| (envelope reductions: red_loop and chunk_max) over n elements
// (order-independent: any NaN gives NaN, the rest are exact maxima of values >= +0).
template <int K>
inline float env_max(const VScalars& S, const int64_t n, const float* p, const float* g, const float* m,
                     const float* v, const float bc1f, const float bc2f) {
  constexpr bool HM = kind_has_m(K), HV = kind_has_v(K);
  const vf bc1 = splat(bc1f), bc2 = splat(bc2f);
  vf mx = splat(0.0f);
  auto group = [&](const vf pv, const vf gv, const vf mv, const vf vv) {
    In in{pv, gv, mv, vv, splat(0.0f)};
    mx = vnanmax(mx, rule<K>(S, in, splat(0.0f), false, true, vu{}, bc1, bc2).red);
  };
  int64_t e = 0;
  for (; e + W <= n; e += W)
    group(S.has_l2 ? loadu<vf>(p + e) : splat(0.0f), loadu<vf>(g + e), HM ? loadu<vf>(m + e) : splat(0.0f),
          HV ? loadu<vf>(v + e) : splat(0.0f));
  if (e < n) {  // padded lanes: g = 0 gives src = 0 (or 0/(sqrt(0)+eps) = 0): no change
    float pt[W] = {}, gt[W] = {}, mt[W] = {}, vt[W] = {};
    const size_t b = sizeof(float) * (size_t)(n - e);
    if (S.has_l2) memcpy(pt, p + e, b);
    memcpy(gt, g + e, b);
    if (HM) memcpy(mt, m + e, b);
    if (HV) memcpy(vt, v + e, b);
    group(loadu<vf>(pt), loadu<vf>(gt), loadu<vf>(mt), loadu<vf>(vt));
  }
  float r = 0.0f;
  for (int i = 0; i < W; ++i) r = nanmax(r, mx[i]);
  return r;
}

}  // namespace vec
}  // namespace cpu
}  // namespace signopt
