// AVX2 ternary dots (tkern.h): 32 bytes of codes per step, each 2-bit field masked out and multiplied with the
// int8 x by vpmaddubsw (codes unsigned, x signed; a pair sums to at most 2*2*128, far from saturating), then
// widened to i32 by vpmaddwd. Up to two rows of x share each decoded chunk of codes.
#include <immintrin.h>

#include "tkern.h"

namespace rmlx::avx2_t {
namespace {

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

template <int MB>
void rows(const TernaryJob &j, int64_t r, int64_t m0) {
  const int64_t K = j.K, K32 = K & ~(int64_t)31, N = 4 * j.R;
  const uint8_t *w = j.w + r * K;
  const __m256i m3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  __m256i acc[MB][4];
  for (int m = 0; m < MB; m++)
    for (int i = 0; i < 4; i++) acc[m][i] = _mm256_setzero_si256();
  for (int64_t k = 0; k < K32; k += 32) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)(w + k));
    const __m256i c[4] = {_mm256_and_si256(b, m3), _mm256_and_si256(_mm256_srli_epi16(b, 2), m3),
                          _mm256_and_si256(_mm256_srli_epi16(b, 4), m3), _mm256_and_si256(_mm256_srli_epi16(b, 6), m3)};
    for (int m = 0; m < MB; m++) {
      const __m256i x = _mm256_loadu_si256((const __m256i *)(j.xq + (m0 + m) * K + k));
      for (int i = 0; i < 4; i++)
        acc[m][i] = _mm256_add_epi32(acc[m][i], _mm256_madd_epi16(_mm256_maddubs_epi16(c[i], x), ones));
    }
  }
  for (int m = 0; m < MB; m++) {
    int32_t s[4] = {hsum(acc[m][0]), hsum(acc[m][1]), hsum(acc[m][2]), hsum(acc[m][3])};
    ternary_tail(w, j.xq + (m0 + m) * K, K32, K, s);
    for (int i = 0; i < 4; i++) j.dots[(m0 + m) * N + i * j.R + r] = s[i];
  }
}

}  // namespace

void ternary_dots(const TernaryJob &j, int64_t r0, int64_t r1) {
  // Tiles of rows of x small enough to stay in L2 while every packed row of the range passes over them.
  for (int64_t t0 = 0; t0 < j.M; t0 += kTernaryTileM) {
    const int64_t t1 = t0 + kTernaryTileM < j.M ? t0 + kTernaryTileM : j.M;
    for (int64_t r = r0; r < r1; r++) {
      int64_t m = t0;
      for (; m + 2 <= t1; m += 2) rows<2>(j, r, m);
      if (m < t1) rows<1>(j, r, m);
    }
  }
}

}  // namespace rmlx::avx2_t
