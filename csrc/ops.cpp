// Operator schemas of torch.ops.signopt.* (TORCH_LIBRARY) and their CPU implementations.
// The CUDA implementations are registered by cuda_ops.cpp when torch has CUDA.
//
// step: the schema is SIGNOPT_STEP_SCHEMA (signopt.declaration.step_schema()): the thirteen tensor
//   lists by position (params, grads, m, v, env, m_scale, v_scale, env_scale, m_tensor_scale,
//   v_tensor_scale, env_tensor_scale (NVFP4), signs, stats: lists a
//   rule does not use are empty, signs and stats unless step statistics are on), everything else by name (kind, formats, state_block, envelope, the flags,
//   the per-step scalars, per-tensor keys/offsets/seglens/bias, the optional tensors);
//   returns the non-finite gradient count (0-dim int64).  One call = one param group's tensors
//   of one (param dtype, state format) combination.
// declared: the declaration this extension was compiled with, rendered from the generated
//   header's ids and functions (tests/test_cpp_declaration.py compares it with signopt.declaration;
//   encode's output dtypes check fmt_dtype).
#include <torch/library.h>
#include <ATen/ATen.h>

#include <sstream>
#include <string>
#include <type_traits>

#include "cpu_kernels.h"
#include "step_args.h"
#include "step_impl.h"

