// A step's per-tensor values on the host, for every C++ caller: Philox keys and AdamW's bias
// corrections (the statement: signopt/philox.py derive_key, signopt/scalars.py
// bias_corrections; tests/test_step_values.py holds them equal), and a plan's step counters.
//   derive_keys_into: per tensor s the key (k0, k1) = words 0 and 1 of Philox4x32-10 with key
//     (seed_lo, seed_hi) on the counter (t mod 2^32, t >> 32, index mod 2^32, domain), flattened;
//   bias_corrections_into: per tensor (1 - beta1^t, 1 - beta2^t) in fp64, rounded once to fp32;
//   StepCounters: 0-dim int64 CPU step counters (a plan's), advanced in place.
#pragma once
#include <ATen/ATen.h>
#include <torch/custom_class.h>

#include <cmath>
#include <vector>

#include "philox.h"

namespace signopt {

inline void derive_keys_into(const int64_t seed_lo, const int64_t seed_hi, const int64_t domain,
                             const int64_t* steps, const int64_t* indices, const size_t n, int64_t* out) {
  for (size_t s = 0; s < n; ++s) {
    const uint64_t t = (uint64_t)steps[s];
    const PhiloxWords w = philox4x32_10((uint32_t)seed_lo, (uint32_t)seed_hi, (uint32_t)t, (uint32_t)(t >> 32),
                                        (uint32_t)indices[s], (uint32_t)domain);
    out[2 * s] = w.w0;
    out[2 * s + 1] = w.w1;
  }
}

inline void bias_corrections_into(const double beta1, const double beta2, const int64_t* steps, const size_t n,
                                  double* out) {
  for (size_t s = 0; s < n; ++s) {
    if (s > 0 && steps[s] == steps[s - 1]) {  // the usual case: one step for every tensor
      out[2 * s] = out[2 * s - 2];
      out[2 * s + 1] = out[2 * s - 1];
      continue;
    }
    const double t = (double)steps[s];
    out[2 * s] = (double)(float)(1.0 - std::pow(beta1, t));
    out[2 * s + 1] = (double)(float)(1.0 - std::pow(beta2, t));
  }
}

struct StepCounters : torch::CustomClassHolder {
  std::vector<at::Tensor> steps;

  explicit StepCounters(std::vector<at::Tensor> st) : steps(std::move(st)) {
    for (const at::Tensor& t : steps) {
      TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.numel() == 1 && t.is_contiguous(),
                  "StepCounters: step counters must be one-element int64 CPU tensors, got ", t.scalar_type(),
                  " on ", t.device());
    }
  }

  // Adds 1 to each counter; their new values into out (resized).
  void advance_into(std::vector<int64_t>& out) {
    out.resize(steps.size());
    for (size_t i = 0; i < steps.size(); ++i) out[i] = ++*steps[i].data_ptr<int64_t>();
  }

  std::vector<int64_t> advance() {
    std::vector<int64_t> out;
    advance_into(out);
    return out;
  }
};

}  // namespace signopt
