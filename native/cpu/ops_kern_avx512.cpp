// AVX-512 (F, BW, VL, DQ) attention over packed KV rows (Kern::pk_dots, pk_pv, pk_decode) and over float rows in
// prefill tiles (dots_rows, pv_rows); every other row primitive is the AVX2 one. Codes are decoded 32 at a time
// into two 16-lane vectors, which halves the decode and FMA instructions of the 8-lane kernels; group scales and
// biases are converted to f32 once per 64 keys, so the per-key work in the loops is one broadcast FMA per group.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <type_traits>
#include <vector>

#include "ops.h"
#include "pk_kinds.h"

namespace rmlx {
namespace avx512 {
namespace {

constexpr int64_t kKeys = 64;    // keys whose scales are converted at once
constexpr int64_t kGroups = 64;  // the most groups per row the fused kernels take (ops_attention: fusable)

// 32 E4M3 codes as f16 values 2^-8 times theirs (the caller's scales carry the 256): the sign-extended byte
// shifted left by 7 puts the sign in bit 15 (and a copy in 14, masked off), the exponent in the low 4 bits of f16's
// exponent and the 3 mantissa bits at the top of f16's; with f16's exponent bias 8 above E4M3's, normal and
// subnormal codes alike read exactly 2^-8 their value. The NaN code reads 480.
inline void e4m3x32(const uint8_t *c, __m512 &lo, __m512 &hi) {
  const __m512i h = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)c)), 7),
                                     _mm512_set1_epi16((short)0xbf80));
  lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
  hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}

// Where code i of 32 turbo3 codes (12 bytes, code i at bits 3i..3i+2) lies: the byte holding its low bit, and
// the shift within the dword read from there.
struct T3Ctl {
  alignas(64) uint8_t bytes[2][64];  // per half of 16 codes: lane i's 4 bytes, for a byte shuffle
  alignas(64) int32_t shift[2][16];
};
constexpr T3Ctl make_t3ctl() {
  T3Ctl c{};
  for (int i = 0; i < 32; i++) {
    for (int k = 0; k < 4; k++) c.bytes[i / 16][i % 16 * 4 + k] = (uint8_t)(3 * i / 8 + k);
    c.shift[i / 16][i % 16] = 3 * i % 8;
  }
  return c;
}
constexpr T3Ctl kT3 = make_t3ctl();

// 32 turbo3 codes as their levels: the 12 bytes, copied into each 128-bit lane, are shuffled so that lane i holds
// the dword at its code's byte, shifted right to the code. The permute reads only the low 4 bits of an index and
// the table holds the 8 levels twice, so the next code's bit above needs no mask. The 16-byte load reads 4 bytes
// past the last row of a pool, which rmlx_alloc leaves readable (a masked load cost about 10% of turbo3 decode).
inline void t3x32(const uint8_t *p, __m512 &lo, __m512 &hi) {
  const __m512i x = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p));
  const __m256 l8 = _mm256_loadu_ps(kTurbo3);
  const __m512 lv = _mm512_insertf32x8(_mm512_castps256_ps512(l8), l8, 1);
  for (int h = 0; h < 2; h++) {
    const __m512i w = _mm512_shuffle_epi8(x, _mm512_load_si512((const void *)kT3.bytes[h]));
    (h ? hi : lo) = _mm512_permutexvar_ps(_mm512_srlv_epi32(w, _mm512_load_si512((const void *)kT3.shift[h])), lv);
  }
}

