// Operator schemas of torch.ops.signopt.* (TORCH_LIBRARY) and their CPU implementations.
// The CUDA implementations are registered by cuda_ops.cpp when torch has CUDA.
//
// step(params, grads, m, v, env, m_scale, v_scale, env_scale, config, hyper, keys, offsets,
//      seglens, bias, lr?, decay?, inv_scale?, found_inf?) -> non-finite count (0-dim int64)
//   one call = one param group's tensors of one (param dtype, state format) combination;
//   lists that a rule does not use are empty.
//   config = [kind, param_fmt, state_fmt, state_block, maximize, cautious, env_from_grad,
//             envelope, state_sr, param_sr]
//   hyper  = [lr, decay, l2, beta1, 1-beta1, beta2, 1-beta2, eps, huber_delta, p-1,
//             envelope_decay, p, (p-1)/p]      (fp32-exact except the last two, fp64)
//   keys = [k0, k1] per tensor; offsets = index_offset per tensor; seglens = reduction
//   segment per tensor (0: none); bias = [bc1, bc2] per tensor.
#include <torch/library.h>
#include <ATen/ATen.h>

#include "cpu_kernels.h"
#include "step_args.h"
#include "step_impl.h"

namespace signopt {

namespace {

int64_t run_cpu(int kind, int pf, int sf, const cpu::Call& call) {
  switch (kind) {
    case K_SIGN:
    case K_SIGNUM: return cpu::run_sign(kind, pf, sf, call);
    case K_LION_L1:
    case K_LION_L2SQ:
    case K_LION_HUBER: return cpu::run_lion(kind, pf, sf, call);
    case K_LION_NORM:
    case K_LION_LP: return cpu::run_lion_norm(kind, pf, sf, call);
    default: return cpu::run_stochastic(kind, pf, sf, call);
  }
}

float read_scalar(const c10::optional<at::Tensor>& t) { return t->to(at::kFloat).item<float>(); }

// ------------------------------------------------------------------ rule-core unit-test ops
// Philox words of element indices idx (int64) -> int64 [n, 4] (uint32 values).
at::Tensor philox_cpu(int64_t k0, int64_t k1, const at::Tensor& idx) {
  TORCH_CHECK(idx.scalar_type() == at::kLong, "philox: idx must be int64");
  at::Tensor ic = idx.contiguous();
  at::Tensor out = at::empty({ic.numel(), 4}, ic.options());
  const int64_t* ip = ic.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  cpu::philox_indices((uint32_t)k0, (uint32_t)k1, ip, ic.numel(), op);  // vector path + scalar tail
  return out;
}

// Word 0 of the Philox counters of elements base .. base+n-1 into out (int32: the uint32 bits),
// with the routine the stochastic kernels draw their signs from (cpu::philox_word0_range),
// split over threads in runs of 32.  bench/step.py times it: every rule that draws random bits
// computes at least these words, so their time is a floor under such a rule's step.
void philox_word0_cpu(int64_t k0, int64_t k1, int64_t base, const at::Tensor& out) {
  TORCH_CHECK(out.scalar_type() == at::kInt && out.is_contiguous(),
              "philox_word0: out must be a contiguous int32 tensor, got ", out.scalar_type());
  TORCH_CHECK(base >= 0, "philox_word0: base must be >= 0, got ", base);
  uint32_t* o = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  const int64_t n = out.numel();
  at::parallel_for(0, (n + 31) / 32, 256, [&](int64_t b, int64_t e) {
    const int64_t a = 32 * b, len = std::min(32 * e, n) - a;
    cpu::philox_word0_range((uint32_t)k0, (uint32_t)k1, (uint64_t)base + (uint64_t)a, len, o + a);
  });
}

// Encode fp32 x into storage format fmt (casts.h) and decode it back:
// returns (stored tensor, scales (FP8; else empty), decoded fp32).
std::tuple<at::Tensor, at::Tensor, at::Tensor> encode_cpu(const at::Tensor& x, int64_t fmt, int64_t block,
                                                          const c10::optional<at::Tensor>& words) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "encode: x must be float32");
  TORCH_CHECK(block >= 1, "encode: block must be >= 1");
  at::Tensor xc = x.contiguous().clone();
  const int64_t n = xc.numel();
  static const at::ScalarType dtypes[] = {at::kFloat, at::kBFloat16, at::kHalf, at::kFloat8_e4m3fn,
                                          at::kFloat8_e5m2};
  TORCH_CHECK(fmt >= 0 && fmt <= 4, "encode: fmt must be in [0, 4]");
  at::Tensor out = fmt == cpu::FMT_F32 ? xc : at::empty_like(xc, xc.options().dtype(dtypes[fmt]));
  at::Tensor scales = at::zeros({cpu::fmt_blocked(fmt) ? (n + block - 1) / block : 0}, xc.options());
  std::vector<uint32_t> w(n, 0u);
  const bool sr = words.has_value();
  if (sr) {
    at::Tensor wc = words->contiguous().to(at::kLong);
    TORCH_CHECK(wc.numel() == n, "encode: words must have one word per element");
    for (int64_t i = 0; i < n; ++i) w[i] = (uint32_t)wc.data_ptr<int64_t>()[i];
  }
  const int64_t step = cpu::fmt_blocked(fmt) ? block : std::max<int64_t>(n, 1);
  const bool simd = cpu::simd::mxcsr_ok();
  for (int64_t a = 0; a < n; a += step) {
    const int64_t len = std::min(step, n - a);
    cpu::store_range((int)fmt, out.data_ptr(), scales.data_ptr<float>(), block, a, len, xc.data_ptr<float>() + a,
                     sr, w.data() + a, simd);
  }
  at::Tensor dec = at::empty_like(xc);
  if (n > 0) {
    float* d = cpu::load_range((int)fmt, out.data_ptr(), scales.data_ptr<float>(), block, 0, n, dec.data_ptr<float>());
    if (d != dec.data_ptr<float>()) std::memcpy(dec.data_ptr<float>(), d, sizeof(float) * n);
  }
  return {out, scales, dec};
}

}  // namespace

