// CUDA implementation of signopt::step (compiled only when torch has CUDA): checks the
// arguments, builds the TensorRef and tiling tables on the host, uploads them with one
// non-blocking copy from pinned memory and enqueues the kernels of cuda_kernels.cu.
// No host synchronisation: lr/decay/inv_scale/found_inf stay device pointers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

#include "cuda_launch.h"
#include "step_args.h"
#include "step_impl.h"

namespace signopt {

namespace {

const float* dev_ptr(const c10::optional<at::Tensor>& t, const at::Device& d, std::vector<at::Tensor>& keep) {
  if (!t.has_value()) return nullptr;
  at::Tensor x = t->to(d, at::kFloat).contiguous();
  keep.push_back(x);
  return x.data_ptr<float>();
}

// Host buffers of metadata copied during CUDA-graph capture must outlive the graph.
std::mutex g_keep_mutex;
std::vector<at::Tensor> g_captured_meta;

}  // namespace

at::Tensor step_cuda(SIGNOPT_STEP_PARAMS) {
  check_step_args(SIGNOPT_STEP_ARGS, at::kCUDA);
  TORCH_CHECK(!fmt_block_scaled((int)state_format) || state_block <= cuda::MAX_FP8_BLOCK,
              "signopt::step: block-scaled (FP8/FP4) state on CUDA needs state_block <= ", cuda::MAX_FP8_BLOCK,
              ", got ", state_block);
  const at::Device device = params[0].device();
  c10::cuda::CUDAGuard guard(device);
  const std::vector<TensorRef> refs =
      tensor_refs(params, grads, m, v, env, m_scale, v_scale, env_scale, m_tensor_scale, v_tensor_scale,
                  env_tensor_scale, signs, keys, offsets, seglens, bias);
  at::Tensor bad = at::zeros({}, params[0].options().dtype(at::kLong));
  if (refs.empty()) return bad;
  const int64_t nt = (int64_t)refs.size();

  cuda::Launch L{};
  L.kind = (int)kind;
  L.pfmt = (int)param_format;
  L.sfmt = (int)state_format;
  L.block = state_block;
  L.s = step_scalars(SIGNOPT_STEP_ARGS);
  L.tile = cuda::apply_tile(L.sfmt, L.block);
  L.ntensors = (int)nt;

  // Host tables: tile / reduction-chunk / segment prefixes.
  std::vector<int64_t> tiles(nt + 1, 0), red(nt + 1, 0), seg(nt + 1, 0);
  for (int64_t i = 0; i < nt; ++i) {
    const TensorRef& r = refs[i];
    const int64_t len = std::min(r.seglen, r.numel);
    const int64_t nseg = (r.numel + len - 1) / len;
    const int64_t cps = (len + RED_CHUNK - 1) / RED_CHUNK;
    const int64_t last = r.numel - (nseg - 1) * len;
    tiles[i + 1] = tiles[i] + (r.numel + L.tile - 1) / L.tile;
    red[i + 1] = red[i] + (nseg - 1) * cps + (last + RED_CHUNK - 1) / RED_CHUNK;
    seg[i + 1] = seg[i] + nseg;
  }
  L.ntiles = tiles[nt];
  L.nred = red[nt];
  L.nseg = seg[nt];
  const bool needs_seg = needs_segments(kind, envelope);

  const size_t ref_bytes = sizeof(TensorRef) * nt, tab_bytes = sizeof(int64_t) * (nt + 1);
  const size_t total = ref_bytes + 3 * tab_bytes;
  at::Tensor host = at::empty({(int64_t)total}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  uint8_t* h = host.data_ptr<uint8_t>();
  std::memcpy(h, refs.data(), ref_bytes);
  std::memcpy(h + ref_bytes, tiles.data(), tab_bytes);
  std::memcpy(h + ref_bytes + tab_bytes, red.data(), tab_bytes);
  std::memcpy(h + ref_bytes + 2 * tab_bytes, seg.data(), tab_bytes);
  at::Tensor meta = host.to(device, /*non_blocking=*/true);
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
  if (capturing != cudaStreamCaptureStatusNone) {
    std::lock_guard<std::mutex> lock(g_keep_mutex);
    g_captured_meta.push_back(host);
  }
  const uint8_t* d = meta.data_ptr<uint8_t>();
  L.refs = (const TensorRef*)d;
  L.tile_start = (const int64_t*)(d + ref_bytes);
  L.red_start = (const int64_t*)(d + ref_bytes + tab_bytes);
  L.seg_base = (const int64_t*)(d + ref_bytes + 2 * tab_bytes);

  std::vector<at::Tensor> keep;
  L.sp.lr = dev_ptr(lr_tensor, device, keep);
  L.sp.decay = dev_ptr(decay_tensor, device, keep);
  L.sp.inv_scale = dev_ptr(inv_scale, device, keep);
  L.sp.found_inf = dev_ptr(found_inf, device, keep);
  at::Tensor partials = at::empty({needs_seg ? L.nred : 0}, params[0].options().dtype(at::kDouble));
  at::Tensor segv = at::empty({needs_seg ? L.nseg : 0}, params[0].options().dtype(at::kFloat));
  at::Tensor kept = at::zeros({nt}, params[0].options().dtype(at::kLong));
  L.partials = partials.data_ptr<double>();
  L.segv = segv.data_ptr<float>();
  L.kept = (unsigned long long*)kept.data_ptr<int64_t>();
  L.bad = (unsigned long long*)bad.data_ptr<int64_t>();
  // step statistics: one ItemStats per apply tile, which stats_kernel adds into stats[0]
  at::Tensor tile_stats = at::empty({stats.empty() ? 0 : L.ntiles * (int64_t)sizeof(ItemStats)},
                                    params[0].options().dtype(at::kByte));
  L.stats = stats.empty() ? nullptr : stats[0].data_ptr<double>();
  L.tile_stats = stats.empty() ? nullptr : (ItemStats*)tile_stats.data_ptr();
  // NVFP4 state: the scan pass's per-tensor maxima (m, v, G), which it atomicMax'es into zeros
  at::Tensor tamax;
  if (!m_tensor_scale.empty() || !v_tensor_scale.empty() || !env_tensor_scale.empty()) {
    tamax = at::zeros({3 * nt}, params[0].options().dtype(at::kInt));
    L.tamax = (uint32_t*)tamax.data_ptr<int32_t>();
  }
  C10_CUDA_CHECK(cuda::launch_step(L, stream));
  return bad;
}

// The definition matches step_impl.h's declaration (else step_cuda names an overload set).
static_assert(std::is_same_v<decltype(step_cuda), StepImpl>, "step_cuda differs from step_impl.h");

}  // namespace signopt

TORCH_LIBRARY_IMPL(signopt, CUDA, m) { m.impl("step", &signopt::step_cuda); }