// 32 codes of a packed row from position e (a multiple of 32) as floats, positions e..e+15 in lo, the next 16 in
// hi. 4-bit rows in nibble order (pk_nibble_pos): a block's 16 low nibbles, then its 16 high nibbles.
template <int Kind>
inline void dec32(const uint8_t *c, int64_t e, __m512 &lo, __m512 &hi) {
  if constexpr (Kind == PK_U8) {
    lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + e))));
    hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + e + 16))));
  } else if constexpr (Kind == PK_U4) {
    const __m128i b = _mm_loadu_si128((const __m128i *)(c + e / 2)), m = _mm_set1_epi8(15);
    lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, m)));
    hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), m)));
  } else if constexpr (Kind == PK_T4) {
    const __m128i b = _mm_loadu_si128((const __m128i *)(c + e / 2));
    const __m512 lv = _mm512_loadu_ps(kTurbo4);
    lo = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(b), lv);
    hi = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_srli_epi16(b, 4)), lv);
  } else if constexpr (Kind == PK_T3) {
    t3x32(c + e / 8 * 3, lo, hi);
  } else {
    e4m3x32(c + e, lo, hi);
  }
}

// Group scales and biases of keys [j0, j0 + n) as f32, key j's at sf[(j - j0) * ngp] with ngp = ng
// rounded up to 16: one masked load, conversion and store per 16 groups of a key, the lanes past ng zero.
template <int Kind>
void load_scales(float *sf, float *bf, const PkRows &x, int64_t j0, int64_t n, int64_t ng) {
  const int64_t ngp = (ng + 15) & ~(int64_t)15;
  for (int64_t j = 0; j < n; j++) {
    const uint16_t *s = x.scales[j0 + j], *b = x.biases[j0 + j];
    for (int64_t g = 0; g < ng; g += 16) {
      const __mmask16 m = ng - g >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (ng - g)) - 1);
      const __m512 sv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + g));
      _mm512_store_ps(sf + j * ngp + g, Kind == PK_E4M3 ? _mm512_mul_ps(sv, _mm512_set1_ps(kE4M3Mul)) : sv);
      if (has_bias(Kind)) _mm512_store_ps(bf + j * ngp + g, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, b + g)));
    }
  }
}

// Lane u: the sum of the 16 lanes of a[u].
inline __m128 hsum4(const __m512 *a) {
  const __m512 v01 = _mm512_add_ps(_mm512_shuffle_f32x4(a[0], a[1], 0x44), _mm512_shuffle_f32x4(a[0], a[1], 0xee));
  const __m512 v23 = _mm512_add_ps(_mm512_shuffle_f32x4(a[2], a[3], 0x44), _mm512_shuffle_f32x4(a[2], a[3], 0xee));
  // 128-bit lane u: four partial sums of a[u]
  const __m512 w = _mm512_add_ps(_mm512_shuffle_f32x4(v01, v23, 0x88), _mm512_shuffle_f32x4(v01, v23, 0xdd));
  const __m512 t = _mm512_add_ps(w, _mm512_shuffle_ps(w, w, 0x4e));
  const __m512 u = _mm512_add_ps(t, _mm512_shuffle_ps(t, t, 0xb1));
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), u));
}

