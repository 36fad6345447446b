// Causal self-attention over a whole sequence, forward and backward, for training on the CPU.
//
// q, k and v are read where the fused projection wrote them, a (B, T, 3, H, D) tensor, and the output is written
// as (B, T, H, D), the layout the output projection reads: no copies into and out of a (B, H, T, D) layout, and
// the gradient comes back as one (B, T, 3, H, D) tensor. Each (batch, head) pair is one task for torch's threads.
// Within it the queries go in blocks of 64 rows; a block's scores against the keys it can see (never the later
// ones: 37.5 % of the products of a full T × T at T = 256) are one matrix product on the BLAS torch links (MKL's
// `sgemm`, single-threaded inside a parallel region), softmax is vector code (vec.h), and the weights times the
// values a second product. Where the caller can hold them (a short sequence), the forward keeps each block's
// weights and the backward runs four products per block (dP = dO·Vᵀ, dQ, dK, dV); otherwise the backward recomputes
// the weights from the saved log-sum-exp, with the scores as a fifth product.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "vec.h"

// the Fortran BLAS entry point that libtorch_cpu exports where it links MKL or OpenBLAS; weak, so a torch without
// it still loads this library (the kernel then reports itself unavailable and gptlab uses torch's attention)
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

namespace {

using gptlab::V;
using gptlab::dot;
using gptlab::exp_shifted;
using gptlab::max_of;
using gptlab::scale_row;

constexpr int64_t kBlock = 64;  // query rows per block

// row-major C (m × n) = alpha · op(A) · op(B) + beta · C, op(A) m × k; BLAS is column-major, so it computes Cᵀ
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LA = static_cast<int>(ldb), LB = static_cast<int>(lda), LC = static_cast<int>(ldc);
  const char TA = tb ? 'T' : 'N', TB = ta ? 'T' : 'N';
  sgemm_(&TA, &TB, &M, &N, &K, &alpha, b, &LA, a, &LB, &beta, c, &LC);
}

void check_qkv(const at::Tensor& qkv) {
  TORCH_CHECK(sgemm_ != nullptr, "causal_attention: this torch exports no BLAS sgemm_");
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.is_contiguous() && qkv.device().is_cpu() && qkv.dim() == 5 &&
                  qkv.size(2) == 3,
              "qkv must be a contiguous float32 CPU tensor of shape (B, T, 3, H, D)");
}

}  // namespace

bool causal_attention_available() { return sgemm_ != nullptr; }

// floats of one (batch, head) pair's attention weights, block after block (rows × the keys the block sees)
int64_t weights_per_pair(int64_t T) {
  int64_t n = 0;
  for (int64_t i0 = 0; i0 < T; i0 += kBlock) n += std::min(kBlock, T - i0) * std::min(i0 + kBlock, T);
  return n;
}

// y (B, T, H, D), the log-sum-exp of each query's scaled scores, lse (B, H, T), and, if `keep_weights`, the
// attention weights of every block (B·H·weights_per_pair(T) floats; else an empty tensor), which spare the backward
// the recomputation of the scores and their exponentials
std::tuple<at::Tensor, at::Tensor, at::Tensor> causal_attention(at::Tensor qkv, bool keep_weights) {
  check_qkv(qkv);
  const int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), D = qkv.size(4), C = H * D;
  auto y = at::empty({B, T, H, D}, qkv.options());
  auto lse = at::empty({B, H, T}, qkv.options());
  const int64_t per_pair = weights_per_pair(T);
  auto weights = at::empty({keep_weights ? B * H * per_pair : 0}, qkv.options());
  const float* base = qkv.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  float* wp = weights.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, B * H, 1, [&](int64_t j0, int64_t j1) {
    std::vector<float> scratch(keep_weights ? 0 : static_cast<size_t>(std::min(kBlock, T) * T));
    std::vector<float> inv_sum(static_cast<size_t>(kBlock));
    for (int64_t job = j0; job < j1; ++job) {
      const int64_t b = job / H, h = job % H;
      const float* q = base + b * T * 3 * C + h * D;  // row t at q + t · 3C
      const float *k = q + C, *v = q + 2 * C;
      float* out = yp + b * T * C + h * D;  // row t at out + t · C
      float* l = lp + job * T;
      float* kept = wp + job * per_pair;
      for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
        const int64_t r = std::min(kBlock, T - i0), e = i0 + r;  // rows, and the keys the last row sees
        float* s = keep_weights ? kept : scratch.data();
        gemm(false, true, r, e, D, scale, q + i0 * 3 * C, 3 * C, k, 3 * C, 0.0f, s, e);
        for (int64_t j = 0; j < r; ++j) {
          float* row = s + j * e;
          const int64_t n = i0 + j + 1;  // keys 0..i0+j are visible
          const float m = max_of(row, n);
          const float sum = exp_shifted(row, row, n, m);
          std::fill(row + n, row + e, 0.0f);
          inv_sum[j] = 1.0f / sum;
          l[i0 + j] = m + std::log(sum);
        }
        // the weights unnormalised times the values, then each output row divided by its sum (D, not e, floats)
        gemm(false, false, r, D, e, 1.0f, s, e, v, 3 * C, 0.0f, out + i0 * C, C);
        for (int64_t j = 0; j < r; ++j) scale_row(out + (i0 + j) * C, D, inv_sum[j]);
        if (keep_weights) {  // kept normalised, as the backward reads them; the output is the same either way
          for (int64_t j = 0; j < r; ++j) scale_row(s + j * e, i0 + j + 1, inv_sum[j]);
          kept += r * e;
        }
      }
    }
  });
  return {y, lse, weights};
}

