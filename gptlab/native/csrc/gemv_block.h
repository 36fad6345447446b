// The inner loop of gptlab's few-row matrix products (float_gemv.cpp, int_gemv.cpp's int8): OB output rows of
// y = x · (w · scale)ᵀ + bias for R rows of x, the weights of type W (float or int8) widened to float in registers.
// Each step loads one vector of each of the OB weight rows, so OB streams are read at once, and every cache line
// of them is also asked for PrefetchBytes ahead; the R rows of x share each load of the weights.
// `few_rows_product` runs it over a whole product on torch's threads.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "vec.h"

namespace gptlab {

inline V::T load_weights(const float* p) { return V::load(p); }
inline V::T load_weights(const int8_t* p) { return V::widen8(p); }

// rows [n0, n1) of y; `scale` (one per output row) and `bias` may be null
template <int R, int OB, int64_t PrefetchBytes, typename W>
void gemv_block(const float* x, const W* w, const float* scale, const float* bias, float* y, int64_t K, int64_t N,
                int64_t n0, int64_t n1) {
  constexpr int64_t kPerLine = 64 / sizeof(W);
  int64_t n = n0;
  for (; n + OB <= n1; n += OB) {
    V::T acc[R][OB];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < OB; ++j) acc[r][j] = V::zero();
    int64_t k = 0;
    for (; k + V::L <= K; k += V::L) {
      V::T wv[OB];
      for (int j = 0; j < OB; ++j) {
        const W* p = w + (n + j) * K + k;
        if (k % kPerLine == 0) _mm_prefetch(reinterpret_cast<const char*>(p) + PrefetchBytes, _MM_HINT_T0);
        wv[j] = load_weights(p);
      }
      for (int r = 0; r < R; ++r) {
        const V::T xv = V::load(x + r * K + k);
        for (int j = 0; j < OB; ++j) acc[r][j] = V::fma(xv, wv[j], acc[r][j]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < OB; ++j) {
        float s = V::sum(acc[r][j]);
        for (int64_t t = k; t < K; ++t) s += x[r * K + t] * static_cast<float>(w[(n + j) * K + t]);
        y[r * N + n + j] = s * (scale ? scale[n + j] : 1.f) + (bias ? bias[n + j] : 0.f);
      }
  }
  for (; n < n1; ++n)  // the last output rows when the range is not a multiple of the block
    for (int r = 0; r < R; ++r) {
      float s = 0.f;
      for (int64_t t = 0; t < K; ++t) s += x[r * K + t] * static_cast<float>(w[n * K + t]);
      y[r * N + n] = s * (scale ? scale[n] : 1.f) + (bias ? bias[n] : 0.f);
    }
}

// y (R, N) = x (R, K) · (w · scale)ᵀ + bias: output rows split across torch's threads in blocks of 8, rows of x
// taken 4 at a time, each block of them meeting a chunk of 32 weight rows while it is still in cache. One row of x
// (decoding) streams OneRowOB weight rows at once, more rows ManyRowsOB (fewer, for the registers).
template <int OneRowOB, int ManyRowsOB, int64_t PrefetchBytes, typename W>
void few_rows_product(const float* x, const W* w, const float* scale, const float* bias, float* y, int64_t R,
                      int64_t K, int64_t N) {
  constexpr int64_t kRowBlock = 4, kAlign = 8, kChunk = 32;
  at::parallel_for(0, (N + kAlign - 1) / kAlign, 8, [&](int64_t b0, int64_t b1) {
    const int64_t end = std::min(N, b1 * kAlign);
    for (int64_t n0 = b0 * kAlign; n0 < end; n0 += kChunk) {
      const int64_t n1 = std::min(end, n0 + kChunk);
      for (int64_t r0 = 0; r0 < R; r0 += kRowBlock) {
        const float* xr = x + r0 * K;
        float* yr = y + r0 * N;
        switch (std::min(kRowBlock, R - r0)) {
          case 1: gemv_block<1, OneRowOB, PrefetchBytes>(xr, w, scale, bias, yr, K, N, n0, n1); break;
          case 2: gemv_block<2, ManyRowsOB, PrefetchBytes>(xr, w, scale, bias, yr, K, N, n0, n1); break;
          case 3: gemv_block<3, ManyRowsOB, PrefetchBytes>(xr, w, scale, bias, yr, K, N, n0, n1); break;
          default: gemv_block<4, ManyRowsOB, PrefetchBytes>(xr, w, scale, bias, yr, K, N, n0, n1); break;
        }
      }
    }
  });
}

// Both kernels' entry: checks x (rows, in) float32 and bias (out,) float32 or empty against w (out, in), whose
// type and layout the caller has checked, and returns y (rows, out).
template <int OneRowOB, int ManyRowsOB, int64_t PrefetchBytes, typename W>
at::Tensor checked_few_rows_product(at::Tensor x, const at::Tensor& w, const float* scale, const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (rows, in) float32");
  TORCH_CHECK(w.size(1) == x.size(1), "x has ", x.size(1), " inputs but w has ", w.size(1));
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == at::kFloat && bias.is_contiguous() &&
                                    bias.numel() == w.size(0)), "bias must be empty or float32 (out,)");
  x = x.contiguous();
  const int64_t R = x.size(0), K = x.size(1), N = w.size(0);
  auto y = at::empty({R, N}, x.options());
  few_rows_product<OneRowOB, ManyRowsOB, PrefetchBytes>(x.data_ptr<float>(), w.data_ptr<W>(), scale,
                                                         bias.numel() ? bias.data_ptr<float>() : nullptr,
                                                         y.data_ptr<float>(), R, K, N);
  return y;
}

}  // namespace gptlab
