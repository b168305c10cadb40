// Argument checking and unpacking of signopt::step, shared by the CPU and CUDA bindings.
// The op's arguments are declared once (signopt.declaration: SIGNOPT_STEP_SCHEMA,
// SIGNOPT_STEP_PARAMS and SIGNOPT_STEP_ARGS of the generated header).  Every check runs before
// any tensor is touched; messages name the argument.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "group.h"
#include "rules.h"
#include "signopt_declaration.h"

namespace signopt {

// The dtype of storage format f (an FMT_* id of the generated header).
inline at::ScalarType fmt_dtype(int64_t f) {
  switch (f) {
    case FMT_FP32: return at::kFloat;
    case FMT_BF16: return at::kBFloat16;
    case FMT_FP16: return at::kHalf;
    case FMT_FP8_E4M3: return at::kFloat8_e4m3fn;
    case FMT_FP8_E5M2: return at::kFloat8_e5m2;
    case FMT_MXFP8_E4M3: return at::kFloat8_e4m3fn;
    case FMT_MXFP8_E5M2: return at::kFloat8_e5m2;
    case FMT_FP4_E2M1: return at::kByte;  // two codes a byte
    case FMT_FP4_E2M1_E4M3: return at::kByte;
    default: TORCH_CHECK(false, "signopt: storage format ", f, " has no dtype here");
  }
}

// The ATen dtype of a block-scaled format's stored scales: fp32, E8M0 bytes (uint8), or E4M3
// values (NVFP4, relative to the fp32 tensor scale).
inline at::ScalarType fmt_scale_dtype(int64_t f) {
  return fmt_scale_e8m0((int)f) ? at::kByte : (fmt_tensor_scale((int)f) ? at::kFloat8_e4m3fn : at::kFloat);
}

inline void check_list(const char* name, at::TensorList list, size_t n, bool required) {
  TORCH_CHECK(list.empty() ? !required : list.size() == n, "signopt::step: ", name, " must hold ",
              required ? "" : "0 or ", n, " tensors, got ", list.size());
}

// Whether a call draws Philox words (and so needs keys).
inline bool draws_words(int64_t kind, bool state_stochastic_rounding, bool param_stochastic_rounding) {
  return kind_draws_sign((int)kind) || state_stochastic_rounding || param_stochastic_rounding;
}

// Whether the call reduces over segments (a kappa norm, a row/block/tensor envelope): seglens >= 1.
inline bool needs_segments(int64_t kind, int64_t envelope) {
  return kind_kappa_norm((int)kind) || (kind_has_env((int)kind) && envelope != ENV_ELEMENT);
}

inline void check_step_args(SIGNOPT_STEP_PARAMS, at::DeviceType dev) {
  TORCH_CHECK(kind >= 0 && kind < K_COUNT, "signopt::step: unknown rule kind ", kind);
  TORCH_CHECK(param_format >= 0 && param_format < FMT_COUNT && fmt_param((int)param_format),
              "signopt::step: param_format ", param_format, " is not a parameter format");
  TORCH_CHECK(state_format >= 0 && state_format < FMT_COUNT && fmt_state((int)state_format),
              "signopt::step: state_format ", state_format, " is not a state format");
  TORCH_CHECK(state_block >= 1, "signopt::step: state_block must be >= 1, got ", state_block);
  TORCH_CHECK(!fmt_packed((int)state_format) || state_block % 2 == 0,
              "signopt::step: packed 4-bit state needs an even state_block, got ", state_block);
  TORCH_CHECK(envelope >= 0 && envelope < ENV_COUNT, "signopt::step: unknown envelope ", envelope);
  const size_t n = params.size();
  TORCH_CHECK(n >= 1, "signopt::step: params must not be empty");
  check_list("grads", grads, n, true);
  const int k = (int)kind;
  const bool blocked = fmt_block_scaled((int)state_format);
  const bool elem_env = kind_has_env(k) && envelope == ENV_ELEMENT;
  check_list("m", m, n, kind_has_m(k));
  check_list("v", v, n, kind_has_v(k));
  check_list("env", env, n, kind_has_env(k));
  check_list("m_scale", m_scale, n, blocked && kind_has_m(k));
  check_list("v_scale", v_scale, n, blocked && kind_has_v(k));
  check_list("env_scale", env_scale, n, blocked && elem_env);
  const bool tscaled = fmt_tensor_scale((int)state_format);
  check_list("m_tensor_scale", m_tensor_scale, n, tscaled && kind_has_m(k));
  check_list("v_tensor_scale", v_tensor_scale, n, tscaled && kind_has_v(k));
  check_list("env_tensor_scale", env_tensor_scale, n, tscaled && elem_env);
  check_list("signs", signs, n, false);
  TORCH_CHECK(signs.empty() == stats.empty(), "signopt::step: signs and stats must both be given (step statistics) "
              "or both be empty, got ", signs.size(), " and ", stats.size(), " tensors");
  TORCH_CHECK(stats.size() <= 1, "signopt::step: stats must hold 0 or 1 tensors, got ", stats.size());
  const bool words = draws_words(kind, state_stochastic_rounding, param_stochastic_rounding);
  TORCH_CHECK(keys.size() == 2 * n || (keys.empty() && !words), "signopt::step: keys must hold 2 entries per tensor",
              words ? "" : " (or none)", ", got ", keys.size(), " for ", n, " tensors");
  TORCH_CHECK(offsets.size() == n, "signopt::step: offsets must hold 1 entry per tensor");
  TORCH_CHECK(seglens.size() == n, "signopt::step: seglens must hold 1 entry per tensor");
  const bool bc = kind_bias_correction(k);
  TORCH_CHECK(bias.size() == 2 * n || (bias.empty() && !bc), "signopt::step: bias must hold 2 entries per tensor",
              bc ? "" : " (or none)", ", got ", bias.size(), " for ", n, " tensors");
  const bool needs_seg = needs_segments(kind, envelope);
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
  const at::ScalarType pdt = fmt_dtype(param_format), sdt = fmt_dtype(state_format);
  if (!stats.empty()) same(stats[0], "stats", 0, at::kDouble, STAT_COUNT);
  const at::ScalarType scdt = fmt_scale_dtype(state_format);
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = params[i].numel();
    same(params[i], "params", i, pdt, numel);
    same(grads[i], "grads", i, pdt, numel);
    const int64_t nblocks = (numel + state_block - 1) / state_block;
    const int64_t ncodes = fmt_packed((int)state_format) ? (numel + 1) / 2 : numel;
    if (!m.empty()) same(m[i], "m", i, sdt, ncodes);
    if (!v.empty()) same(v[i], "v", i, sdt, ncodes);
    if (!signs.empty()) same(signs[i], "signs", i, at::kChar, numel);
    if (!m_scale.empty()) same(m_scale[i], "m_scale", i, scdt, nblocks);
    if (!v_scale.empty()) same(v_scale[i], "v_scale", i, scdt, nblocks);
    if (!env_scale.empty()) same(env_scale[i], "env_scale", i, scdt, nblocks);
    if (!m_tensor_scale.empty()) same(m_tensor_scale[i], "m_tensor_scale", i, at::kFloat, 1);
    if (!v_tensor_scale.empty()) same(v_tensor_scale[i], "v_tensor_scale", i, at::kFloat, 1);
    if (!env_tensor_scale.empty()) same(env_tensor_scale[i], "env_tensor_scale", i, at::kFloat, 1);
    if (needs_seg && numel > 0) {
      TORCH_CHECK(seglens[i] >= 1, "signopt::step: seglens[", i, "] must be >= 1 for this rule");
    }
    if (!env.empty()) {
      if (elem_env) {
        same(env[i], "env", i, sdt, ncodes);
      } else if (numel > 0) {
        const int64_t L = std::min(seglens[i], numel);
        same(env[i], "env", i, at::kFloat, (numel + L - 1) / L);
      }
    }
    if (!keys.empty()) {
      TORCH_CHECK(keys[2 * i] >= 0 && keys[2 * i] <= 0xFFFFFFFFll && keys[2 * i + 1] >= 0 &&
                      keys[2 * i + 1] <= 0xFFFFFFFFll,
                  "signopt::step: keys must be uint32 values");
    }
    TORCH_CHECK(offsets[i] >= 0, "signopt::step: offsets[", i, "] must be >= 0");
  }
}