namespace signopt {

namespace {

int64_t run_cpu(int kind, int pf, int sf, const cpu::Call& call) {
#define SIGNOPT_CASE(K) case K:
  switch (kind) {
    SIGNOPT_KINDS_SIGN(SIGNOPT_CASE) return cpu::run_sign(kind, pf, sf, call);
    SIGNOPT_KINDS_LION(SIGNOPT_CASE) return cpu::run_lion(kind, pf, sf, call);
    SIGNOPT_KINDS_LION_NORM(SIGNOPT_CASE) return cpu::run_lion_norm(kind, pf, sf, call);
    SIGNOPT_KINDS_STOCHASTIC(SIGNOPT_CASE) return cpu::run_stochastic(kind, pf, sf, call);
  }
#undef SIGNOPT_CASE
  TORCH_CHECK(false, "signopt::step: kind ", kind, " has no CPU kernel group");
}

float read_scalar(const c10::optional<at::Tensor>& t) { return t->to(at::kFloat).item<float>(); }

// ------------------------------------------------------------------ rule-core unit-test ops
// The four words of the Philox calls on counters (idx mod 2^32, idx >> 32, 0, 0) (int64 idx) ->
// int64 [n, 4] (uint32 values): in random bits v2, the stochastic-sign words of elements
// 4*idx .. 4*idx+3.
at::Tensor philox_cpu(int64_t k0, int64_t k1, const at::Tensor& idx) {
  TORCH_CHECK(idx.scalar_type() == at::kLong, "philox: idx must be int64");
  at::Tensor ic = idx.contiguous();
  at::Tensor out = at::empty({ic.numel(), 4}, ic.options());
  const int64_t* ip = ic.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  cpu::philox_indices((uint32_t)k0, (uint32_t)k1, ip, ic.numel(), op);  // vector form + scalar tail
  return out;
}

// The stochastic-sign words (random bits v2, purpose PURPOSE_SIGN) of elements base .. base+n-1
// into out (int32: the uint32 bits), with the routine the stochastic kernels draw their words
// from (cpu::philox_words: the vector form unless SIGNOPT_CPU_SIMD=0), split over threads in runs
// of 32.  bench/step.py times it: every rule that draws random bits computes at least these
// words, so their time is a floor under such a rule's step.
void philox_word0_cpu(int64_t k0, int64_t k1, int64_t base, const at::Tensor& out) {
  TORCH_CHECK(out.scalar_type() == at::kInt && out.is_contiguous(),
              "philox_word0: out must be a contiguous int32 tensor, got ", out.scalar_type());
  TORCH_CHECK(base >= 0, "philox_word0: base must be >= 0, got ", base);
  uint32_t* o = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  const int64_t n = out.numel();
  at::parallel_for(0, (n + 31) / 32, 256, [&](int64_t b, int64_t e) {
    const int64_t a = 32 * b, len = std::min(32 * e, n) - a;
    cpu::philox_words((uint32_t)k0, (uint32_t)k1, PURPOSE_SIGN, (uint64_t)base + (uint64_t)a, len, o + a,
                      cpu::simd_here());
  });
}

// Encode fp32 x into storage format fmt (casts.h) and decode it back:
// returns (stored tensor, scales (FP8/FP4; else empty), decoded fp32).  NVFP4: the tensor scale
// is that of x's finite absmax (FmtNVFP4::tensor_scale_of), as the kernels' scan pass finds it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> encode_cpu(const at::Tensor& x, int64_t fmt, int64_t block,
                                                          const c10::optional<at::Tensor>& words) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "encode: x must be float32");
  TORCH_CHECK(block >= 1, "encode: block must be >= 1");
  TORCH_CHECK(fmt >= 0 && fmt < FMT_COUNT, "encode: fmt must be in [0, ", FMT_COUNT - 1, "]");
  at::Tensor xc = x.contiguous().clone();
  const int64_t n = xc.numel();
  const bool blocked = fmt_block_scaled((int)fmt);
  TORCH_CHECK(!fmt_packed((int)fmt) || block % 2 == 0, "encode: packed 4-bit codes need an even block");
  at::Tensor out = fmt == FMT_FP32 ? xc
                   : fmt_packed((int)fmt) ? at::zeros({(n + 1) / 2}, xc.options().dtype(fmt_dtype(fmt)))
                                          : at::empty_like(xc, xc.options().dtype(fmt_dtype(fmt)));
  at::Tensor scales = at::zeros({blocked ? (n + block - 1) / block : 0}, xc.options().dtype(fmt_scale_dtype(fmt)));
  std::vector<uint32_t> w(n, 0u);
  const bool sr = words.has_value();
  if (sr) {
    at::Tensor wc = words->contiguous().to(at::kLong);
    TORCH_CHECK(wc.numel() == n, "encode: words must have one word per element");
    for (int64_t i = 0; i < n; ++i) w[i] = (uint32_t)wc.data_ptr<int64_t>()[i];
  }
  const int64_t step = blocked ? block : std::max<int64_t>(n, 1);
  const bool simd = cpu::simd_here();
  float ts = 1.0f;  // the tensor scale (NVFP4; every other format ignores it)
  if (fmt_tensor_scale((int)fmt)) {
    uint32_t T = 0u;
    for (int64_t i = 0; i < n; ++i) T = std::max(T, FmtNVFP4::abs_bits(xc.data_ptr<float>()[i]));
    ts = FmtNVFP4::tensor_scale_of(u2f(T));
  }
  for (int64_t a = 0; a < n; a += step) {
    const int64_t len = std::min(step, n - a);
    cpu::store_range((int)fmt, out.data_ptr(), scales.data_ptr(), block, a, len, xc.data_ptr<float>() + a,
                     sr, w.data() + a, simd, ts);
  }
  at::Tensor dec = at::empty_like(xc);
  if (n > 0) {
    float* d = cpu::load_range((int)fmt, out.data_ptr(), scales.data_ptr(), block, 0, n, dec.data_ptr<float>(),
                               simd, ts);
    if (d != dec.data_ptr<float>()) std::memcpy(dec.data_ptr<float>(), d, sizeof(float) * n);
  }
  return {out, scales, dec};
}

// The vector layer this build's CPU loops were compiled for (cpu_vec.h): "<isa> <lanes> fp32 lanes",
// e.g. "avx512 16 fp32 lanes" (-march with AVX-512), "avx2 8 fp32 lanes" (x86-64-v3), "neon 4 ...".
std::string vector_isa() {
  return std::string(cpu::vec::isa_name()) + " " + std::to_string(cpu::vec::W) + " fp32 lanes";
}

