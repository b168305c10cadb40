// Host helpers of signopt.scalars.step_values for many-tensor groups, so a step's counters and
// Philox keys cost no Python per tensor (the same values as the Python code, which stays the
// statement: signopt/philox.py derive_key; tests/test_cpp_core.py checks them equal).
//   torch.classes.signopt.StepCounters(steps): a plan's 0-dim int64 CPU step counters, held;
//     advance() adds 1 to each and returns the new values;
//   derive_keys(seed_lo, seed_hi, domain, steps, indices) -> int[]: per tensor the key (k0, k1) =
//     words 0 and 1 of Philox4x32-10 with key (seed_lo, seed_hi) on the counter
//     (t mod 2^32, t >> 32, index mod 2^32, domain), flattened.
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <vector>

#include "philox.h"

namespace signopt {
namespace {

std::vector<int64_t> derive_keys(int64_t seed_lo, int64_t seed_hi, int64_t domain, at::IntArrayRef steps,
                                 at::IntArrayRef indices) {
  TORCH_CHECK(steps.size() == indices.size(), "derive_keys: one index per step, got ", steps.size(), " steps and ",
              indices.size(), " indices");
  std::vector<int64_t> out(2 * steps.size());
  for (size_t s = 0; s < steps.size(); ++s) {
    const uint64_t t = (uint64_t)steps[s];
    const PhiloxWords w = philox4x32_10((uint32_t)seed_lo, (uint32_t)seed_hi, (uint32_t)t, (uint32_t)(t >> 32),
                                        (uint32_t)indices[s], (uint32_t)domain);
    out[2 * s] = w.w0;
    out[2 * s + 1] = w.w1;
  }
  return out;
}

}  // namespace

struct StepCounters : torch::CustomClassHolder {
  std::vector<at::Tensor> steps;

  explicit StepCounters(std::vector<at::Tensor> st) : steps(std::move(st)) {
    for (const at::Tensor& t : steps) {
      TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.numel() == 1 && t.is_contiguous(),
                  "StepCounters: step counters must be one-element int64 CPU tensors, got ", t.scalar_type(),
                  " on ", t.device());
    }
  }

  std::vector<int64_t> advance() {
    std::vector<int64_t> out;
    out.reserve(steps.size());
    for (const at::Tensor& t : steps) {
      int64_t& v = *t.data_ptr<int64_t>();
      v += 1;
      out.push_back(v);
    }
    return out;
  }
};

}  // namespace signopt

TORCH_LIBRARY_FRAGMENT(signopt, m) {
  m.class_<signopt::StepCounters>("StepCounters")
      .def(torch::init<std::vector<at::Tensor>>())
      .def("advance", &signopt::StepCounters::advance);
  m.def("derive_keys(int seed_lo, int seed_hi, int domain, int[] steps, int[] indices) -> int[]",
        &signopt::derive_keys);
}