// Scores of NR query rows against U keys from j (U 4 or 1; sf, bf: the keys' converted scales and biases, see
// load_scales): per group the dot products stay 16-lane vectors, which take their key's group scale by one FMA
// each; the affine bias term sum_g b[g] * sum(q over g) joins as the lane-wise product of the biases and qs (row
// r's group sums, 16 groups a vector); the lanes are summed once per key at the end.
template <int Kind, int NR, int U>
inline void score_keys(float *s, int64_t lds, const float *q, const __m512 (*qs)[kGroups / 16], const PkRows &k,
                       int64_t j, const float *sf, const float *bf, int64_t D) {
  const int64_t G = k.group, ng = D / G, ngp = (ng + 15) & ~(int64_t)15;
  const uint8_t *cp[U];
  for (int u = 0; u < U; u++) cp[u] = k.codes[j + u];
  __m512 tot[NR][U];
  for (int r = 0; r < NR; r++)
    for (int u = 0; u < U; u++) tot[r][u] = _mm512_setzero_ps();
  for (int64_t g = 0; g < ng; g++) {
    __m512 a[NR][U];
    for (int r = 0; r < NR; r++)
      for (int u = 0; u < U; u++) a[r][u] = _mm512_setzero_ps();
    for (int64_t e = g * G; e < (g + 1) * G; e += 32) {
      __m512 lo[U], hi[U];
      for (int u = 0; u < U; u++) dec32<Kind>(cp[u], e, lo[u], hi[u]);
      for (int r = 0; r < NR; r++) {
        const __m512 q0 = _mm512_loadu_ps(q + r * D + e), q1 = _mm512_loadu_ps(q + r * D + e + 16);
        for (int u = 0; u < U; u++) a[r][u] = _mm512_fmadd_ps(q1, hi[u], _mm512_fmadd_ps(q0, lo[u], a[r][u]));
      }
    }
    for (int u = 0; u < U; u++) {
      const __m512 sv = _mm512_set1_ps(sf[u * ngp + g]);
      for (int r = 0; r < NR; r++) tot[r][u] = _mm512_fmadd_ps(a[r][u], sv, tot[r][u]);
    }
  }
  if (has_bias(Kind))
    for (int64_t g = 0; g < ng; g += 16)
      for (int u = 0; u < U; u++) {
        const __m512 bv = _mm512_load_ps(bf + u * ngp + g);
        for (int r = 0; r < NR; r++) tot[r][u] = _mm512_fmadd_ps(bv, qs[r][g / 16], tot[r][u]);
      }
  for (int r = 0; r < NR; r++) {
    if constexpr (U == 4) _mm_storeu_ps(s + r * lds + j, hsum4(tot[r]));
    else s[r * lds + j] = _mm512_reduce_add_ps(tot[r][0]);
  }
}

template <int Kind, int NR>
void pk_dots_t(float *s, int64_t lds, const float *q, const float *qsum, const PkRows &k, int64_t nj, int64_t D) {
  const int64_t G = k.group, ng = D / G, ngp = (ng + 15) & ~(int64_t)15, rb = row_bytes(Kind, D);
  alignas(64) float sf[kGroups * kKeys], bf[has_bias(Kind) ? kGroups * kKeys : 1];
  __m512 qs[NR][kGroups / 16];
  if (has_bias(Kind))
    for (int r = 0; r < NR; r++)
      for (int64_t g = 0; g < ng; g += 16) {
        const __mmask16 m = ng - g >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (ng - g)) - 1);
        qs[r][g / 16] = _mm512_maskz_loadu_ps(m, qsum + r * ng + g);
      }
  for (int64_t j0 = 0; j0 < nj; j0 += kKeys) {
    const int64_t n = nj - j0 < kKeys ? nj - j0 : kKeys;
    load_scales<Kind>(sf, bf, k, j0, n, ng);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      if (j + kAhead + 4 <= n) prefetch_codes(k, j0 + j + kAhead, 4, rb);
      score_keys<Kind, NR, 4>(s, lds, q, qs, k, j0 + j, sf + j * ngp, bf + j * ngp, D);
    }
    for (; j < n; j++) score_keys<Kind, NR, 1>(s, lds, q, qs, k, j0 + j, sf + j * ngp, bf + j * ngp, D);
  }
}

