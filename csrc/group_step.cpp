// torch.classes.signopt.GroupStep: a param group's kept signopt::step calls, so that a step over
// many small tensors costs no Python per tensor.  It holds the group's parameters that have a
// gradient (its slots) and, per (param dtype, state format) call, the state tensors and the fixed
// arguments of signopt::step.
//   check() reads every slot's .grad here, in C++, and says whether it and the parameter still
//     have the layout the plan was built for (strided, contiguous, with the parameter's dtype,
//     shape and device when built); it keeps the gradients for run() and touches nothing.
//   advance(...) (rules with step counters, after set_counters) steps the counters and derives
//     this step's keys and bias corrections in C++, as the Python path does;
//   run(hyper, lr?, decay?, inv_scale?, found_inf?) runs the calls on the gradients check() kept
//     (the CPU or CUDA implementation, called directly) with advance()'s keys and bias (zeros and
//     ones without), drops them and returns the non-finite count; release() drops them unrun.
#include <ATen/ATen.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "philox.h"
#include "step_impl.h"

namespace signopt {

namespace {

// x rounded to fp32 (nearest even), as a double.  Through a volatile float: GCC 12 with
// -fno-math-errno drops a plain (double)(float) round trip of a pow() result.
inline double round_f32(const double x) {
  volatile float f = (float)x;
  return f;
}

// One signopt::step call: slots (indices into the group's slots) and its fixed arguments.
struct HeldCall {
  std::vector<int64_t> slots;
  std::vector<at::Tensor> params, m, v, env, m_scale, v_scale, env_scale;
  std::vector<int64_t> config, offsets, seglens;
};

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
  std::vector<at::Tensor> steps;   // per slot: its step counter (0-dim int64, CPU), rules that keep one
  std::vector<int64_t> indices;    // per slot: tensor index over all groups (keys the random stream)
  std::vector<int64_t> keys;       // per slot: advance()'s Philox key (k0, k1), else empty
  std::vector<double> bias;        // per slot: advance()'s bias corrections (bc1, bc2), else empty

  explicit GroupStep(std::vector<at::Tensor> ps) : params(std::move(ps)) {
    for (const at::Tensor& p : params) layouts.push_back(Layout{p.scalar_type(), p.sizes().vec(), p.device()});
  }

  void add_call(std::vector<int64_t> slots, std::vector<at::Tensor> m, std::vector<at::Tensor> v,
                std::vector<at::Tensor> env, std::vector<at::Tensor> m_scale, std::vector<at::Tensor> v_scale,
                std::vector<at::Tensor> env_scale, std::vector<int64_t> config, std::vector<int64_t> offsets,
                std::vector<int64_t> seglens) {
    HeldCall c;
    for (const int64_t s : slots) {
      TORCH_CHECK(s >= 0 && s < (int64_t)params.size(), "GroupStep.add_call: slot ", s, " out of range");
      c.params.push_back(params[s]);
    }
    c.slots = std::move(slots);
    c.m = std::move(m);
    c.v = std::move(v);
    c.env = std::move(env);
    c.m_scale = std::move(m_scale);
    c.v_scale = std::move(v_scale);
    c.env_scale = std::move(env_scale);
    c.config = std::move(config);
    c.offsets = std::move(offsets);
    c.seglens = std::move(seglens);
    calls.push_back(std::move(c));
  }

  void set_counters(std::vector<at::Tensor> st, std::vector<int64_t> idx) {
    TORCH_CHECK(st.size() == params.size() && idx.size() == params.size(),
                "GroupStep.set_counters: one step counter and one index per slot");
    for (const at::Tensor& t : st) {
      TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.numel() == 1,
                  "GroupStep.set_counters: step counters must be one-element int64 CPU tensors");
    }
    steps = std::move(st);
    indices = std::move(idx);
  }

