// Argument checking and unpacking of signopt::step, shared by the CPU and CUDA bindings.
// Every check runs before any tensor is touched; messages name the argument.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "group.h"
#include "rules.h"

namespace signopt {

struct StepConfig {
  int kind, pfmt, sfmt;
  int64_t block;
  int maximize, cautious, env_from_grad, envelope, state_sr, param_sr;
};

inline at::ScalarType fmt_dtype(int fmt) {
  static const at::ScalarType d[] = {at::kFloat, at::kBFloat16, at::kHalf, at::kFloat8_e4m3fn, at::kFloat8_e5m2};
  return d[fmt];
}

inline void check_list(const char* name, at::TensorList list, size_t n, bool required) {
  TORCH_CHECK(list.empty() ? !required : list.size() == n, "signopt::step: ", name, " must hold ",
              required ? "" : "0 or ", n, " tensors, got ", list.size());
}

inline StepConfig check_step_args(at::TensorList params, at::TensorList grads, at::TensorList m, at::TensorList v,
                                  at::TensorList env, at::TensorList m_scale, at::TensorList v_scale,
                                  at::TensorList env_scale, at::IntArrayRef config, at::ArrayRef<double> hyper,
                                  at::IntArrayRef keys, at::IntArrayRef offsets, at::IntArrayRef seglens,
                                  at::ArrayRef<double> bias, at::DeviceType dev) {
  TORCH_CHECK(config.size() == 10, "signopt::step: config must have 10 entries, got ", config.size());
  TORCH_CHECK(hyper.size() == 13, "signopt::step: hyper must have 13 entries, got ", hyper.size());
  StepConfig c{(int)config[0], (int)config[1], (int)config[2], config[3], (int)config[4], (int)config[5],
               (int)config[6], (int)config[7], (int)config[8], (int)config[9]};
  TORCH_CHECK(c.kind >= 0 && c.kind < K_COUNT, "signopt::step: unknown rule kind ", c.kind);
  TORCH_CHECK(c.pfmt >= 0 && c.pfmt <= 2, "signopt::step: param format must be 0..2, got ", c.pfmt);
  TORCH_CHECK(c.sfmt >= 0 && c.sfmt <= 4, "signopt::step: state format must be 0..4, got ", c.sfmt);
  TORCH_CHECK(c.block >= 1, "signopt::step: state_block must be >= 1, got ", c.block);
  TORCH_CHECK(c.envelope == ENV_ELEMENT || c.envelope == ENV_SEGMENT, "signopt::step: envelope must be 0 or 1");
  const size_t n = params.size();
  TORCH_CHECK(n >= 1, "signopt::step: params must not be empty");
  check_list("grads", grads, n, true);
  const bool sto = kind_stochastic(c.kind), blocked = c.sfmt >= 3;
  check_list("m", m, n, kind_has_m(c.kind));
  check_list("v", v, n, kind_has_v(c.kind));
  check_list("env", env, n, sto);
  check_list("m_scale", m_scale, n, blocked && kind_has_m(c.kind));
  check_list("v_scale", v_scale, n, blocked && kind_has_v(c.kind));
  check_list("env_scale", env_scale, n, blocked && sto && c.envelope == ENV_ELEMENT);
  TORCH_CHECK(keys.size() == 2 * n, "signopt::step: keys must hold 2 entries per tensor");
  TORCH_CHECK(offsets.size() == n, "signopt::step: offsets must hold 1 entry per tensor");
  TORCH_CHECK(seglens.size() == n, "signopt::step: seglens must hold 1 entry per tensor");
  TORCH_CHECK(bias.size() == 2 * n, "signopt::step: bias must hold 2 entries per tensor");
  const bool needs_seg = kind_kappa_norm(c.kind) || (sto && c.envelope == ENV_SEGMENT);
  const at::Device device = params[0].device();
  TORCH_CHECK(device.type() == dev, "signopt::step: tensors on ", device, " reached the ", dev, " kernel");
  auto same = [&](const at::Tensor& t, const char* what, size_t i, at::ScalarType dt, int64_t numel) {
    TORCH_CHECK(t.device() == device, "signopt::step: ", what, "[", i, "] is on ", t.device(), ", params[0] on ",
                device);
    TORCH_CHECK(t.scalar_type() == dt, "signopt::step: ", what, "[", i, "] has dtype ", t.scalar_type(),
                ", expected ", dt);
    TORCH_CHECK(t.is_contiguous(), "signopt::step: ", what, "[", i, "] must be contiguous");
    TORCH_CHECK(t.numel() == numel, "signopt::step: ", what, "[", i, "] has ", t.numel(), " elements, expected ",
                numel);
  };
  const at::ScalarType pdt = fmt_dtype(c.pfmt), sdt = fmt_dtype(c.sfmt);
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = params[i].numel();
    same(params[i], "params", i, pdt, numel);
    same(grads[i], "grads", i, pdt, numel);
    const int64_t nblocks = (numel + c.block - 1) / c.block;
    if (!m.empty()) same(m[i], "m", i, sdt, numel);
    if (!v.empty()) same(v[i], "v", i, sdt, numel);
    if (!m_scale.empty()) same(m_scale[i], "m_scale", i, at::kFloat, nblocks);
    if (!v_scale.empty()) same(v_scale[i], "v_scale", i, at::kFloat, nblocks);
    if (!env_scale.empty()) same(env_scale[i], "env_scale", i, at::kFloat, nblocks);
    if (needs_seg && numel > 0) {
      TORCH_CHECK(seglens[i] >= 1, "signopt::step: seglens[", i, "] must be >= 1 for this rule");
    }
    if (!env.empty()) {
      if (c.envelope == ENV_ELEMENT) {
        same(env[i], "env", i, sdt, numel);
      } else if (numel > 0) {
        const int64_t L = std::min(seglens[i], numel);
        same(env[i], "env", i, at::kFloat, (numel + L - 1) / L);
      }
    }
    TORCH_CHECK(keys[2 * i] >= 0 && keys[2 * i] <= 0xFFFFFFFFll && keys[2 * i + 1] >= 0 &&
                    keys[2 * i + 1] <= 0xFFFFFFFFll,
                "signopt::step: keys must be uint32 values");
    TORCH_CHECK(offsets[i] >= 0, "signopt::step: offsets[", i, "] must be >= 0");
  }
  return c;
}