// the gradient for qkv, (B, T, 3, H, D), from the gradient for y (B, T, H, D), y, lse and the forward's kept
// weights (or an empty tensor: then they are recomputed from the scores and lse)
at::Tensor causal_attention_backward(at::Tensor grad, at::Tensor qkv, at::Tensor y, at::Tensor lse,
                                     at::Tensor weights) {
  check_qkv(qkv);
  const int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), D = qkv.size(4), C = H * D;
  TORCH_CHECK(grad.is_contiguous() && y.is_contiguous() && grad.sizes() == y.sizes() && y.numel() == B * T * C &&
                  lse.is_contiguous() && lse.numel() == B * H * T,
              "causal_attention_backward: grad and y must be contiguous (B, T, H, D), lse (B, H, T)");
  const int64_t per_pair = weights_per_pair(T);
  const bool kept = weights.numel() > 0;
  TORCH_CHECK(!kept || (weights.is_contiguous() && weights.scalar_type() == at::kFloat &&
                        weights.numel() == B * H * per_pair),
              "causal_attention_backward: weights must be the forward's kept weights or empty");
  const float* wp = kept ? weights.data_ptr<float>() : nullptr;
  auto dqkv = at::empty_like(qkv);
  const float *base = qkv.data_ptr<float>(), *gp = grad.data_ptr<float>(), *yp = y.data_ptr<float>();
  const float* lp = lse.data_ptr<float>();
  float* dbase = dqkv.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, B * H, 1, [&](int64_t j0, int64_t j1) {
    const size_t n_scratch = static_cast<size_t>(std::min(kBlock, T) * T);
    std::vector<float> scratch(kept ? 0 : n_scratch), dp(n_scratch), delta(static_cast<size_t>(kBlock));
    for (int64_t job = j0; job < j1; ++job) {
      const int64_t b = job / H, h = job % H;
      const int64_t in_off = b * T * 3 * C + h * D, out_off = b * T * C + h * D;
      const float *q = base + in_off, *k = q + C, *v = q + 2 * C;
      float *dq = dbase + in_off, *dk = dq + C, *dv = dq + 2 * C;
      const float *dy = gp + out_off, *o = yp + out_off, *l = lp + job * T;
      // the last block sees every key, so it writes dK and dV whole; earlier blocks add to their first rows
      const int64_t last = ((T - 1) / kBlock) * kBlock;
      const float* kept_block = kept ? wp + (job + 1) * per_pair : nullptr;  // blocks are walked from the end
      for (int64_t i0 = last; i0 >= 0; i0 -= kBlock) {
        const int64_t r = std::min(kBlock, T - i0), e = i0 + r;
        const float beta = i0 == last ? 0.0f : 1.0f;
        const float* p;
        if (kept) {
          kept_block -= r * e;
          p = kept_block;
        } else {
          gemm(false, true, r, e, D, scale, q + i0 * 3 * C, 3 * C, k, 3 * C, 0.0f, scratch.data(), e);
          for (int64_t j = 0; j < r; ++j) {  // the weights again, from the saved log-sum-exp
            float* row = scratch.data() + j * e;
            const int64_t n = i0 + j + 1;
            exp_shifted(row, row, n, l[i0 + j]);
            std::fill(row + n, row + e, 0.0f);
          }
          p = scratch.data();
        }
        for (int64_t j = 0; j < r; ++j) delta[j] = dot(dy + (i0 + j) * C, o + (i0 + j) * C, D);  // Σ dO·O = Σ P·dP
        gemm(true, false, e, D, r, 1.0f, p, e, dy + i0 * C, C, beta, dv, 3 * C);        // dV += Pᵀ·dO
        gemm(false, true, r, e, D, 1.0f, dy + i0 * C, C, v, 3 * C, 0.0f, dp.data(), e);       // dP = dO·Vᵀ
        for (int64_t j = 0; j < r; ++j) {  // dS = P ∘ (dP − delta); zero where P is
          const float* pr = p + j * e;
          float* dr = dp.data() + j * e;
          const V::T dl = V::set1(delta[j]);
          int64_t i = 0;
          for (; i + V::L <= e; i += V::L) V::store(dr + i, V::mul(V::load(pr + i), V::sub(V::load(dr + i), dl)));
          for (; i < e; ++i) dr[i] = pr[i] * (dr[i] - delta[j]);
        }
        gemm(false, false, r, D, e, scale, dp.data(), e, k, 3 * C, 0.0f, dq + i0 * 3 * C, 3 * C);  // dQ
        gemm(true, false, e, D, r, scale, dp.data(), e, q + i0 * 3 * C, 3 * C, beta, dk, 3 * C);  // dK +=
      }
    }
  });
  return dqkv;
}
