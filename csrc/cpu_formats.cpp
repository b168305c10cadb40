// CPU load/store layer of the tiles and reductions: decode a range of a stored tensor to fp32 and
// encode it back, per storage format (the generated SIGNOPT_FORMATS list): the vector codecs of
// cpu_vformats.h where the format has one and the caller's thread may run them (simd), the
// scalar codecs of casts.h otherwise (the same bits).
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

namespace {

template <class F>
void load_elems(const void* raw, int64_t a, int64_t n, float* out, bool simd) {
  const typename F::raw* r = (const typename F::raw*)raw + a;
  int64_t j = 0;
  if constexpr (vec::VFmt<F>::ok) {
    if (simd)
      for (; j + vec::W <= n; j += vec::W) vec::storeu(out + j, vec::VFmt<F>::load(r + j));
  }
  for (; j < n; ++j) out[j] = F::load(r[j]);
}

template <class F>
void load_blocks(const void* raw, const void* scale, int64_t block, int64_t a, int64_t n, float* out, bool simd) {
  const typename F::raw* r = (const typename F::raw*)raw;
  for (int64_t i = a; i < a + n;) {
    const int64_t b = i / block;
    const int64_t e = std::min((b + 1) * block, a + n);
    int64_t j = i;
    if constexpr (vec::VFmt<F>::ok) {
      if (simd) {
        const typename vec::VFmt<F>::Dec d(r + i, e - i, F::get_scale(scale, b));
        for (; j + vec::W <= e; j += vec::W) vec::storeu(out + (j - a), vec::VFmt<F>::load(r + j, d));
      }
    }
    load_block<F>(r + j, F::get_scale(scale, b), e - j, out + (j - a));
    i = e;
  }
}

template <class F>
void store_elems(void* raw, int64_t a, int64_t n, const float* vals, bool sr, const uint32_t* words, bool simd) {
  typename F::raw* r = (typename F::raw*)raw + a;
  int64_t j = 0;
  if constexpr (vec::VFmt<F>::ok) {
    if (simd) {
      if (sr) {
        for (; j + vec::W <= n; j += vec::W)
          vec::VFmt<F>::store_sr(r + j, vec::loadu<vec::vf>(vals + j), vec::loadu<vec::vu>(words + j));
      } else {
        for (; j + vec::W <= n; j += vec::W) vec::VFmt<F>::store(r + j, vec::loadu<vec::vf>(vals + j));
      }
    }
  }
  if (sr) {
    for (; j < n; ++j) r[j] = F::store(vals[j], true, words[j]);
  } else {
    for (; j < n; ++j) r[j] = F::store(vals[j], false, 0u);
  }
}

// One FP8 block: scale from the absmax of the finite values, then codes.
template <class F>
void store_block(void* raw, void* scale, int64_t block, int64_t a, int64_t n, const float* vals, bool sr,
                 const uint32_t* words, bool simd) {
  typename F::raw* r = (typename F::raw*)raw + a;
  if constexpr (vec::VFmt<F>::ok) {
    if (simd) {
      F::put_scale(scale, a / block, vec::VFmt<F>::encode_block(r, n, vals, sr ? words : nullptr, 1.0f));
      return;
    }
  }
  F::put_scale(scale, a / block, encode_block<F>(r, n, vals, sr, words));
}

// Packed 4-bit codes (FmtFP4): any range [a, a+n) decoded with its blocks' multipliers (the block
// scale, times the tensor scale ts for NVFP4); the vector decode from an even element where simd.
template <class F>
void load_packed(const void* raw, const void* scale, int64_t block, int64_t a, int64_t n, float* out, float ts,
                 bool simd) {
  const typename F::raw* r = (const typename F::raw*)raw;
  for (int64_t i = a; i < a + n;) {
    const int64_t b = i / block;
    const int64_t e = std::min((b + 1) * block, a + n);
    const float mult = F::multiplier(F::get_scale(scale, b), ts);
    if constexpr (vec::VFmt<F>::ok) {
      if (simd && i % 2 == 0) {
        vec::VFmt<F>::decode(r + (i >> 1), e - i, mult, out + (i - a));
        i = e;
      }
    }
    for (; i < e; ++i) out[i - a] = F::load_code(F::code_at(r, i), mult);
  }
}

// One block [a, a+n) of packed 4-bit codes (a even): its block_scale (under tensor scale ts for
// NVFP4), then the codes of x * (1/multiplier) two a byte (a pad nibble of 0 after an odd last
// element).
template <class F>
void store_packed(void* raw, void* scale, int64_t block, int64_t a, int64_t n, const float* vals, bool sr,
                  const uint32_t* words, float ts, bool simd) {
  typename F::raw* r = (typename F::raw*)raw + (a >> 1);
  if constexpr (vec::VFmt<F>::ok) {
    if (simd) {
      F::put_scale(scale, a / block, vec::VFmt<F>::encode_block(r, n, vals, sr ? words : nullptr, ts));
      return;
    }
  }
  const float sc = block_scale<F>(vals, n, ts);
  const float inv = 1.0f / F::multiplier(sc, ts);
  for (int64_t j = 0; j < n; j += 2) {
    const uint32_t lo = F::encode(vals[j], inv, sr, sr ? words[j] : 0u);
    const uint32_t hi = j + 1 < n ? F::encode(vals[j + 1], inv, sr, sr ? words[j + 1] : 0u) : 0u;
    r[j >> 1] = (uint8_t)(lo | (hi << 4));
  }
  F::put_scale(scale, a / block, sc);
}

template <class F>
float* load_fmt(void* raw, const void* scale, int64_t block, int64_t a, int64_t n, float* out, bool simd,
                float ts) {
  if constexpr (std::is_same<F, FmtF32>::value) {
    return (float*)raw + a;  // fp32: the tensor memory itself
  } else if constexpr (F::packed) {
    load_packed<F>(raw, scale, block, a, n, out, ts, simd);
  } else if constexpr (F::blocked) {
    load_blocks<F>(raw, scale, block, a, n, out, simd);
  } else {
    load_elems<F>(raw, a, n, out, simd);
  }
  return out;
}

template <class F>
void store_fmt(void* raw, void* scale, int64_t block, int64_t a, int64_t n, const float* vals, bool sr,
               const uint32_t* words, bool simd, float ts) {
  if constexpr (std::is_same<F, FmtF32>::value) {
    return;  // computed in place
  } else if constexpr (F::packed) {
    store_packed<F>(raw, scale, block, a, n, vals, sr, words, ts, simd);
  } else if constexpr (F::blocked) {
    store_block<F>(raw, scale, block, a, n, vals, sr, words, simd);
  } else {
    store_elems<F>(raw, a, n, vals, sr, words, simd);
  }
}

}  // namespace

float* load_range(int fmt, void* raw, const void* scale, int64_t block, int64_t a, int64_t n, float* out,
                  bool simd, float ts) {
#define SIGNOPT_LOAD_CASE(F, C) \
  case F:                       \
    return load_fmt<C>(raw, scale, block, a, n, out, simd, ts);
  switch (fmt) { SIGNOPT_FORMATS(SIGNOPT_LOAD_CASE) }
#undef SIGNOPT_LOAD_CASE
  throw std::invalid_argument("signopt: load_range of an unknown format");
}

void store_range(int fmt, void* raw, void* scale, int64_t block, int64_t a, int64_t n, const float* vals,
                 bool sr, const uint32_t* words, bool simd, float ts) {
#define SIGNOPT_STORE_CASE(F, C) \
  case F:                        \
    return store_fmt<C>(raw, scale, block, a, n, vals, sr, words, simd, ts);
  switch (fmt) { SIGNOPT_FORMATS(SIGNOPT_STORE_CASE) }
#undef SIGNOPT_STORE_CASE
  throw std::invalid_argument("signopt: store_range of an unknown format");
}

}  // namespace cpu
}  // namespace signopt
