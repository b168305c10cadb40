// torch.classes.signopt.GroupStep: a param group's kept signopt::step calls, so that a step over
// many small tensors costs no Python per tensor.  It holds the group's parameters that have a
// gradient (its slots) and, per (param dtype, state format) call, the state tensors and the fixed
// arguments of signopt::step.  Its arguments are signopt::step's (signopt.declaration): add_call
// and run take them by name, split by the generated SIGNOPT_HELD_* macros.
//   add_call(slots, <the call's fixed arguments>) adds one call over slots (indices into the
//     group's slots): its state lists, kind, formats, state_block, envelope, flags, offsets and
//     segment lengths;
//   count(steps, indices, domain, keys, bias): the slots' step counters (0-dim int64 tensors of
//     the state) and tensor indices, for rules that keep a step: whether they draw random bits
//     (keys) and bias-correct (bias);
//   advance(seed_lo, seed_hi, beta1, beta2): adds 1 to each counter and derives this step's
//     per-slot keys and bias corrections from them (csrc/step_values.h: the values
//     signopt.scalars.step_values gives);
//   check() reads every slot's .grad here, in C++, and says whether it and the parameter still
//     have the layout the plan was built for (strided, contiguous, with the parameter's dtype,
//     shape and device when built); it keeps the gradients for run() and touches nothing;
//   run(scalars, <this step's optional tensors>) runs the calls on the gradients check() kept
//     with the scalars (the values of signopt.declaration.SCALARS, in order) and the keys and
//     bias corrections advance() derived (the CPU or CUDA implementation,
//     called directly); it drops the gradients and returns the non-finite count; release() drops
//     them unrun.
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <vector>

#include "signopt_declaration.h"
#include "step_impl.h"
#include "step_values.h"

namespace signopt {

namespace {

// One signopt::step call: its slots (indices into the group's slots), their parameters, and the
// arguments add_call keeps (SIGNOPT_HELD_FIELDS: state lists, kind, formats, flags, offsets, ...).
struct HeldCall {
  std::vector<int64_t> slots;
  std::vector<at::Tensor> params;
  SIGNOPT_HELD_FIELDS
};

// The entries of slots `slots` (two per slot) of a per-slot list; empty stays empty.
template <class T>
void pick_pairs(const std::vector<T>& all, const std::vector<int64_t>& slots, std::vector<T>& out) {
  out.clear();
  if (all.empty()) return;
  for (const int64_t s : slots) {
    out.push_back(all[2 * s]);
    out.push_back(all[2 * s + 1]);
  }
}

}  // namespace

struct GroupStep : torch::CustomClassHolder {
  std::vector<at::Tensor> params;  // per slot: its parameter
  struct Layout {
    at::ScalarType dtype;
    std::vector<int64_t> sizes;
    at::Device device;
  };
  std::vector<Layout> layouts;     // per slot: its parameter's when built
  std::vector<HeldCall> calls;
  std::vector<at::Tensor> grads;   // per slot, between check() and run()
  // count(): the slots' step counters and tensor indices, what advance() derives from them
  c10::intrusive_ptr<StepCounters> counters;
  std::vector<int64_t> indices, steps;
  int64_t domain = 0;
  bool derives_keys = false, derives_bias = false, advanced = false;
  std::vector<int64_t> keys;  // per slot two words (advance(); empty: the rule draws no bits)
  std::vector<double> bias;   // per slot two corrections (advance(); empty: none)

  explicit GroupStep(std::vector<at::Tensor> ps) : params(std::move(ps)) {
    for (const at::Tensor& p : params) layouts.push_back(Layout{p.scalar_type(), p.sizes().vec(), p.device()});
  }

  void add_call(std::vector<int64_t> slots, SIGNOPT_HELD_PARAMS) {
    HeldCall c;
    for (const int64_t s : slots) {
      TORCH_CHECK(s >= 0 && s < (int64_t)params.size(), "GroupStep.add_call: slot ", s, " out of range");
      c.params.push_back(params[s]);
    }
    c.slots = std::move(slots);
    SIGNOPT_HELD_STORE(c)
    calls.push_back(std::move(c));
  }