// The Scalars of a call from its named arguments (lr, decay and the GradScaler's inv_scale as
// given by the float arguments; the bindings substitute lr_tensor, decay_tensor, inv_scale).
inline Scalars step_scalars(SIGNOPT_STEP_PARAMS) {
  Scalars s;
  SIGNOPT_SCALARS_FROM_ARGS(s);
  return s;
}

inline void* ptr_or_null(at::TensorList l, size_t i) { return l.empty() ? nullptr : l[i].data_ptr(); }

// TensorRefs of the non-empty tensors (zero-size tensors have nothing to update); keys and bias
// may be empty (no random bits: key (0, 0); no bias correction: 1), and so may signs (no step
// statistics: sign null).
inline std::vector<TensorRef> tensor_refs(at::TensorList params, at::TensorList grads, at::TensorList m,
                                          at::TensorList v, at::TensorList env, at::TensorList m_scale,
                                          at::TensorList v_scale, at::TensorList env_scale,
                                          at::TensorList m_tensor_scale, at::TensorList v_tensor_scale,
                                          at::TensorList env_tensor_scale, at::TensorList signs, at::IntArrayRef keys,
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
    r.m_scale = ptr_or_null(m_scale, i);
    r.v_scale = ptr_or_null(v_scale, i);
    r.G_scale = ptr_or_null(env_scale, i);
    r.m_tscale = (float*)ptr_or_null(m_tensor_scale, i);
    r.v_tscale = (float*)ptr_or_null(v_tensor_scale, i);
    r.G_tscale = (float*)ptr_or_null(env_tensor_scale, i);
    r.sign = (int8_t*)ptr_or_null(signs, i);
    r.numel = numel;
    r.seglen = seglens[i] >= 1 ? seglens[i] : numel;
    r.offset = (uint64_t)offsets[i];
    r.k0 = keys.empty() ? 0u : (uint32_t)keys[2 * i];
    r.k1 = keys.empty() ? 0u : (uint32_t)keys[2 * i + 1];
    r.bc1 = bias.empty() ? 1.0f : (float)bias[2 * i];
    r.bc2 = bias.empty() ? 1.0f : (float)bias[2 * i + 1];
    out.push_back(r);
  }
  return out;
}

}  // namespace signopt
