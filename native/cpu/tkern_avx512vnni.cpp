// AVX512-VNNI ternary dots (tkern.h): 64 bytes of codes per step, each 2-bit field masked out and accumulated
// against the int8 x by vpdpbusd (codes unsigned, x signed, four products summed into each i32 lane). Up to four
// rows of x share each decoded chunk of codes.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "tkern.h"

namespace rmlx::avx512vnni_t {
namespace {

template <int MB>
void rows(const TernaryJob &j, int64_t r, int64_t m0) {
  const int64_t K = j.K, K64 = K & ~(int64_t)63, N = 4 * j.R;
  const uint8_t *w = j.w + r * K;
  const __m512i m3 = _mm512_set1_epi8(3);
  __m512i acc[MB][4];
  for (int m = 0; m < MB; m++)
    for (int i = 0; i < 4; i++) acc[m][i] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K64; k += 64) {
    const __m512i b = _mm512_loadu_si512((const void *)(w + k));
    const __m512i c[4] = {_mm512_and_si512(b, m3), _mm512_and_si512(_mm512_srli_epi16(b, 2), m3),
                          _mm512_and_si512(_mm512_srli_epi16(b, 4), m3), _mm512_and_si512(_mm512_srli_epi16(b, 6), m3)};
    for (int m = 0; m < MB; m++) {
      const __m512i x = _mm512_loadu_si512((const void *)(j.xq + (m0 + m) * K + k));
      for (int i = 0; i < 4; i++) acc[m][i] = _mm512_dpbusd_epi32(acc[m][i], c[i], x);
    }
  }
  for (int m = 0; m < MB; m++) {
    int32_t s[4];
    for (int i = 0; i < 4; i++) s[i] = _mm512_reduce_add_epi32(acc[m][i]);
    ternary_tail(w, j.xq + (m0 + m) * K, K64, K, s);
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
      for (; m + 4 <= t1; m += 4) rows<4>(j, r, m);
      switch (t1 - m) {
        case 3: rows<3>(j, r, m); break;
        case 2: rows<2>(j, r, m); break;
        case 1: rows<1>(j, r, m); break;
        default: break;
      }
    }
  }
}

}  // namespace rmlx::avx512vnni_t