  void count(std::vector<at::Tensor> step_tensors, std::vector<int64_t> idx, int64_t dom, bool with_keys,
             bool with_bias) {
    TORCH_CHECK(step_tensors.size() == params.size() && idx.size() == params.size(),
                "GroupStep.count: one step counter and one index per slot");
    counters = c10::make_intrusive<StepCounters>(std::move(step_tensors));
    indices = std::move(idx);
    domain = dom;
    derives_keys = with_keys;
    derives_bias = with_bias;
  }

  void advance(int64_t seed_lo, int64_t seed_hi, double beta1, double beta2) {
    TORCH_CHECK(counters, "GroupStep.advance: call count() first");
    counters->advance_into(steps);
    const size_t n = steps.size();
    keys.resize(derives_keys ? 2 * n : 0);
    bias.resize(derives_bias ? 2 * n : 0);
    if (derives_keys) derive_keys_into(seed_lo, seed_hi, domain, steps.data(), indices.data(), n, keys.data());
    if (derives_bias) bias_corrections_into(beta1, beta2, steps.data(), n, bias.data());
    advanced = true;
  }

  bool check() {
    grads.clear();
    grads.reserve(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      const at::Tensor& p = params[i];
      const at::Tensor& g = p.grad();
      const Layout& want = layouts[i];
      if (!g.defined() || !fits(p, want) || !fits(g, want)) {
        grads.clear();
        return false;
      }
      grads.push_back(g);
    }
    return true;
  }

  void release() { grads.clear(); }

  static bool fits(const at::Tensor& t, const Layout& want) {
    return t.layout() == at::kStrided && t.scalar_type() == want.dtype && t.sizes() == want.sizes &&
           t.device() == want.device && t.is_contiguous();
  }

  at::Tensor run(SIGNOPT_HELD_RUN_PARAMS) {
    TORCH_CHECK(grads.size() == params.size(), "GroupStep.run: call check() first");
    TORCH_CHECK(!counters || advanced, "GroupStep.run: call advance() first");
    TORCH_CHECK(scalars.size() == SIGNOPT_HELD_SCALAR_COUNT, "GroupStep.run: scalars must hold ",
                SIGNOPT_HELD_SCALAR_COUNT, " values (signopt.declaration.SCALARS), got ", scalars.size());
    advanced = false;
    SIGNOPT_HELD_UNPACK_SCALARS(scalars)
    std::vector<at::Tensor> held = std::move(grads);
    grads.clear();  // a kept plan must not keep this step's gradients alive
    at::Tensor total;
    std::vector<at::Tensor> g;
    std::vector<int64_t> call_keys;
    std::vector<double> call_bias;
    for (const HeldCall& c : calls) {
      g.clear();
      for (const int64_t s : c.slots) g.push_back(held[s]);
      pick_pairs(keys, c.slots, call_keys);
      pick_pairs(bias, c.slots, call_bias);
#if defined(SIGNOPT_CUDA)
      auto* impl = c.params[0].is_cuda() ? &step_cuda : &step_cpu;
#else
      auto* impl = &step_cpu;
#endif
      const at::Tensor count = impl(SIGNOPT_HELD_CALL_ARGS(c, g, call_keys, call_bias));
      total = total.defined() ? total + count : count;
    }
    return total.defined() ? total : at::zeros({}, at::kLong);
  }
};

}  // namespace signopt

TORCH_LIBRARY_FRAGMENT(signopt, m) {
  m.class_<signopt::GroupStep>("GroupStep")
      .def(torch::init<std::vector<at::Tensor>>())
      .def("add_call", &signopt::GroupStep::add_call, "", {torch::arg("slots"), SIGNOPT_HELD_NAMES})
      .def("count", &signopt::GroupStep::count)
      .def("advance", &signopt::GroupStep::advance)
      .def("check", &signopt::GroupStep::check)
      .def("run", &signopt::GroupStep::run, "", {SIGNOPT_HELD_RUN_NAMES})
      .def("release", &signopt::GroupStep::release);
}
