// The vector type gptlab's kernels are written against: one source, built once per instruction set.
// GPTLAB_AVX512 selects 16-lane AVX-512 vectors, otherwise AVX2 + FMA with 8 lanes.
#pragma once
#include <immintrin.h>
#include <cstdint>

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

}  // namespace gptlab
