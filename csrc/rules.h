// Per-element update-rule core shared by the CPU and CUDA kernels: the math of
// signopt/reference.py, operation by operation, in fp32 without FMA contraction
// (-ffp-contract=off, nvcc --fmad=false).  Scalars come from the host (signopt/scalars.py);
// nothing here re-derives them.
//
//   prologue:  g <- g*inv_scale; g <- -g (maximize); bad = !finite(g); g <- bad ? 0 : g;
//              g <- g + l2*p                                   (wd_mode='l2')
//   sign:      u = sign(g)
//   signum:    m <- bad ? m : m*b1 + g*(1-b1);          u = sign(m)
//   lion:      c = bad ? 0 : m*b1 + g*(1-b1);  m <- bad ? m : m*b2 + g*(1-b2);  u = dkappa(c)
//              l1 sign(c) | l2sq c | huber clip(c/delta,-1,1) | l2,row_l2 c/norm | lp sign(c)|c|^(p-1)/norm
//   stochastic: d = base direction (sgd g | momentum m | lion c | adamw (m/bc1)/(sqrt(v/bc2)+eps));
//              G <- fmax(G*gamma, |d| or |g|) (element; reduced per row/block/tensor otherwise);
//              u = U < (1 + d/G)/2 ? 1 : -1, 0 where d = G = 0
//   cautious:  u <- u*g > 0 ? u*(numel/(kept+1)) : 0
//   epilogue:  p <- bad ? p : p*decay - lr*u
#pragma once
#include <math.h>
#include "config.h"
#include "philox.h"
#include "signopt_declaration.h"

