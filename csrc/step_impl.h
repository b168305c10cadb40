// The CPU and CUDA implementations of signopt::step (ops.cpp; cuda_ops.cpp, built with CUDA), for
// callers that hold the arguments in C++ (group_step.cpp): a direct call skips the dispatcher's
// boxing of every tensor (the op has no autograd kernel, so the Autograd key's fallback boxes).
#pragma once
#include <ATen/ATen.h>

namespace signopt {

// signopt::step's C++ signature (the schema's arguments in order: see ops.cpp).
using StepImpl = at::Tensor(at::TensorList params, at::TensorList grads, at::TensorList m, at::TensorList v,
                            at::TensorList env, at::TensorList m_scale, at::TensorList v_scale,
                            at::TensorList env_scale, at::IntArrayRef config, at::ArrayRef<double> hyper,
                            at::IntArrayRef keys, at::IntArrayRef offsets, at::IntArrayRef seglens,
                            at::ArrayRef<double> bias, const c10::optional<at::Tensor>& lr,
                            const c10::optional<at::Tensor>& decay, const c10::optional<at::Tensor>& inv_scale,
                            const c10::optional<at::Tensor>& found_inf);

StepImpl step_cpu;
#if defined(SIGNOPT_CUDA)
StepImpl step_cuda;
#endif

}  // namespace signopt
