// gptlab's weight-only integer matrix products for a few rows of x (decoding), AVX-512 or AVX2 + FMA.
//
// int8: y = x · (w · scale)ᵀ + bias for a few rows of float32 x and int8 weights (out, in) with one float32 scale per
// output row: the weight-only int8 product of batch-1 decoding. Each weight row is read once from memory and
// widened to float in registers (V::L lanes at a time); four output rows share each load of x, and every row of
// x reuses the widened weights while they are in registers (the loop of gemv_block.h, shared with the float32
// kernel). Output rows are split across torch's threads. One source, built once per instruction set (vec.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "gemv_block.h"
#include "vec.h"

namespace {

using gptlab::V;

constexpr int64_t kOutBlock = 4;   // output rows computed together
constexpr int64_t kRowBlock = 4;   // rows of x computed together
// bytes ahead of each weight row fetched, once per cache line. Streaming 124 MB of 124M int8 weights from memory
// (49 products, batch 1, 2 Xeon cores): 8.0 ms at 1,024 bytes ahead, 6.7 ms at 8,192 (6,144 and 12,288: 6.8);
// 4-bit: 6.7 -> 5.5 ms. The hardware prefetcher alone keeps too few lines in flight at these row lengths.
constexpr int64_t kPrefetch = 8192;

// 4-bit codes, two per byte (low nibble = even input), w = (u − offset) · scale per (output row, group of G
// inputs). x is split into its even and odd inputs once per call, so a byte's low and high nibbles each meet a
// contiguous run of x; the codes are widened and dequantized in registers (one fma), then multiplied into x.
template <int R>
void block4(const float* xe, const float* xo, const uint8_t* w, const float* scale, const float* offset,
            const float* bias, float* y, int64_t K, int64_t N, int64_t G, int64_t n0, int64_t n1) {
  const int64_t half = K / 2, groups = K / G;
  int64_t n = n0;
  for (; n + kOutBlock <= n1; n += kOutBlock) {
    V::T acc[R][kOutBlock];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kOutBlock; ++j) acc[r][j] = V::zero();
    for (int64_t g = 0; g < groups; ++g) {
      V::T sv[kOutBlock], bv[kOutBlock];
      for (int j = 0; j < kOutBlock; ++j) {
        const float s = scale[(n + j) * groups + g];
        sv[j] = V::set1(s);
        bv[j] = V::set1(-offset[(n + j) * groups + g] * s);
      }
      for (int64_t c = g * G / 2; c < (g + 1) * G / 2; c += V::L) {  // L bytes = 2L inputs
        for (int j = 0; j < kOutBlock; ++j) {
          const uint8_t* p = w + (n + j) * half + c;
          if (c % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch), _MM_HINT_T0);
          V::T lo, hi;
          V::widen4(p, lo, hi);
          lo = V::fma(lo, sv[j], bv[j]);
          hi = V::fma(hi, sv[j], bv[j]);
          for (int r = 0; r < R; ++r) {
            acc[r][j] = V::fma(V::load(xe + r * half + c), lo, acc[r][j]);
            acc[r][j] = V::fma(V::load(xo + r * half + c), hi, acc[r][j]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kOutBlock; ++j)
        y[r * N + n + j] = V::sum(acc[r][j]) + (bias ? bias[n + j] : 0.f);
  }
  for (; n < n1; ++n)  // the last output rows when N is not a multiple of the block
    for (int r = 0; r < R; ++r) {
      float s = 0.f;
      for (int64_t t = 0; t < half; ++t) {
        const int64_t g = 2 * t / G;
        const float sc = scale[n * groups + g], off = offset[n * groups + g];
        const uint8_t b = w[n * half + t];
        s += xe[r * half + t] * (static_cast<float>(b & 0xF) - off) * sc;
        s += xo[r * half + t] * (static_cast<float>(b >> 4) - off) * sc;
      }
      y[r * N + n] = s + (bias ? bias[n] : 0.f);
    }
}

}  // namespace

at::Tensor int4_gemv(at::Tensor x, at::Tensor w, at::Tensor scale, at::Tensor offset, int64_t G,
                        at::Tensor bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be (rows, in) float32");
  const int64_t R = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(G > 0 && G % 32 == 0 && K % G == 0, "the group size must be a multiple of 32 dividing ", K);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() && w.size(1) * 2 == K,
              "w must be contiguous uint8 (out, in / 2)");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == N * (K / G) &&
              offset.scalar_type() == at::kFloat && offset.is_contiguous() && offset.numel() == N * (K / G),
              "scale and offset must be float32 (out, in / group)");
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == at::kFloat && bias.is_contiguous() &&
                                    bias.numel() == N), "bias must be empty or float32 (out,)");
  auto xv = x.reshape({R, K / 2, 2});
  auto xe = xv.select(2, 0).contiguous(), xo = xv.select(2, 1).contiguous();
  auto y = at::empty({R, N}, x.options());
  const float *ep = xe.data_ptr<float>(), *op = xo.data_ptr<float>(), *sp = scale.data_ptr<float>();
  const float* fp = offset.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t half = K / 2;
  at::parallel_for(0, (N + kOutBlock - 1) / kOutBlock, 16, [&](int64_t b0, int64_t b1) {
    constexpr int64_t kChunk = 4 * kOutBlock;
    for (int64_t n0 = b0 * kOutBlock; n0 < std::min(N, b1 * kOutBlock); n0 += kChunk) {
      const int64_t n1 = std::min({N, b1 * kOutBlock, n0 + kChunk});
      for (int64_t r0 = 0; r0 < R; r0 += kRowBlock) {
        const float *e = ep + r0 * half, *o = op + r0 * half;
        float* yr = yp + r0 * N;
        switch (std::min(kRowBlock, R - r0)) {
          case 1: block4<1>(e, o, wp, sp, fp, bp, yr, K, N, G, n0, n1); break;
          case 2: block4<2>(e, o, wp, sp, fp, bp, yr, K, N, G, n0, n1); break;
          case 3: block4<3>(e, o, wp, sp, fp, bp, yr, K, N, G, n0, n1); break;
          default: block4<4>(e, o, wp, sp, fp, bp, yr, K, N, G, n0, n1); break;
        }
      }
    }
  });
  return y;
}

at::Tensor int8_gemv(at::Tensor x, at::Tensor w, at::Tensor scale, at::Tensor bias) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous(), "w must be contiguous int8");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == w.size(0),
              "scale must be float32 with one entry per output row");
  return gptlab::checked_few_rows_product<kOutBlock, kOutBlock, kPrefetch, int8_t>(x, w, scale.data_ptr<float>(),
                                                                                    bias);
}