// acc += p v for NR rows, KB keys a block: per group each key's weight p[j] * scale[j] is broadcast once and every
// 16 accumulators take the block's decoded codes; sum_j p[j] * bias[j] of each group is added at the end.
template <int Kind, int NR, int KB>
void pk_pv_t(float *acc, const float *p, int64_t ldp, const PkRows &v, int64_t nj, int64_t D) {
  const int64_t G = v.group, ng = D / G, ngp = (ng + 15) & ~(int64_t)15;
  alignas(64) float sf[kGroups * kKeys], bf[has_bias(Kind) ? kGroups * kKeys : 1];
  __m512 bsum[NR][kGroups / 16];  // lane g % 16 of bsum[r][g / 16]: sum_j p[j] * bias[j][g]
  if (has_bias(Kind))
    for (int r = 0; r < NR; r++)
      for (int64_t i = 0; i < ngp / 16; i++) bsum[r][i] = _mm512_setzero_ps();
  for (int64_t j0 = 0; j0 < nj; j0 += kKeys) {
    const int64_t n = nj - j0 < kKeys ? nj - j0 : kKeys;
    load_scales<Kind>(sf, bf, v, j0, n, ng);
    auto block = [&](int64_t j, auto kb) {
      constexpr int B = decltype(kb)::value;
      // The rows' pointers in locals: read through v, the compiler reloads them after every store to acc.
      const uint8_t *cp[B];
      for (int u = 0; u < B; u++) cp[u] = v.codes[j0 + j + u];
      if (j + kAhead + B <= n) prefetch_codes(v, j0 + j + kAhead, B, row_bytes(Kind, D));
      for (int64_t g = 0; g < ng; g++) {
        __m512 w[NR][B];
        for (int u = 0; u < B; u++)
          for (int r = 0; r < NR; r++) w[r][u] = _mm512_set1_ps(p[r * ldp + j0 + j + u] * sf[(j + u) * ngp + g]);
        for (int64_t e = g * G; e < (g + 1) * G; e += 32) {
          __m512 a[NR][2];
          for (int r = 0; r < NR; r++) {
            a[r][0] = _mm512_loadu_ps(acc + r * D + e);
            a[r][1] = _mm512_loadu_ps(acc + r * D + e + 16);
          }
          for (int u = 0; u < B; u++) {
            __m512 lo, hi;
            dec32<Kind>(cp[u], e, lo, hi);
            for (int r = 0; r < NR; r++) {
              a[r][0] = _mm512_fmadd_ps(w[r][u], lo, a[r][0]);
              a[r][1] = _mm512_fmadd_ps(w[r][u], hi, a[r][1]);
            }
          }
          for (int r = 0; r < NR; r++) {
            _mm512_storeu_ps(acc + r * D + e, a[r][0]);
            _mm512_storeu_ps(acc + r * D + e + 16, a[r][1]);
          }
        }
      }
    };
    int64_t j = 0;
    for (; j + KB <= n; j += KB) block(j, std::integral_constant<int, KB>{});
    for (; j < n; j++) block(j, std::integral_constant<int, 1>{});
    if (has_bias(Kind))
      for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < ngp / 16; i++) {
          const __m512 bv = _mm512_load_ps(bf + j * ngp + 16 * i);
          for (int r = 0; r < NR; r++) bsum[r][i] = _mm512_fmadd_ps(_mm512_set1_ps(p[r * ldp + j0 + j]), bv, bsum[r][i]);
        }
  }
  if (has_bias(Kind))
    for (int r = 0; r < NR; r++) {
      alignas(64) float b[kGroups];
      for (int64_t i = 0; i < ngp / 16; i++) _mm512_store_ps(b + 16 * i, bsum[r][i]);
      for (int64_t g = 0; g < ng; g++) {
        const __m512 bv = _mm512_set1_ps(b[g]);
        for (int64_t e = g * G; e < (g + 1) * G; e += 16)
          _mm512_storeu_ps(acc + r * D + e, _mm512_add_ps(_mm512_loadu_ps(acc + r * D + e), bv));
      }
    }
}

template <int Kind>
void pk_dots_k(float *s, int64_t lds, const float *q, const float *qsum, int64_t R, const PkRows &k, int64_t nj, int64_t D) {
  const int64_t ng = D / k.group;
  int64_t r = 0;
  for (; r + 2 <= R; r += 2) pk_dots_t<Kind, 2>(s + r * lds, lds, q + r * D, qsum + r * ng, k, nj, D);
  if (r < R) pk_dots_t<Kind, 1>(s + r * lds, lds, q + r * D, qsum + r * ng, k, nj, D);
}

template <int Kind>
void pk_pv_k(float *acc, const float *p, int64_t ldp, int64_t R, const PkRows &v, int64_t nj, int64_t D) {
  int64_t r = 0;
  for (; r + 2 <= R; r += 2) pk_pv_t<Kind, 2, 8>(acc + r * D, p + r * ldp, ldp, v, nj, D);
  if (r < R) pk_pv_t<Kind, 1, 8>(acc + r * D, p + r * ldp, ldp, v, nj, D);
}