at::Tensor step_cpu(at::TensorList params, at::TensorList grads, at::TensorList m, at::TensorList v,
                    at::TensorList env, at::TensorList m_scale, at::TensorList v_scale,
                    at::TensorList env_scale, at::IntArrayRef config, at::ArrayRef<double> hyper,
                    at::IntArrayRef keys, at::IntArrayRef offsets, at::IntArrayRef seglens,
                    at::ArrayRef<double> bias, const c10::optional<at::Tensor>& lr,
                    const c10::optional<at::Tensor>& decay, const c10::optional<at::Tensor>& inv_scale,
                    const c10::optional<at::Tensor>& found_inf) {
  const StepConfig cfg = check_step_args(params, grads, m, v, env, m_scale, v_scale, env_scale, config, hyper,
                                         keys, offsets, seglens, bias, at::kCPU);
  cpu::Call call;
  call.s = scalars_from(cfg, hyper);
  if (lr.has_value()) call.s.lr = read_scalar(lr);
  if (decay.has_value()) call.s.decay = read_scalar(decay);
  if (inv_scale.has_value()) {
    call.s.inv_scale = read_scalar(inv_scale);
    call.s.has_inv_scale = 1;
  }
  call.skip = found_inf.has_value() && read_scalar(found_inf) > 0.0f;
  call.block = cfg.block;
  call.t = tensor_refs(params, grads, m, v, env, m_scale, v_scale, env_scale, keys, offsets, seglens, bias);
  const int64_t count = run_cpu(cfg.kind, cfg.pfmt, cfg.sfmt, call);
  return at::scalar_tensor(count, at::TensorOptions().dtype(at::kLong));
}

}  // namespace signopt

TORCH_LIBRARY(signopt, m) {
  m.def(
      "step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] m, Tensor(c!)[] v, Tensor(d!)[] env, "
      "Tensor(e!)[] m_scale, Tensor(f!)[] v_scale, Tensor(g!)[] env_scale, int[] config, float[] hyper, "
      "int[] keys, int[] offsets, int[] seglens, float[] bias, Tensor? lr, Tensor? decay, "
      "Tensor? inv_scale, Tensor? found_inf) -> Tensor");
  m.def("philox(int k0, int k1, Tensor idx) -> Tensor");
  m.def("philox_word0(int k0, int k1, int base, Tensor(a!) out) -> ()");
  m.def("encode(Tensor x, int fmt, int block, Tensor? words) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(signopt, CPU, m) {
  m.impl("step", &signopt::step_cpu);
  m.impl("philox", &signopt::philox_cpu);
  m.impl("philox_word0", &signopt::philox_word0_cpu);
  m.impl("encode", &signopt::encode_cpu);
}
