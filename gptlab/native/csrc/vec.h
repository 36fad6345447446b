// The vector type gptlab's kernels are written against: one source, built once per instruction set.
// GPTLAB_AVX512 selects 16-lane AVX-512 vectors, otherwise AVX2 + FMA with 8 lanes.
#pragma once
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <limits>

namespace gptlab {

#if defined(GPTLAB_AVX512)
struct V {
  using T = __m512;
  static constexpr int64_t L = 16;
  static constexpr const char* isa = "avx512";
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T a) { _mm512_storeu_ps(p, a); }
  static T set1(float s) { return _mm512_set1_ps(s); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T abs(T a) { return _mm512_abs_ps(a); }
  static T with_sign_of(T magnitude, T sign) {  // |magnitude| with the sign of `sign`
    const __m512i m = _mm512_set1_epi32(0x7fffffff);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(magnitude), m),
                                               _mm512_andnot_si512(m, _mm512_castps_si512(sign))));
  }
  static T round(T a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T times_pow2(T a, T n) { return _mm512_scalef_ps(a, n); }  // a · 2ⁿ for whole n
  static float sum(T a) { return _mm512_reduce_add_ps(a); }
  static T widen8(const int8_t* p) {  // 16 int8 -> 16 float
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static void widen4(const uint8_t* p, T& lo, T& hi) {  // 16 bytes -> their 16 low and 16 high nibbles
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xF)));
    hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
  }
};
#else
struct V {
  using T = __m256;
  static constexpr int64_t L = 8;
  static constexpr const char* isa = "avx2";
  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T a) { _mm256_storeu_ps(p, a); }
  static T set1(float s) { return _mm256_set1_ps(s); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T abs(T a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static T with_sign_of(T magnitude, T sign) {  // |magnitude| with the sign of `sign`
    const T s = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(s, magnitude), _mm256_and_ps(s, sign));
  }
  static T round(T a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T times_pow2(T a, T n) {  // a · 2ⁿ for whole n in [-126, 127]
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(a, _mm256_castsi256_ps(e));
  }
  static float sum(T a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static T widen8(const int8_t* p) {  // 8 int8 -> 8 float
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static void widen4(const uint8_t* p, T& lo, T& hi) {  // 8 bytes -> their 8 low and 8 high nibbles
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xF)));
    hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
  }
};
#endif

// eˣ for x ≤ 0 (results below ~1e-38 flush to 0): x = n·ln2 + r with |r| ≤ ln2/2, eʳ by a degree-7 polynomial
// (the coefficients of the Cephes expf), times 2ⁿ. Relative error within 2 float ulps.
inline V::T exp_nonpositive(V::T x) {
  x = V::max(x, V::set1(-87.0f));
  const V::T n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  V::T r = V::fma(n, V::set1(-0.693359375f), x);
  r = V::fma(n, V::set1(2.12194440e-4f), r);
  V::T p = V::set1(1.9875691500e-4f);
  p = V::fma(p, r, V::set1(1.3981999507e-3f));
  p = V::fma(p, r, V::set1(8.3334519073e-3f));
  p = V::fma(p, r, V::set1(4.1665795894e-2f));
  p = V::fma(p, r, V::set1(1.6666665459e-1f));
  p = V::fma(p, r, V::set1(5.0000001201e-1f));
  p = V::fma(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::times_pow2(p, n);
}

// Σ a[i]·b[i] over n floats
inline float dot(const float* a, const float* b, int64_t n) {
  V::T acc = V::zero();
  int64_t i = 0;
  for (; i + V::L <= n; i += V::L) acc = V::fma(V::load(a + i), V::load(b + i), acc);
  float s = V::sum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// the largest of n floats (−inf for none)
inline float max_of(const float* p, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  if (n >= V::L) {
    V::T acc = V::load(p);
    for (i = V::L; i + V::L <= n; i += V::L) acc = V::max(acc, V::load(p + i));
    alignas(64) float lanes[V::L];
    V::store(lanes, acc);
    for (int64_t l = 0; l < V::L; ++l) m = m < lanes[l] ? lanes[l] : m;
  }
  for (; i < n; ++i) m = m < p[i] ? p[i] : m;
  return m;
}

// out[0..n) = exp(x − shift) for x ≤ shift (out may be x), returning their sum
inline float exp_shifted(const float* x, float* out, int64_t n, float shift) {
  const V::T sh = V::set1(shift);
  V::T acc = V::zero();
  int64_t i = 0;
  for (; i + V::L <= n; i += V::L) {
    const V::T e = exp_nonpositive(V::sub(V::load(x + i), sh));
    V::store(out + i, e);
    acc = V::add(acc, e);
  }
  float s = V::sum(acc);
  for (; i < n; ++i) s += (out[i] = std::exp(x[i] - shift));
  return s;
}

// p[0..n) *= s
inline void scale_row(float* p, int64_t n, float s) {
  const V::T f = V::set1(s);
  int64_t i = 0;
  for (; i + V::L <= n; i += V::L) V::store(p + i, V::mul(V::load(p + i), f));
  for (; i < n; ++i) p[i] *= s;
}

// tanh z = sign(z) · (1 − e^(−2|z|)) / (1 + e^(−2|z|)): no overflow, and 1 for large |z|.
inline V::T tanh(V::T z) {
  const V::T e = exp_nonpositive(V::mul(V::abs(z), V::set1(-2.0f)));
  const V::T one = V::set1(1.0f);
  return V::with_sign_of(V::div(V::sub(one, e), V::add(one, e)), z);
}

}  // namespace gptlab
