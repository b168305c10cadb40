// CPU load/store layer: decode a range of a stored tensor to fp32 and encode it back, one
// vectorisable loop per storage format (casts.h holds the bit operations).
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

namespace {

template <class F>
void load_elems(const void* raw, int64_t a, int64_t n, float* out) {
  const typename F::raw* r = (const typename F::raw*)raw + a;
  for (int64_t j = 0; j < n; ++j) out[j] = F::load(r[j]);
}

template <class F>
void load_blocks(const void* raw, const float* scale, int64_t block, int64_t a, int64_t n, float* out) {
  const typename F::raw* r = (const typename F::raw*)raw;
  for (int64_t i = a; i < a + n;) {
    const int64_t b = i / block;
    const int64_t e = std::min((b + 1) * block, a + n);
    load_block<F>(r + i, scale[b], e - i, out + (i - a));
    i = e;
  }
}

template <class F>
void store_elems(void* raw, int64_t a, int64_t n, const float* vals, bool sr, const uint32_t* words) {
  typename F::raw* r = (typename F::raw*)raw + a;
  if (sr) {
    for (int64_t j = 0; j < n; ++j) r[j] = F::store(vals[j], true, words[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) r[j] = F::store(vals[j], false, 0u);
  }
}

// One FP8 block: scale from the absmax of the finite values, then codes.
template <class F>
void store_block(void* raw, float* scale, int64_t block, int64_t a, int64_t n, const float* vals, bool sr,
                 const uint32_t* words, bool simd) {
  scale[a / block] = encode_block<F>((typename F::raw*)raw + a, n, vals, sr, words, simd);
}

}  // namespace

float* load_range(int fmt, void* raw, const float* scale, int64_t block, int64_t a, int64_t n, float* out) {
  switch (fmt) {
    case FMT_FP32: return (float*)raw + a;
    case FMT_BF16: load_elems<FmtBF16>(raw, a, n, out); break;
    case FMT_FP16: load_elems<FmtF16>(raw, a, n, out); break;
    case FMT_FP8_E4M3: load_blocks<FmtE4M3>(raw, scale, block, a, n, out); break;
    default: load_blocks<FmtE5M2>(raw, scale, block, a, n, out); break;
  }
  return out;
}

void store_range(int fmt, void* raw, float* scale, int64_t block, int64_t a, int64_t n, const float* vals,
                 bool sr, const uint32_t* words, bool simd) {
  switch (fmt) {
    case FMT_FP32: return;  // computed in place
    case FMT_BF16: store_elems<FmtBF16>(raw, a, n, vals, sr, words); return;
    case FMT_FP16: store_elems<FmtF16>(raw, a, n, vals, sr, words); return;
    case FMT_FP8_E4M3: store_block<FmtE4M3>(raw, scale, block, a, n, vals, sr, words, simd); return;
    default: store_block<FmtE5M2>(raw, scale, block, a, n, vals, sr, words, simd); return;
  }
}

}  // namespace cpu
}  // namespace signopt
