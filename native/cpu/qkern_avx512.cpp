// AVX-512 (F, BW, VL, DQ) variant of the product kernels (see qkern_impl.h): 16-lane FMAs and a 12x32
// micro-tile; weights are decoded with the same 8-lane decoders as AVX2, two at a time.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdlib>

#include "quant_formats.h"

namespace rmlx::avx512_k {
namespace {
struct V {
  using T = __m512;
  static constexpr int L = 16;
  static constexpr int MR = 12;  // 12x32 micro-tile: 24 accumulators, 2 loads, 1 broadcast
  static T zero() { return _mm512_setzero_ps(); }
  static T loadu(const float *p) { return _mm512_loadu_ps(p); }
  static void storeu(float *p, T v) { _mm512_storeu_ps(p, v); }
  static T set1(float f) { return _mm512_set1_ps(f); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static float hsum(T v) { return _mm512_reduce_add_ps(v); }
  template <int F, bool TAIL>
  static T wchunk(const uint8_t *row, int64_t k);
};
}  // namespace

#include "qkern_impl.h"

template <int F, bool TAIL>
V::T V::wchunk(const uint8_t *row, int64_t k) {
  return _mm512_insertf32x8(_mm512_zextps256_ps512(wraw8<F, false>(row, k)), wraw8<F, TAIL>(row, k + 8), 1);
}

}  // namespace rmlx::avx512_k
