// Attention of one new token over a fixed-size KV cache (gptlab.static_decode): softmax(q·kᵀ/√d)·v over the keys
// the mask shows, for every (batch, head) row. The fused library kernel attends to every slot of the cache and
// masks afterwards; this one skips hidden slots before reading them, so an early token of a long generation reads
// only the keys written so far. Rows are split across torch's threads. One source per instruction set (vec.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "vec.h"

namespace {

using gptlab::V;
using gptlab::dot;

// rows ahead whose keys and values are fetched while this one is computed: the cache is cold after the layer's
// weights have streamed through, and 8 rows ahead reads 80 visible slots of 12 heads in 25 µs instead of 32
constexpr int64_t kPrefetchRows = 8;

void add_scaled(float a, const float* x, float* y, int64_t n) {  // y += a · x
  const V::T av = V::set1(a);
  int64_t i = 0;
  for (; i + V::L <= n; i += V::L) V::store(y + i, V::fma(av, V::load(x + i), V::load(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

at::Tensor decode_attention(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor visible) {
  TORCH_CHECK(k.dim() == 4 && k.scalar_type() == at::kFloat && k.is_contiguous() && v.sizes() == k.sizes() &&
              v.scalar_type() == at::kFloat && v.is_contiguous(),
              "k and v must be contiguous float32 (batch, heads, slots, head dim) of one shape");
  const int64_t B = k.size(0), H = k.size(1), S = k.size(2), D = k.size(3);
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.numel() == B * H * D, "q must be float32 (batch, heads, 1, ", D,
              ")");
  TORCH_CHECK(visible.scalar_type() == at::kBool && visible.numel() == S, "visible must be bool with one entry "
              "per slot (", S, ")");
  const auto qc = q.contiguous();
  const auto mask = visible.contiguous();
  auto out = at::empty({B, H, 1, D}, q.options());
  const float *qp = qc.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const bool* shown = mask.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *qr = qp + r * D, *kr = kp + r * S * D, *vr = vp + r * S * D;
      float* o = op + r * D;
      // one pass, the softmax kept online: the running maximum `top` rescales what was summed before it
      float top = -std::numeric_limits<float>::infinity(), total = 0.f;
      std::fill(o, o + D, 0.f);
      for (int64_t s = 0; s < S; ++s) {
        if (!shown[s]) continue;
        if (s + kPrefetchRows < S)
          for (int64_t b = 0; b < D * 4; b += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(kr + (s + kPrefetchRows) * D) + b, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(vr + (s + kPrefetchRows) * D) + b, _MM_HINT_T0);
          }
        const float score = dot(qr, kr + s * D, D) * scale;
        if (score > top) {
          const float shrink = std::exp(top - score);
          total *= shrink;
          for (int64_t d = 0; d < D; ++d) o[d] *= shrink;
          top = score;
        }
        const float p = std::exp(score - top);
        total += p;
        add_scaled(p, vr + s * D, o, D);
      }
      // no visible key: NaN, as the library kernel gives for a fully masked row
      const float inv = total > 0.f ? 1.f / total : std::numeric_limits<float>::quiet_NaN();
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  });
  return out;
}