// One line per declared id (tests/test_cpp_declaration.py renders signopt.declaration the same way).
std::string declared() {
  std::ostringstream o;
  for (int k = 0; k < K_COUNT; ++k) {
    o << "kind " << k << " family=" << kind_family(k) << " m=" << kind_has_m(k) << " v=" << kind_has_v(k)
      << " env=" << kind_has_env(k) << " kappa_norm=" << kind_kappa_norm(k) << " draws_sign=" << kind_draws_sign(k)
      << " bias_correction=" << kind_bias_correction(k) << "\n";
  }
  for (int f = 0; f < FMT_COUNT; ++f) {
    o << "format " << f << " bits=" << fmt_bits(f) << " block_scaled=" << fmt_block_scaled(f)
      << " param=" << fmt_param(f) << " state=" << fmt_state(f) << " mantissa_bits=" << fmt_mantissa_bits(f)
      << " emin=" << fmt_emin(f) << " max_finite=" << f2u(fmt_max_finite(f)) << " scale_e8m0=" << fmt_scale_e8m0(f)
      << " emax=" << fmt_emax(f) << "\n";
  }
  o << "families=" << FAMILY_COUNT << " envelopes=" << ENV_COUNT << " element=" << ENV_ELEMENT << "\n";
  o << "purposes sign=" << PURPOSE_SIGN << " state_rounding=" << PURPOSE_STATE_ROUNDING
    << " param_rounding=" << PURPOSE_PARAM_ROUNDING << "\n";
  return o.str();
}

}  // namespace

at::Tensor step_cpu(SIGNOPT_STEP_PARAMS) {
  check_step_args(SIGNOPT_STEP_ARGS, at::kCPU);
  cpu::Call call;
  call.s = step_scalars(SIGNOPT_STEP_ARGS);
  if (lr_tensor.has_value()) call.s.lr = read_scalar(lr_tensor);
  if (decay_tensor.has_value()) call.s.decay = read_scalar(decay_tensor);
  if (inv_scale.has_value()) {
    call.s.inv_scale = read_scalar(inv_scale);
    call.s.has_inv_scale = 1;
  }
  call.skip = found_inf.has_value() && read_scalar(found_inf) > 0.0f;
  call.block = state_block;
  call.t = tensor_refs(params, grads, m, v, env, m_scale, v_scale, env_scale, m_tensor_scale, v_tensor_scale,
                  env_tensor_scale, signs, keys, offsets, seglens, bias);
  call.stats = stats.empty() ? nullptr : stats[0].data_ptr<double>();
  const int64_t count = run_cpu((int)kind, (int)param_format, (int)state_format, call);
  return at::scalar_tensor(count, at::TensorOptions().dtype(at::kLong));
}

static_assert(std::is_same_v<decltype(step_cpu), StepImpl>, "step_cpu differs from step_impl.h");

}  // namespace signopt

TORCH_LIBRARY(signopt, m) {
  m.def(SIGNOPT_STEP_SCHEMA);
  m.def("philox(int k0, int k1, Tensor idx) -> Tensor");
  m.def("philox_word0(int k0, int k1, int base, Tensor(a!) out) -> ()");
  m.def("encode(Tensor x, int fmt, int block, Tensor? words) -> (Tensor, Tensor, Tensor)");
  m.def("declared() -> str", &signopt::declared);
  m.def("vector_isa() -> str", &signopt::vector_isa);
}

TORCH_LIBRARY_IMPL(signopt, CPU, m) {
  m.impl("step", &signopt::step_cpu);
  m.impl("philox", &signopt::philox_cpu);
  m.impl("philox_word0", &signopt::philox_word0_cpu);
  m.impl("encode", &signopt::encode_cpu);
}