void pk_dots(float *s, int64_t lds, const float *q, const float *qsum, int64_t R, const PkRows &k, int64_t nj, int64_t D) {
  if (D / k.group > kGroups || k.group % 32) return kern_portable().pk_dots(s, lds, q, qsum, R, k, nj, D);
  with_pk_kind(k, [&]<int Kind>() { pk_dots_k<Kind>(s, lds, q, qsum, R, k, nj, D); });
}

void pk_pv(float *acc, const float *p, int64_t ldp, int64_t R, const PkRows &v, int64_t nj, int64_t D) {
  if (D / v.group > kGroups || v.group % 32) return kern_portable().pk_pv(acc, p, ldp, R, v, nj, D);
  with_pk_kind(v, [&]<int Kind>() { pk_pv_k<Kind>(acc, p, ldp, R, v, nj, D); });
}

// 16 elements of a key or value row from element d: f32 rows as they are, 16-bit pool rows (f16, bf16) widened.
enum RowDt { kRowF32, kRowF16, kRowBf16 };
template <int DT>
inline __m512 row16(const void *row, int64_t d) {
  if constexpr (DT == kRowF32) {
    return _mm512_loadu_ps((const float *)row + d);
  } else {
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + d));
    if constexpr (DT == kRowF16) return _mm512_cvtph_ps(h);
    else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// Prefill tiles over float rows (Kern::dots_rows, pv_rows) for head dims that are a multiple of 16; the AVX2
// kernels take the rest. dots: for a few rows, NR query rows against 4 keys a pass, each key load serving every
// row, sums kept as 16-lane vectors and reduced once per key; for more, see dots_tile. pv: see pv_tile.
template <int NR, int DT, class Row>
void dots_rows_t(float *s, int64_t lds, const float *q, int64_t ldq, const Row *const *k, int64_t nj, int64_t D,
                 float scale) {
  const __m128 vs = _mm_set1_ps(scale);
  int64_t j = 0;
  for (; j + 4 <= nj; j += 4) {
    __m512 a[NR][4];
    for (int r = 0; r < NR; r++)
      for (int u = 0; u < 4; u++) a[r][u] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      __m512 x[4];
      for (int u = 0; u < 4; u++) x[u] = row16<DT>(k[j + u], d);
      for (int r = 0; r < NR; r++) {
        const __m512 qv = _mm512_loadu_ps(q + r * ldq + d);
        for (int u = 0; u < 4; u++) a[r][u] = _mm512_fmadd_ps(qv, x[u], a[r][u]);
      }
    }
    for (int r = 0; r < NR; r++) _mm_storeu_ps(s + r * lds + j, _mm_mul_ps(hsum4(a[r]), vs));
  }
  for (; j < nj; j++)
    for (int r = 0; r < NR; r++) {
      __m512 a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * ldq + d), row16<DT>(k[j], d), a);
      s[r * lds + j] = _mm512_reduce_add_ps(a) * scale;
    }
}

// 16 rows of 16 floats transposed in registers: r[i] lane j -> r[j] lane i.
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; g++) {
    u[4 * g] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
  }
  // u[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c
  for (int c = 0; c < 4; c++) {
    const __m512 vlo = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88), vhi = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    const __m512 wlo = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88), whi = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_f32x4(vlo, wlo, 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(vlo, wlo, 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(vhi, whi, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(vhi, whi, 0xDD);
  }
}

// Scores of NR rows against 16 * NV keys from j, as a small GEMM over the transposed keys kt [D][ldk]: the sums
// stay in registers over all of D, each 16-key load serving the NR rows, and need no reduction across lanes.
template <int NR, int NV>
void dots_tile(float *s, int64_t lds, const float *q, int64_t ldq, const float *kt, int64_t ldk, int64_t j, int64_t nj,
               int64_t D, float scale) {
  __m512 a[NR][NV];
  for (int r = 0; r < NR; r++)
    for (int t = 0; t < NV; t++) a[r][t] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d++) {
    __m512 x[NV];
    for (int t = 0; t < NV; t++) x[t] = _mm512_loadu_ps(kt + d * ldk + j + 16 * t);
    for (int r = 0; r < NR; r++) {
      const __m512 w = _mm512_set1_ps(q[r * ldq + d]);
      for (int t = 0; t < NV; t++) a[r][t] = _mm512_fmadd_ps(w, x[t], a[r][t]);
    }
  }
  const __m512 vs = _mm512_set1_ps(scale);
  for (int t = 0; t < NV; t++) {
    const int64_t c = j + 16 * t, n = nj - c < 16 ? nj - c : 16;
    const __mmask16 m = (__mmask16)((1u << n) - 1);
    for (int r = 0; r < NR; r++) _mm512_mask_storeu_ps(s + r * lds + c, m, _mm512_mul_ps(a[r][t], vs));
  }
}

