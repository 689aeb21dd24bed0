// AVX-512 (F, BW, VL, DQ) variant of the product kernels (see qkern_impl.h): 16-lane FMAs and a 12x32
// micro-tile; weights are decoded with the same 8-lane decoders as AVX2, two at a time.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdlib>

#include "quant_formats.h"

namespace rmlx::RMLX_QKERN_NS {
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
  static constexpr bool kLane8Decoders = false;  // not yet measured on an AVX-512 machine
  static constexpr bool kVnni = RMLX_QKERN_VNNI;
};
}  // namespace

#include "qkern_impl.h"

// 16 weights at once for the common formats; the others join two 8-lane decodes. Same values as wraw8 (fp8
// without its 2^8, fp4 without the scale).
template <int F, bool TAIL>
V::T V::wchunk(const uint8_t *row, int64_t k) {
  if constexpr (F == F_F32) {
    return _mm512_loadu_ps((const float *)row + k);
  } else if constexpr (F == F_F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k)));
  } else if constexpr (F == F_BF16) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  } else if constexpr (F == F_A8) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + k))));
  } else if constexpr (F == F_A4) {
    __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32((int)ld32(row + (k >> 1)))),
                                   _mm256_set1_epi32((int)ld32(row + (k >> 1) + 4)), 1);
    const __m512i sh = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(w, sh), _mm512_set1_epi32(15)));
  } else if constexpr (F == F_FP4) {
    // A 16-entry permute holds the whole E2M1 table, sign included.
    __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32((int)ld32(row + (k >> 1)))),
                                   _mm256_set1_epi32((int)ld32(row + (k >> 1) + 4)), 1);
    const __m512i sh = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    const __m512 lut = _mm512_setr_ps(0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f,  //
                                      -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f);
    return _mm512_permutexvar_ps(_mm512_srlv_epi32(w, sh), lut);
  } else if constexpr (F == F_FP8) {
    // As fp8_raw8_f16, 16 at a time: the value times 2^-8.
    __m256i b = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + k))), 8);
    __m256i h = _mm256_and_si256(_mm256_srai_epi16(b, 1), _mm256_set1_epi16((short)0xbfff));
    return _mm512_cvtph_ps(h);
  } else {
    return _mm512_insertf32x8(_mm512_castps256_ps512(wraw8<F, false>(row, k)), wraw8<F, TAIL>(row, k + 8), 1);
  }
}

}  // namespace rmlx::RMLX_QKERN_NS
