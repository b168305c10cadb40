// The step-value helpers of csrc/step_values.h for Python (signopt.scalars, signopt.philox):
//   torch.classes.signopt.StepCounters(steps): a plan's step counters, held; advance() adds 1 to
//     each and returns the new values;
//   derive_keys(seed_lo, seed_hi, domain, steps, indices) -> int[]: the keys, flattened.
#include <torch/library.h>

#include "step_values.h"

namespace signopt {
namespace {

std::vector<int64_t> derive_keys(int64_t seed_lo, int64_t seed_hi, int64_t domain, at::IntArrayRef steps,
                                 at::IntArrayRef indices) {
  TORCH_CHECK(steps.size() == indices.size(), "derive_keys: one index per step, got ", steps.size(), " steps and ",
              indices.size(), " indices");
  std::vector<int64_t> out(2 * steps.size());
  derive_keys_into(seed_lo, seed_hi, domain, steps.data(), indices.data(), steps.size(), out.data());
  return out;
}

}  // namespace
}  // namespace signopt

TORCH_LIBRARY_FRAGMENT(signopt, m) {
  m.class_<signopt::StepCounters>("StepCounters")
      .def(torch::init<std::vector<at::Tensor>>())
      .def("advance", &signopt::StepCounters::advance);
  m.def("derive_keys(int seed_lo, int seed_hi, int domain, int[] steps, int[] indices) -> int[]",
        &signopt::derive_keys);
}