template <int NR>
void dots_rows_gemm(float *s, int64_t lds, const float *q, int64_t ldq, const float *kt, int64_t ldk, int64_t nj,
                    int64_t D, float scale) {
  int64_t j = 0;
  for (; j + 16 < nj; j += 32) dots_tile<NR, 2>(s, lds, q, ldq, kt, ldk, j, nj, D, scale);
  if (j < nj) dots_tile<NR, 1>(s, lds, q, ldq, kt, ldk, j, nj, D, scale);
}

template <int DT, class Row>
void dots_rows_d(float *s, int64_t lds, const float *q, int64_t ldq, int64_t R, const Row *const *k, int64_t nj,
                 int64_t D, float scale) {
  // Few rows cannot pay for the transpose: keys read in place, 4 a pass.
  if (R < 8) {
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) dots_rows_t<4, DT>(s + r * lds, lds, q + r * ldq, ldq, k, nj, D, scale);
    for (; r + 2 <= R; r += 2) dots_rows_t<2, DT>(s + r * lds, lds, q + r * ldq, ldq, k, nj, D, scale);
    if (r < R) dots_rows_t<1, DT>(s + r * lds, lds, q + r * ldq, ldq, k, nj, D, scale);
    return;
  }
  // The keys transposed, 16 x 16 at a time, keys past nj zero (their scores are not stored).
  const int64_t ldk = (nj + 15) & ~(int64_t)15;
  thread_local std::vector<float> ktbuf;
  if ((int64_t)ktbuf.size() < D * ldk) ktbuf.resize((size_t)(D * ldk));
  float *kt = ktbuf.data();
  for (int64_t j = 0; j < nj; j += 16)
    for (int64_t d = 0; d < D; d += 16) {
      __m512 blk[16];
      for (int u = 0; u < 16; u++) blk[u] = j + u < nj ? row16<DT>(k[j + u], d) : _mm512_setzero_ps();
      transpose16(blk);
      for (int i = 0; i < 16; i++) _mm512_storeu_ps(kt + (d + i) * ldk + j, blk[i]);
    }
  int64_t r = 0;
  for (; r + 12 <= R; r += 12) dots_rows_gemm<12>(s + r * lds, lds, q + r * ldq, ldq, kt, ldk, nj, D, scale);
  for (; r + 4 <= R; r += 4) dots_rows_gemm<4>(s + r * lds, lds, q + r * ldq, ldq, kt, ldk, nj, D, scale);
  for (; r < R; r++) dots_rows_gemm<1>(s + r * lds, lds, q + r * ldq, ldq, kt, ldk, nj, D, scale);
}

void dots_rows(float *s, int64_t lds, const float *q, int64_t ldq, int64_t R, const float *const *k, int64_t nj,
               int64_t D, float scale) {
  if (D % 16) return avx2::kern().dots_rows(s, lds, q, ldq, R, k, nj, D, scale);
  dots_rows_d<kRowF32>(s, lds, q, ldq, R, k, nj, D, scale);
}

