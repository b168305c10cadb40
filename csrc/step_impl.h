// The CPU and CUDA implementations of signopt::step (ops.cpp; cuda_ops.cpp, built with CUDA), for
// callers that hold the arguments in C++ (group_step.cpp): a direct call skips the dispatcher's
// boxing of every tensor (the op has no autograd kernel, so the Autograd key's fallback boxes).
#pragma once
#include <ATen/ATen.h>

#include "signopt_declaration.h"

namespace signopt {

// signopt::step's C++ signature: the schema's arguments in order (SIGNOPT_STEP_PARAMS, generated
// from signopt.declaration.step_arguments).
using StepImpl = at::Tensor(SIGNOPT_STEP_PARAMS);

StepImpl step_cpu;
#if defined(SIGNOPT_CUDA)
StepImpl step_cuda;
#endif

}  // namespace signopt
