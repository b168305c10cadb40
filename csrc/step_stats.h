// Step statistics (step_stats=True): their math, shared by the CPU kernels (cpu_kernels.h's
// scalar tiles; cpu_vloops.h computes the same lane by lane) and the CUDA kernels
// (cuda_kernels.cu).  Both keep an ItemStats per run of elements (a CPU work item, a CUDA thread
// and block), merge them in a fixed order (so the fp64 sum does not depend on the thread count or
// the scheduling) and accumulate the call's into the param group's STAT_COUNT values (STAT_* of
// the generated header), which every call of the group adds to.
#pragma once
#include <math.h>
#include <stdint.h>

#include "config.h"
#include "rules.h"

namespace signopt {

// The step statistics of a run of elements: the fp64 sum of the squared update, the reversed
// update signs and the NaN-propagating max of |new state| per slot (m, v, G).
struct ItemStats {
  double sq = 0.0;
  int64_t flips = 0;
  float am = 0.0f, av = 0.0f, aG = 0.0f;
};

// The sign of an update direction as stored for step statistics: +1, -1, or 0 (0 and NaN).
SIGNOPT_HD int8_t sign8(const float u) { return u > 0.0f ? 1 : (u < 0.0f ? -1 : 0); }

// One element: its update p_new - p (fp32, before rounding into the parameter format; 0 where the
// gradient is bad) squared in fp64; a reversal where the sign of the direction u (after cautious
// masking) and the previous sign prev are opposite (never where bad); prev takes u's sign unless
// bad.
SIGNOPT_HD void stats_update(ItemStats& st, const float p, const float p_new, const float u, const bool bad,
                             int8_t& prev) {
  const double d = bad ? 0.0 : (double)(p_new - p);
  st.sq += d * d;
  const int8_t s8 = sign8(u);
  st.flips += (!bad && s8 * prev < 0) ? 1 : 0;
  if (!bad) prev = s8;
}

// A new state value (fp32, before encoding) into its slot's NaN-propagating max of |x|.
SIGNOPT_HD void stats_absmax(float& a, const float x) { a = nanmax(a, fabsf(x)); }

// b into a: sums added, maxima NaN-propagating.
SIGNOPT_HD void stats_merge(ItemStats& a, const ItemStats& b) {
  a.sq += b.sq;
  a.flips += b.flips;
  a.am = nanmax(a.am, b.am);
  a.av = nanmax(a.av, b.av);
  a.aG = nanmax(a.aG, b.aG);
}

// o <- max(o, x) in fp64, NaN if either is.
SIGNOPT_HD void stats_max(double& o, const float x) {
  o = (o != o || x != x) ? (double)NAN : (o < (double)x ? (double)x : o);
}

// A call's statistics (all: its elements'; its non-finite gradient count) into the group's values.
SIGNOPT_HD void stats_accumulate(double* out, const ItemStats& all, const int64_t nonfinite) {
  out[STAT_UPDATE_SQ_SUM] += all.sq;
  out[STAT_SIGN_FLIPS] += (double)all.flips;
  out[STAT_NONFINITE] += (double)nonfinite;
  stats_max(out[STAT_M_ABSMAX], all.am);
  stats_max(out[STAT_V_ABSMAX], all.av);
  stats_max(out[STAT_G_ABSMAX], all.aG);
}

// A call that found_inf > 0 skipped: nothing changed (no update, no reversal); its non-finite
// count; NaN state maxima (the state is not read).
SIGNOPT_HD void stats_skipped(double* out, const int64_t nonfinite) {
  out[STAT_NONFINITE] += (double)nonfinite;
  out[STAT_M_ABSMAX] = NAN;
  out[STAT_V_ABSMAX] = NAN;
  out[STAT_G_ABSMAX] = NAN;
}

}  // namespace signopt