// Rows of a 16-bit pool whose head dim is not a multiple of 16, widened into scratch for the float kernels.
template <class Fn>
void widened(const uint16_t *const *rows, int64_t nj, int64_t D, int dt, Fn &&fn) {
  thread_local std::vector<float> buf;
  thread_local std::vector<const float *> ptrs;
  if ((int64_t)buf.size() < nj * D) buf.resize((size_t)(nj * D));
  if ((int64_t)ptrs.size() < nj) ptrs.resize((size_t)nj);
  const Kern &k = avx2::kern();
  for (int64_t j = 0; j < nj; j++) {
    float *dst = buf.data() + j * D;
    if (dt == RMLX_F16) k.f16_to_f32(dst, rows[j], D);
    else k.bf16_to_f32(dst, rows[j], D);
    ptrs[(size_t)j] = dst;
  }
  fn(ptrs.data());
}

void dots_rows16(float *s, int64_t lds, const float *q, int64_t ldq, int64_t R, const uint16_t *const *k, int64_t nj,
                 int64_t D, float scale, int dt) {
  if (D % 16) return widened(k, nj, D, dt, [&](const float *const *kf) { dots_rows(s, lds, q, ldq, R, kf, nj, D, scale); });
  if (dt == RMLX_F16) dots_rows_d<kRowF16>(s, lds, q, ldq, R, k, nj, D, scale);
  else dots_rows_d<kRowBf16>(s, lds, q, ldq, R, k, nj, D, scale);
}

// pv: NR rows x 16 * NV columns of acc stay in registers over all nj keys; each value load serves the NR rows.
template <int NR, int NV, int DT, class Row>
void pv_tile(float *acc, const float *p, int64_t ldp, const Row *const *v, int64_t nj, int64_t D, int64_t d) {
  __m512 a[NR][NV];
  for (int r = 0; r < NR; r++)
    for (int t = 0; t < NV; t++) a[r][t] = _mm512_loadu_ps(acc + r * D + d + 16 * t);
  for (int64_t j = 0; j < nj; j++) {
    __m512 x[NV];
    for (int t = 0; t < NV; t++) x[t] = row16<DT>(v[j], d + 16 * t);
    for (int r = 0; r < NR; r++) {
      const __m512 w = _mm512_set1_ps(p[r * ldp + j]);
      for (int t = 0; t < NV; t++) a[r][t] = _mm512_fmadd_ps(w, x[t], a[r][t]);
    }
  }
  for (int r = 0; r < NR; r++)
    for (int t = 0; t < NV; t++) _mm512_storeu_ps(acc + r * D + d + 16 * t, a[r][t]);
}

template <int NR, int DT, class Row>
void pv_rows_t(float *acc, const float *p, int64_t ldp, const Row *const *v, int64_t nj, int64_t D) {
  int64_t d = 0;
  for (; d + 32 <= D; d += 32) pv_tile<NR, 2, DT>(acc, p, ldp, v, nj, D, d);
  if (d < D) pv_tile<NR, 1, DT>(acc, p, ldp, v, nj, D, d);
}

template <int DT, class Row>
void pv_rows_d(float *acc, const float *p, int64_t ldp, int64_t R, const Row *const *v, int64_t nj, int64_t D) {
  int64_t r = 0;
  for (; r + 12 <= R; r += 12) pv_rows_t<12, DT>(acc + r * D, p + r * ldp, ldp, v, nj, D);
  for (; r + 4 <= R; r += 4) pv_rows_t<4, DT>(acc + r * D, p + r * ldp, ldp, v, nj, D);
  for (; r < R; r++) pv_rows_t<1, DT>(acc + r * D, p + r * ldp, ldp, v, nj, D);
}

void pv_rows(float *acc, const float *p, int64_t ldp, int64_t R, const float *const *v, int64_t nj, int64_t D) {
  if (D % 16) return avx2::kern().pv_rows(acc, p, ldp, R, v, nj, D);
  pv_rows_d<kRowF32>(acc, p, ldp, R, v, nj, D);
}

