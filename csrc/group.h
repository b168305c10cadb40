// Torch-free description of one fused call: a list of tensors of one (param dtype, state format)
// combination from one param group, with the group's scalars.  Shared by the CPU kernels and
// the CUDA launchers (the CUDA binding copies the TensorRef table to the device).
#pragma once
#include "config.h"
#include "rules.h"

namespace signopt {

struct TensorRef {
  void* p;            // parameter (param format), updated in place
  const void* g;      // gradient, same dtype as p
  void* m;            // state m / v / element envelope G (state format), or null
  void* v;
  void* G;            // element envelope (state format) or one fp32 value per cell
  void* m_scale;      // FP8 block scales of m / v / G (null otherwise): fp32, or E8M0 bytes (MX)
  void* v_scale;
  void* G_scale;
  float* m_tscale;    // per-tensor fp32 scales of m / v / G (one float each; NVFP4, null otherwise)
  float* v_tscale;
  float* G_tscale;
  int8_t* sign;       // step statistics: the previous update sign per element (-1, 0, +1), or null
  int64_t numel;
  int64_t seglen;     // reduction segment: row length, envelope block or numel (0: none)
  uint64_t offset;    // index_offset: Philox counter of element 0
  uint32_t k0, k1;    // per-(step, tensor) Philox key
  float bc1, bc2;     // AdamW bias corrections
};

// Device pointers of the scalars that may live in device memory (null: use Scalars' values).
struct ScalarPtrs {
  const float* lr;
  const float* decay;
  const float* inv_scale;
  const float* found_inf;
};

}  // namespace signopt
