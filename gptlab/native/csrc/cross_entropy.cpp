// Mean next-token cross-entropy over rows of float32 logits, with or without its gradient, in one pass over the
// logits. The library's path (log_softmax, then nll_loss, and their backward) writes the (rows × vocab)
// log-probabilities, fills a (rows × vocab) gradient with zeros and reads both again: for GPT-2 124M at batch
// 4 × 256 that is ~200 MB moved five times per step. Here a training step writes softmax − one-hot while each row
// of logits is in cache, and evaluation keeps only one logsumexp per row. Rows whose target is −100 are left out,
// as the library's ignore_index. Rows are split across torch's threads (vec.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "vec.h"

namespace {

using gptlab::V;

constexpr int64_t kIgnore = -100;
constexpr int64_t kRowGrain = 8;

// log Σ exp(x) over one row: its maximum, then the sum of exponentials below it (a row of 50k logits is 200 KB, so
// the second pass reads it from cache; one exponential per logit, where an online maximum takes two)
float logsumexp(const float* x, int64_t n) {
  const float m = gptlab::max_of(x, n);
  if (std::isinf(m)) return m;  // every logit −inf (or +inf somewhere): nothing finite to normalise
  const int64_t tail = n - n % V::L;
  const V::T shift = V::set1(m);
  V::T sum = V::zero();
  int64_t i = 0;
  for (; i < tail; i += V::L) sum = V::add(sum, gptlab::exp_nonpositive(V::sub(V::load(x + i), shift)));
  float s = V::sum(sum);
  for (i = tail; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

// the operands checked, every target inside the vocabulary or ignored; the number of rows counted in the mean
int64_t checked_rows(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat && logits.is_contiguous() &&
              logits.device().is_cpu(), "logits must be contiguous float32 (rows, vocab) on the CPU");
  TORCH_CHECK(targets.dim() == 1 && targets.scalar_type() == at::kLong && targets.is_contiguous() &&
              targets.size(0) == logits.size(0), "targets must be int64 with one entry per row of logits");
  const int64_t R = logits.size(0), N = logits.size(1);
  const int64_t* tp = targets.data_ptr<int64_t>();
  int64_t counted = 0;
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK(tp[r] == kIgnore || (tp[r] >= 0 && tp[r] < N), "target ", tp[r], " is outside the vocabulary of ", N);
    counted += tp[r] != kIgnore;
  }
  return counted;
}

// the mean of the counted rows' losses as a float32 scalar (NaN when no row counts, as the library gives)
at::Tensor mean_loss(double total, int64_t counted, const at::Tensor& like) {
  return at::full({}, counted ? static_cast<float>(total / counted) : std::numeric_limits<float>::quiet_NaN(),
                  like.options());
}

}  // namespace

// (mean loss, per-row logsumexp for the backward)
std::tuple<at::Tensor, at::Tensor> cross_entropy(at::Tensor logits, at::Tensor targets) {
  const int64_t counted = checked_rows(logits, targets);
  const int64_t R = logits.size(0), N = logits.size(1);
  auto lse = at::empty({R}, logits.options());
  const float* xp = logits.data_ptr<float>();
  const int64_t* tp = targets.data_ptr<int64_t>();
  float* lp = lse.data_ptr<float>();
  at::parallel_for(0, R, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) lp[r] = logsumexp(xp + r * N, N);
  });
  double total = 0.0;
  for (int64_t r = 0; r < R; ++r)
    if (tp[r] != kIgnore) total += static_cast<double>(lp[r]) - xp[r * N + tp[r]];
  return {mean_loss(total, counted, logits), lse};
}

// (mean loss, its gradient d loss / d logits = (softmax − one-hot) / rows counted), for a training step: the one
// exponential per logit that the logsumexp needs is written into the gradient's row, which is then scaled while
// it is still in cache, so the logits are read from memory once and no backward pass reads them again
std::tuple<at::Tensor, at::Tensor> cross_entropy_with_grad(at::Tensor logits, at::Tensor targets) {
  const int64_t counted = checked_rows(logits, targets);
  const int64_t R = logits.size(0), N = logits.size(1);
  const float* xp = logits.data_ptr<float>();
  const int64_t* tp = targets.data_ptr<int64_t>();
  auto grad = at::empty_like(logits);
  auto row_loss = at::empty({R}, logits.options().dtype(at::kDouble));
  float* gp = grad.data_ptr<float>();
  double* lp = row_loss.data_ptr<double>();
  const float per_row = counted ? 1.f / static_cast<float>(counted) : 0.f;
  at::parallel_for(0, R, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = xp + r * N;
      float* g = gp + r * N;
      if (tp[r] == kIgnore) {
        std::fill(g, g + N, 0.f);
        lp[r] = 0.0;
        continue;
      }
      const float m = gptlab::max_of(x, N);
      if (std::isinf(m)) {  // every logit −inf, or +inf somewhere: no finite softmax, as the library gives NaN
        std::fill(g, g + N, std::numeric_limits<float>::quiet_NaN());
        lp[r] = std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      const float sum = gptlab::exp_shifted(x, g, N, m);
      gptlab::scale_row(g, N, per_row / sum);
      g[tp[r]] -= per_row;
      lp[r] = static_cast<double>(m) + std::log(static_cast<double>(sum)) - x[tp[r]];
    }
  });
  double total = 0.0;
  for (int64_t r = 0; r < R; ++r) total += lp[r];
  return {mean_loss(total, counted, logits), grad};
}