void pv_rows16(float *acc, const float *p, int64_t ldp, int64_t R, const uint16_t *const *v, int64_t nj, int64_t D,
               int dt) {
  if (D % 16) return widened(v, nj, D, dt, [&](const float *const *vf) { pv_rows(acc, p, ldp, R, vf, nj, D); });
  if (dt == RMLX_F16) pv_rows_d<kRowF16>(acc, p, ldp, R, v, nj, D);
  else pv_rows_d<kRowBf16>(acc, p, ldp, R, v, nj, D);
}

// One packed row to floats in element order (4-bit: each 16 bytes interleave back to 32 values).
void pk_decode(float *dst, const uint8_t *c, const uint16_t *scales, const uint16_t *biases, int mode, int bits,
               int64_t G, int64_t D) {
  if (G % 32) return kern_portable().pk_decode(dst, c, scales, biases, mode, bits, G, D);
  for (int64_t g = 0; g < D / G; g++) {
    const float sf = _cvtsh_ss(scales[g]);
    float *o = dst + g * G;
    __m512 lo, hi;
    if (mode == PK_FP8) {
      const __m512 s = _mm512_set1_ps(sf * kE4M3Mul);
      for (int64_t e = 0; e < G; e += 32) {
        dec32<PK_E4M3>(c + g * G, e, lo, hi);
        _mm512_storeu_ps(o + e, _mm512_mul_ps(lo, s));
        _mm512_storeu_ps(o + e + 16, _mm512_mul_ps(hi, s));
      }
      continue;
    }
    const __m512 s = _mm512_set1_ps(sf), b = _mm512_set1_ps(_cvtsh_ss(biases[g]));
    if (bits == 8) {
      for (int64_t e = 0; e < G; e += 32) {
        dec32<PK_U8>(c + g * G, e, lo, hi);
        _mm512_storeu_ps(o + e, _mm512_fmadd_ps(lo, s, b));
        _mm512_storeu_ps(o + e + 16, _mm512_fmadd_ps(hi, s, b));
      }
      continue;
    }
    const uint8_t *cg = c + g * G / 2;
    for (int64_t e = 0; e < G; e += 32) {
      const __m128i x = _mm_loadu_si128((const __m128i *)(cg + e / 2)), m = _mm_set1_epi8(15);
      const __m128i l4 = _mm_and_si128(x, m), h4 = _mm_and_si128(_mm_srli_epi16(x, 4), m);
      const __m512 v0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(l4, h4)));
      const __m512 v1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(l4, h4)));
      _mm512_storeu_ps(o + e, _mm512_fmadd_ps(v0, s, b));
      _mm512_storeu_ps(o + e + 16, _mm512_fmadd_ps(v1, s, b));
    }
  }
}

// 16-lane traits of attn16_impl.h.
struct W {
  static constexpr int L = 16;
  static constexpr int ACC = 16;
  using T = __m512;
  static T zero() { return _mm512_setzero_ps(); }
  static T loadu(const float *p) { return _mm512_loadu_ps(p); }
  static void storeu(float *p, T v) { _mm512_storeu_ps(p, v); }
  static T set1(float x) { return _mm512_set1_ps(x); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  template <bool Half>
  static T load16(const uint16_t *x) {
    const __m256i h = _mm256_loadu_si256((const __m256i *)x);
    if (Half) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static float sum(T v) { return _mm512_reduce_add_ps(v); }
  static __m256 fold8(T v) { return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)); }
};

#include "attn16_impl.h"

}  // namespace

const Kern &kern() {
  static const Kern table = [] {
    Kern t = avx2::kern();
    t.pk_dots = pk_dots;
    t.pk_pv = pk_pv;
    t.pk_turbo = true;
    t.dots_rows = dots_rows;
    t.pv_rows = pv_rows;
    t.dots_rows16 = dots_rows16;
    t.pv_rows16 = pv_rows16;
    t.dots16 = dots16;
    t.pv16 = pv16;
    t.pk_decode = pk_decode;
    return t;
  }();
  return table;
}

}  // namespace avx512
}  // namespace rmlx
