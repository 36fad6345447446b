// GPT-2's GELU, tanh-approximated, and its gradient: y = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³))).
// torch's CPU kernel for approximate="tanh" takes ~5× as long as its plain tanh over the same tensor (330 against
// 58 µs for 768 × 512 floats on 2 Xeon cores), and for a 4-layer d-128 model the activation and its gradient are
// then ~17 % of a training step. Here it is one pass of vector arithmetic (vec.h), split across torch's threads.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "vec.h"

namespace {

using gptlab::V;

constexpr float kC = 0.7978845608028654f;  // √(2/π)
constexpr float kA = 0.044715f;
constexpr int64_t kGrain = 16384;

float tanh_inner(float x) { return std::tanh(kC * (x + kA * x * x * x)); }

template <typename Body, typename Tail>
void elementwise(int64_t n, Body body, Tail tail) {
  at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + V::L <= i1; i += V::L) body(i);
    for (; i < i1; ++i) tail(i);
  });
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(), name,
              " must be a contiguous float32 CPU tensor");
}

}  // namespace

at::Tensor gelu_tanh(at::Tensor x) {
  check(x, "x");
  auto y = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const V::T half = V::set1(0.5f), one = V::set1(1.0f), c = V::set1(kC), ca = V::set1(kC * kA);
  elementwise(x.numel(), [&](int64_t i) {
    const V::T v = V::load(xp + i);
    const V::T t = gptlab::tanh(V::mul(v, V::fma(ca, V::mul(v, v), c)));
    V::store(yp + i, V::mul(V::mul(half, v), V::add(one, t)));
  }, [&](int64_t i) { yp[i] = 0.5f * xp[i] * (1.0f + tanh_inner(xp[i])); });
  return y;
}

// dy/dx = (1 + t)/2 + x/2 · (1 − t²) · √(2/π) · (1 + 3 · 0.044715 x²), t the tanh above
at::Tensor gelu_tanh_backward(at::Tensor grad, at::Tensor x) {
  check(x, "x");
  check(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes(), "grad and x must have one shape");
  auto dx = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *gp = grad.data_ptr<float>();
  float* dp = dx.data_ptr<float>();
  const V::T half = V::set1(0.5f), one = V::set1(1.0f), c = V::set1(kC), ca = V::set1(kC * kA);
  const V::T ca3 = V::set1(3.0f * kC * kA);
  elementwise(x.numel(), [&](int64_t i) {
    const V::T v = V::load(xp + i), v2 = V::mul(v, v);
    const V::T t = gptlab::tanh(V::mul(v, V::fma(ca, v2, c)));
    const V::T inner = V::fma(ca3, v2, c);  // d/dx of the tanh's argument
    const V::T slope = V::sub(one, V::mul(t, t));
    const V::T d = V::fma(V::mul(V::mul(half, v), slope), inner, V::mul(half, V::add(one, t)));
    V::store(dp + i, V::mul(V::load(gp + i), d));
  }, [&](int64_t i) {
    const float v = xp[i], t = tanh_inner(v);
    const float d = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * kC * (1.0f + 3.0f * kA * v * v);
    dp[i] = gp[i] * d;
  });
  return dx;
}
