// AVX2 + FMA + F16C variant of the product kernels (see qkern_impl.h).
#include <immintrin.h>

#include <cstdlib>

#include "quant_formats.h"

namespace rmlx::avx2_k {
namespace {
struct V {
  using T = __m256;
  static constexpr int L = 8;
  static constexpr int MR = 6;  // 6x16 micro-tile: 12 accumulators, 2 loads, 1 broadcast
  static T zero() { return _mm256_setzero_ps(); }
  static T loadu(const float *p) { return _mm256_loadu_ps(p); }
  static void storeu(float *p, T v) { _mm256_storeu_ps(p, v); }
  static T set1(float f) { return _mm256_set1_ps(f); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static float hsum(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  template <int F, bool TAIL>
  static T wchunk(const uint8_t *row, int64_t k);
  static constexpr bool kLane8Decoders = true;
  static constexpr bool kVnni = false;
};
}  // namespace

#include "qkern_impl.h"

template <int F, bool TAIL>
V::T V::wchunk(const uint8_t *row, int64_t k) {
  return wraw8<F, TAIL>(row, k);
}

}  // namespace rmlx::avx2_k