  // Each slot's step counter t += 1, its key derive_key(seed, t, index) (signopt/philox.py: words
  // 0 and 1 of Philox4x32-10 with key (seed_lo, seed_hi) and counter (t mod 2^32, t >> 32,
  // index mod 2^32, 0x5349474E)) and, with bias_correction, fp32(1 - beta**t) for both betas
  // (fp64 pow, as Python's float ** int) for the next run().
  void advance(int64_t seed_lo, int64_t seed_hi, double beta1, double beta2, bool bias_correction) {
    TORCH_CHECK(steps.size() == params.size(), "GroupStep.advance: set_counters() first");
    const size_t n = params.size();
    keys.assign(2 * n, 0);
    bias.assign(bias_correction ? 2 * n : 0, 1.0);
    for (size_t s = 0; s < n; ++s) {
      int64_t& t = *steps[s].data_ptr<int64_t>();
      t += 1;
      const uint64_t tu = (uint64_t)t;
      const PhiloxWords w = philox4x32_10((uint32_t)seed_lo, (uint32_t)seed_hi, (uint32_t)tu, (uint32_t)(tu >> 32),
                                          (uint32_t)indices[s], 0x5349474Eu);
      keys[2 * s] = w.w0;
      keys[2 * s + 1] = w.w1;
      if (bias_correction) {
        bias[2 * s] = round_f32(1.0 - std::pow(beta1, (double)t));
        bias[2 * s + 1] = round_f32(1.0 - std::pow(beta2, (double)t));
      }
    }
  }

  // advance()'s keys and bias corrections, as computed (for inspection).
  std::tuple<std::vector<int64_t>, std::vector<double>> derived() const { return {keys, bias}; }

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

  at::Tensor run(std::vector<double> hyper, c10::optional<at::Tensor> lr, c10::optional<at::Tensor> decay,
                 c10::optional<at::Tensor> inv_scale, c10::optional<at::Tensor> found_inf) {
    TORCH_CHECK(grads.size() == params.size(), "GroupStep.run: call check() first");
    TORCH_CHECK(steps.empty() || !keys.empty(), "GroupStep.run: a group with step counters needs advance() first");
    std::vector<at::Tensor> held = std::move(grads);
    grads.clear();  // a kept plan must not keep this step's gradients alive
    at::Tensor total;
    std::vector<at::Tensor> g;
    std::vector<int64_t> k;
    std::vector<double> b;
    for (const HeldCall& c : calls) {
      const size_t n = c.slots.size();
      g.clear();
      k.assign(2 * n, 0);
      b.assign(2 * n, 1.0);
      for (size_t j = 0; j < n; ++j) {
        const int64_t s = c.slots[j];
        g.push_back(held[s]);
        if (!keys.empty()) {
          k[2 * j] = keys[2 * s];
          k[2 * j + 1] = keys[2 * s + 1];
        }
        if (!bias.empty()) {
          b[2 * j] = bias[2 * s];
          b[2 * j + 1] = bias[2 * s + 1];
        }
      }
#if defined(SIGNOPT_CUDA)
      auto* impl = c.params[0].is_cuda() ? &step_cuda : &step_cpu;
#else
      auto* impl = &step_cpu;
#endif
      const at::Tensor count = impl(c.params, g, c.m, c.v, c.env, c.m_scale, c.v_scale, c.env_scale, c.config, hyper,
                                    k, c.offsets, c.seglens, b, lr, decay, inv_scale, found_inf);
      total = total.defined() ? total + count : count;
    }
    keys.clear();  // one advance() per run()
    bias.clear();
    return total.defined() ? total : at::zeros({}, at::kLong);
  }
};

}  // namespace signopt

TORCH_LIBRARY_FRAGMENT(signopt, m) {
  m.class_<signopt::GroupStep>("GroupStep")
      .def(torch::init<std::vector<at::Tensor>>())
      .def("add_call", &signopt::GroupStep::add_call)
      .def("check", &signopt::GroupStep::check)
      .def("run", &signopt::GroupStep::run)
      .def("release", &signopt::GroupStep::release)
      .def("set_counters", &signopt::GroupStep::set_counters)
      .def("advance", &signopt::GroupStep::advance)
      .def("derived", &signopt::GroupStep::derived);
}