inline Scalars scalars_from(const StepConfig& c, at::ArrayRef<double> h) {
  Scalars s;
  s.lr = (float)h[0];
  s.decay = (float)h[1];
  s.l2 = (float)h[2];
  s.beta1 = (float)h[3];
  s.omb1 = (float)h[4];
  s.beta2 = (float)h[5];
  s.omb2 = (float)h[6];
  s.eps = (float)h[7];
  s.delta = (float)h[8];
  s.pm1 = (float)h[9];
  s.env_decay = (float)h[10];
  s.lp_p = h[11];
  s.lp_root = h[12];
  s.inv_scale = 1.0f;
  s.has_inv_scale = 0;
  s.maximize = c.maximize;
  s.cautious = c.cautious;
  s.env_from_grad = c.env_from_grad;
  s.envelope = c.envelope;
  s.state_sr = c.state_sr;
  s.param_sr = c.param_sr;
  return s;
}

inline void* ptr_or_null(at::TensorList l, size_t i) { return l.empty() ? nullptr : l[i].data_ptr(); }

// TensorRefs of the non-empty tensors (zero-size tensors have nothing to update).
inline std::vector<TensorRef> tensor_refs(at::TensorList params, at::TensorList grads, at::TensorList m,
                                          at::TensorList v, at::TensorList env, at::TensorList m_scale,
                                          at::TensorList v_scale, at::TensorList env_scale, at::IntArrayRef keys,
                                          at::IntArrayRef offsets, at::IntArrayRef seglens,
                                          at::ArrayRef<double> bias) {
  std::vector<TensorRef> out;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t numel = params[i].numel();
    if (numel == 0) continue;
    TensorRef r;
    r.p = params[i].data_ptr();
    r.g = grads[i].data_ptr();
    r.m = ptr_or_null(m, i);
    r.v = ptr_or_null(v, i);
    r.G = ptr_or_null(env, i);
    r.m_scale = (float*)ptr_or_null(m_scale, i);
    r.v_scale = (float*)ptr_or_null(v_scale, i);
    r.G_scale = (float*)ptr_or_null(env_scale, i);
    r.numel = numel;
    r.seglen = seglens[i] >= 1 ? seglens[i] : numel;
    r.offset = (uint64_t)offsets[i];
    r.k0 = (uint32_t)keys[2 * i];
    r.k1 = (uint32_t)keys[2 * i + 1];
    r.bc1 = (float)bias[2 * i];
    r.bc2 = (float)bias[2 * i + 1];
    out.push_back(r);
  }
  return out;
}

}  // namespace signopt