namespace signopt {

// Kinds, envelopes and the Scalars struct come from the generated header (signopt.declaration).
SIGNOPT_HD constexpr bool kind_stochastic(int k) { return kind_family(k) == FAMILY_STOCHASTIC; }

// torch.sign (0 for 0 and NaN)
SIGNOPT_HD float sgn(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }

// x*beta + y*omb: two rounded products, one rounded sum (reference.ema)
SIGNOPT_HD float ema(float x, float y, float beta, float omb) { return x * beta + y * omb; }

// Tensor.pow(scalar) as ATen evaluates it: 0 -> 1, 1 -> x, 0.5 -> sqrt, 2 -> x*x, 3 -> x*x*x.
SIGNOPT_HD float pow_aten(float x, float e) {
  if (e == 1.0f) return x;
  if (e == 2.0f) return x * x;
  if (e == 3.0f) return x * x * x;
  if (e == 0.5f) return sqrtf(x);
  if (e == 0.0f) return 1.0f;
  return powf(x, e);
}
SIGNOPT_HD double pow_aten(double x, double e) {
  if (e == 1.0) return x;
  if (e == 2.0) return x * x;
  if (e == 3.0) return x * x * x;
  if (e == 0.5) return sqrt(x);
  if (e == 0.0) return 1.0;
  return pow(x, e);
}

// fmax (torch.fmax): NaN-ignoring max, written out so that it inlines and vectorises (both
// operands are >= 0 or NaN wherever it is used, so signed zeros do not arise).
SIGNOPT_HD float fmax_ign(float a, float b) {
  return (a != a) ? b : ((b != b) ? a : (a > b ? a : b));
}

// NaN-propagating max (torch.amax), order-independent.
SIGNOPT_HD float nanmax(float a, float b) {
  return (a != a) ? a : ((b != b) ? b : (b > a ? b : a));
}

// One element before the epilogue.
struct ElemIn {
  float p, g, m, v, G;  // fp32 (decoded) parameter, raw gradient, state; G: old element envelope
};
struct ElemOut {
  float g;      // gradient after the prologue
  float u;      // direction before cautious masking
  float m, v;   // new state
  float G;      // new element envelope
  float red;    // the value a reduction pass needs: c (lion norm kinds) or |src| (envelopes)
  bool bad;     // gradient not finite
};

SIGNOPT_HD float prologue(const Scalars& s, float p, float g, bool& bad) {
  g = s.has_inv_scale ? g * s.inv_scale : g;
  g = s.maximize ? -g : g;
  bad = !finite32(g);
  g = bad ? 0.0f : g;
  g = s.l2 != 0.0f ? g + s.l2 * p : g;
  return g;
}

// The base direction of the stochastic kinds and of Lion (c).
template <int K>
SIGNOPT_HD float base_direction(const Scalars& s, const ElemIn& in, float g, bool bad, float bc1,
                                float bc2, ElemOut& o) {
  if (K == K_STO_SGD) return g;
  if (K == K_STO_MOMENTUM || K == K_SIGNUM) {
    o.m = bad ? in.m : ema(in.m, g, s.beta1, s.omb1);
    return o.m;
  }
  if (K == K_STO_ADAMW) {
    o.m = bad ? in.m : ema(in.m, g, s.beta1, s.omb1);
    o.v = bad ? in.v : ema(in.v, g * g, s.beta2, s.omb2);
    const float d = (o.m / bc1) / (sqrtf(o.v / bc2) + s.eps);
    return bad ? 0.0f : d;
  }
  // Lion family and the lion base: c from the old m; m from the old m
  const float c = bad ? 0.0f : ema(in.m, g, s.beta1, s.omb1);
  o.m = bad ? in.m : ema(in.m, g, s.beta2, s.omb2);
  return c;
}

// S_G(d): +1 where U < (1 + d/G)/2, else -1; 0 where d = G = 0.
SIGNOPT_HD float stochastic_sign(float d, float G, float u) {
  const float thr = (1.0f + d / G) * 0.5f;
  const float s = u < thr ? 1.0f : -1.0f;
  // d = G = 0 (either sign) as an integer test: a float compare here let gcc fold the caller's
  // `bad ? 0 : d` into a boolean select it cannot vectorise
  return ((f2u(d) | f2u(G)) & 0x7FFFFFFFu) == 0u ? 0.0f : s;
}

// Everything but the reduction-dependent part.  `seg` is the element's segment value:
// the fp32 norm (lion l2/row_l2/lp) or the new envelope of its cell (segment envelopes).
// `word0` is Philox word 0 of the element (stochastic kinds).
// The direction from a gradient that already went through the prologue (g, bad).
template <int K>
SIGNOPT_HD ElemOut direction_after_prologue(const Scalars& s, const ElemIn& in, float g, bool bad, float seg,
                                            uint32_t word0, float bc1, float bc2) {
  ElemOut o;
  o.m = in.m;
  o.v = in.v;
  o.G = in.G;
  o.g = g;
  o.bad = bad;
  if (K == K_SIGN) {
    o.u = sgn(g);
    o.red = 0.0f;
  } else if (K == K_SIGNUM) {
    o.u = sgn(base_direction<K>(s, in, g, bad, bc1, bc2, o));
    o.red = 0.0f;
  } else if (!kind_stochastic(K)) {
    const float c = base_direction<K>(s, in, g, bad, bc1, bc2, o);
    o.red = c;
    if (K == K_LION_L1) {
      o.u = sgn(c);
    } else if (K == K_LION_L2SQ) {
      o.u = c;
    } else if (K == K_LION_HUBER) {
      const float x = c / s.huber_delta;
      o.u = x < -1.0f ? -1.0f : (x > 1.0f ? 1.0f : x);  // clamp; NaN stays NaN
    } else if (K == K_LION_NORM) {
      o.u = seg > 0.0f ? c / seg : 0.0f;
    } else {  // K_LION_LP
      const float mag = sgn(c) * pow_aten(fabsf(c), s.p_minus_1);
      o.u = seg > 0.0f ? mag / seg : 0.0f;
    }
  } else {
    const float d = base_direction<K>(s, in, g, bad, bc1, bc2, o);
    const float src = s.envelope_from_grad ? fabsf(g) : fabsf(d);
    o.red = src;
    // element envelope: G <- bad ? G : fmax(G*gamma, src); a segment envelope comes as seg
    const float Ge = bad ? in.G : fmax_ign(in.G * s.envelope_decay, src);
    o.G = Ge;  // stored for element envelopes only
    const float G = s.envelope == ENV_ELEMENT ? Ge : seg;
    o.u = stochastic_sign(d, G, uniform_from_word(word0));
  }
  return o;
}

template <int K>
SIGNOPT_HD ElemOut element_direction(const Scalars& s, const ElemIn& in, float seg, uint32_t word0,
                                     float bc1, float bc2) {
  bool bad;
  const float g = prologue(s, in.p, in.g, bad);
  return direction_after_prologue<K>(s, in, g, bad, seg, word0, bc1, bc2);
}

// Cautious masking with the tensor's scale numel/(kept+1) (fp32).
SIGNOPT_HD bool cautious_keep(float u, float g) { return u * g > 0.0f; }
SIGNOPT_HD float cautious_apply(float u, float g, float scale) {
  return cautious_keep(u, g) ? u * scale : 0.0f;
}

// p <- bad ? p : p*decay - lr*u
SIGNOPT_HD float epilogue(float p, float u, float lr, float decay, bool bad) {
  const float q = p * decay - lr * u;
  return bad ? p : q;
}

// ------------------------------------------------------------------ reductions
// Sums run in fp64 over fixed chunks of a segment (RED_CHUNK elements): lane j of RED_LANES
// adds elements j, j+RED_LANES, ... in order, lanes then fold by halving strides, chunk sums
// add in chunk order.  The order depends on neither the thread count nor the launch shape.
constexpr int RED_LANES = 256;
constexpr int RED_CHUNK = 4096;

// fp64 term of one element: c^2 (l2, row_l2) or |c|^p (lp)
template <int K>
SIGNOPT_HD double norm_term(float c, double p) {
  const double x = (double)c;
  if (K == K_LION_LP) return pow_aten(fabs(x), p);
  return x * x;
}

// fp32 norm of a segment from its fp64 sum (kappa.l2_norm / row_l2_norms / lp_norm_pow)
template <int K>
SIGNOPT_HD float norm_from_sum(double sum, double root) {
  if (K == K_LION_LP) return (float)pow_aten(sum, root);
  return (float)sqrt(sum);
}

}  // namespace signopt
