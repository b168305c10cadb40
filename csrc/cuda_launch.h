// Torch-free interface between the CUDA binding (cuda_ops.cpp) and the kernels
// (cuda_kernels.cu).  Every pointer is device memory; tables are built on the host by the binding.
#pragma once
#include <cuda_runtime.h>

#include "group.h"
#include "rules.h"
#include "step_stats.h"

namespace signopt {
namespace cuda {

constexpr int THREADS = 256;
constexpr int VEC = 8;                          // elements per thread per step (128-bit loads)
constexpr int64_t ELEM_TILE = THREADS * VEC * 4;  // elements per CUDA block (apply_tile)
constexpr int64_t FP8_TILE = THREADS * VEC;       // at most, block-scaled state staged in shared memory
constexpr int64_t MAX_FP8_BLOCK = FP8_TILE;       // block-scaled (FP8, packed 4-bit) state_block limit

// Block-scaled state (FP8, packed 4-bit) whose blocks (8..256, powers of two) each lie within one
// warp's eight-element runs: encoded from registers, over ELEM_TILE tiles.
inline __host__ __device__ bool fp8_in_registers(int sfmt, int64_t block) {
  return fmt_block_scaled(sfmt) && (block & (block - 1)) == 0 && block >= 8 && block <= 256;
}

// Elements per apply tile (a multiple of the state block: even for packed 4-bit state).
inline int64_t apply_tile(int sfmt, int64_t block) {
  if (!fmt_block_scaled(sfmt) || fp8_in_registers(sfmt, block)) return ELEM_TILE;
  return block * (FP8_TILE / block > 1 ? FP8_TILE / block : 1);
}

struct Launch {
  const TensorRef* refs;        // [ntensors]
  const int64_t* tile_start;    // [ntensors + 1] first apply tile of each tensor (prefix)
  const int64_t* red_start;     // [ntensors + 1] first reduction chunk of each tensor
  const int64_t* seg_base;      // [ntensors + 1] first segment of each tensor
  int ntensors;
  int64_t ntiles, nred, nseg;
  int64_t tile;                 // elements per apply tile (multiple of the state block)
  int64_t block;                // state block of block-scaled (FP8, packed 4-bit) state
  int kind, pfmt, sfmt;
  Scalars s;
  ScalarPtrs sp;
  double* partials;             // [nred]
  float* segv;                  // [nseg]
  unsigned long long* kept;     // [ntensors] cautious counts
  unsigned long long* bad;      // [1] non-finite count
  double* stats;                // [STAT_COUNT] step statistics, accumulated into (null: off)
  ItemStats* tile_stats;        // [ntiles] step statistics: each apply tile's (null: off)
  uint32_t* tamax;              // [3 * ntensors] NVFP4 state (else null): the bits of the finite absmax
                                // of each tensor's new m, v, G (scan_kernel; zeroed by the host)
};

// Enqueues every pass of one fused step on `stream` (no host synchronisation).
cudaError_t launch_step(const Launch& L, cudaStream_t stream);

}  // namespace cuda
}  // namespace signopt
