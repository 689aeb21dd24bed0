// AVX2 + FMA + F16C row primitives (compiled with -march=haswell; used only after the run-time CPU check).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "ops.h"
#include "pk_kinds.h"

namespace rmlx {
namespace avx2 {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x: range reduction x = n ln2 + r, |r| <= ln2/2, then the classic single-precision minimax polynomial
// (Cephes expf coefficients); about 1 ulp. Inputs are clamped so 2^n stays a normal float.
inline __m256 vexp(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 vsigmoid(__m256 x) {
  __m256 one = _mm256_set1_ps(1.f);
  return _mm256_div_ps(one, _mm256_add_ps(one, vexp(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// gelu_tanh(x) = x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)).
inline __m256 vgelu(__m256 x) {
  __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
  __m256 y = _mm256_mul_ps(_mm256_set1_ps(1.5957691216057308f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
  return _mm256_mul_ps(x, vsigmoid(y));
}

inline float sexp(float x) {
  __m256 v = vexp(_mm256_set1_ps(x));
  return _mm256_cvtss_f32(v);
}
inline float ssigmoid(float x) { return 1.f / (1.f + sexp(-x)); }
inline float sgelu(float x) { return x * ssigmoid(1.5957691216057308f * (x + 0.044715f * x * x * x)); }

float dot(const float *a, const float *b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

void axpy(float *y, float a, const float *x, int64_t n) {
  __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += a * x[i];
}

void scal(float *y, float a, int64_t n) {
  __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(va, _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] *= a;
}

float exp_sum(float *y, const float *x, float m, int64_t n) {
  __m256 vm = _mm256_set1_ps(m), s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = vexp(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(y + i, e);
    s = _mm256_add_ps(s, e);
  }
  float t = hsum(s);
  for (; i < n; i++) t += (y[i] = sexp(x[i] - m));
  return t;
}

float vmax(const float *x, int64_t n) {
  float m = -INFINITY;
  int64_t i = 0;
  if (n >= 8) {
    __m256 v = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= n; i += 8) v = _mm256_max_ps(v, _mm256_loadu_ps(x + i));
    m = hmax(v);
  }
  for (; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

float sumsq(const float *x, int64_t n) { return dot(x, x, n); }

void scale_mul(float *y, const float *x, float s, const float *w, int64_t n) {
  __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  if (w) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
    for (; i < n; i++) y[i] = x[i] * s * w[i];
  } else {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    for (; i < n; i++) y[i] = x[i] * s;
  }
}

void silu(float *y, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(v, vsigmoid(v)));
  }
  for (; i < n; i++) y[i] = x[i] * ssigmoid(x[i]);
}

void sigmoid(float *y, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, vsigmoid(_mm256_loadu_ps(x + i)));
  for (; i < n; i++) y[i] = ssigmoid(x[i]);
}

void gelu_tanh(float *y, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, vgelu(_mm256_loadu_ps(x + i)));
  for (; i < n; i++) y[i] = sgelu(x[i]);
}

void swiglu(float *y, const float *g, const float *u, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(g + i);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(v, vsigmoid(v)), _mm256_loadu_ps(u + i)));
  }
  for (; i < n; i++) y[i] = g[i] * ssigmoid(g[i]) * u[i];
}

void geglu(float *y, const float *g, const float *u, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(vgelu(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
  for (; i < n; i++) y[i] = sgelu(g[i]) * u[i];
}

#define RMLX_BINARY(NAME, VOP, OP)                                                                       \
  void NAME(float *y, const float *a, const float *b, int64_t n) {                                      \
    int64_t i = 0;                                                                                       \
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, VOP(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i))); \
    for (; i < n; i++) y[i] = a[i] OP b[i];                                                              \
  }
RMLX_BINARY(add, _mm256_add_ps, +)
RMLX_BINARY(sub, _mm256_sub_ps, -)
RMLX_BINARY(mul, _mm256_mul_ps, *)
#undef RMLX_BINARY

void h2f(float *y, const uint16_t *x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
  for (; i < n; i++) y[i] = rmlx::f16_to_f32(x[i]);
}

void b2f(float *y, const uint16_t *x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
  }
  for (; i < n; i++) y[i] = rmlx::bf16_to_f32(x[i]);
}

void f2h(uint16_t *y, const float *x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) y[i] = (uint16_t)_cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

void f2b(uint16_t *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = rmlx::f32_to_bf16(x[i]);
}

// Eight keys at a time share each load of q; the eight partial sums are reduced together with hadd.
void dots(float *s, const float *q, const float *const *k, int64_t nj, int64_t D, float scale) {
  const int64_t D8 = D & ~(int64_t)7;
  int64_t j = 0;
  for (; j + 8 <= nj; j += 8) {
    __m256 a[8];
    for (int u = 0; u < 8; u++) a[u] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D8; d += 8) {
      __m256 qv = _mm256_loadu_ps(q + d);
      for (int u = 0; u < 8; u++) a[u] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k[j + u] + d), a[u]);
    }
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    if (D8 != D) {
      alignas(32) float tail[8];
      for (int u = 0; u < 8; u++) {
        float t = 0.f;
        for (int64_t d = D8; d < D; d++) t += q[d] * k[j + u][d];
        tail[u] = t;
      }
      r = _mm256_add_ps(r, _mm256_load_ps(tail));
    }
    _mm256_storeu_ps(s + j, _mm256_mul_ps(r, _mm256_set1_ps(scale)));
  }
  for (; j < nj; j++) s[j] = dot(q, k[j], D) * scale;
}

// Eight value rows per pass over acc, each row read once: paged rows sit a whole token row apart (often 4 KiB),
// so re-reading them per slice of D would fight over the same L1 sets.
void pv(float *acc, const float *p, const float *const *v, int64_t nj, int64_t D) {
  const int64_t D8 = D & ~(int64_t)7;
  int64_t j = 0;
  for (; j + 8 <= nj; j += 8) {
    __m256 pj[8];
    const float *vr[8];
    for (int u = 0; u < 8; u++) {
      pj[u] = _mm256_set1_ps(p[j + u]);
      vr[u] = v[j + u];
    }
    for (int64_t d = 0; d < D8; d += 8) {
      __m256 a = _mm256_loadu_ps(acc + d);
      for (int u = 0; u < 8; u++) a = _mm256_fmadd_ps(pj[u], _mm256_loadu_ps(vr[u] + d), a);
      _mm256_storeu_ps(acc + d, a);
    }
    for (int64_t d = D8; d < D; d++) {
      float a = acc[d];
      for (int u = 0; u < 8; u++) a += p[j + u] * vr[u][d];
      acc[d] = a;
    }
  }
  for (; j < nj; j++) axpy(acc, p[j], v[j], D);
}

inline __m128 sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// Blocks of 4 keys x 2 query rows: 6 loads feed 8 FMAs, and the 4 key rows stay in L1 while every row uses them.
void dots_rows(float *s, int64_t lds, const float *q, int64_t ldq, int64_t R, const float *const *k, int64_t nj,
               int64_t D, float scale) {
  const int64_t D8 = D & ~(int64_t)7;
  const __m128 vs = _mm_set1_ps(scale);
  if (R & 1) {
    dots(s + (R - 1) * lds, q + (R - 1) * ldq, k, nj, D, scale);
    R--;
  }
  int64_t j = 0;
  for (; j + 4 <= nj; j += 4) {
    const float *k0 = k[j], *k1 = k[j + 1], *k2 = k[j + 2], *k3 = k[j + 3];
    for (int64_t r = 0; r + 2 <= R; r += 2) {
      const float *q0 = q + r * ldq, *q1 = q0 + ldq;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t d = 0; d < D8; d += 8) {
        __m256 x0 = _mm256_loadu_ps(k0 + d), x1 = _mm256_loadu_ps(k1 + d);
        __m256 x2 = _mm256_loadu_ps(k2 + d), x3 = _mm256_loadu_ps(k3 + d);
        __m256 u = _mm256_loadu_ps(q0 + d), w = _mm256_loadu_ps(q1 + d);
        a0 = _mm256_fmadd_ps(u, x0, a0);
        a1 = _mm256_fmadd_ps(u, x1, a1);
        a2 = _mm256_fmadd_ps(u, x2, a2);
        a3 = _mm256_fmadd_ps(u, x3, a3);
        b0 = _mm256_fmadd_ps(w, x0, b0);
        b1 = _mm256_fmadd_ps(w, x1, b1);
        b2 = _mm256_fmadd_ps(w, x2, b2);
        b3 = _mm256_fmadd_ps(w, x3, b3);
      }
      __m128 ra = sum4(a0, a1, a2, a3), rb = sum4(b0, b1, b2, b3);
      if (D8 != D) {
        alignas(16) float ta[4], tb[4];
        for (int u = 0; u < 4; u++) {
          float x = 0.f, y = 0.f;
          for (int64_t d = D8; d < D; d++) {
            x += q0[d] * k[j + u][d];
            y += q1[d] * k[j + u][d];
          }
          ta[u] = x;
          tb[u] = y;
        }
        ra = _mm_add_ps(ra, _mm_load_ps(ta));
        rb = _mm_add_ps(rb, _mm_load_ps(tb));
      }
      _mm_storeu_ps(s + r * lds + j, _mm_mul_ps(ra, vs));
      _mm_storeu_ps(s + (r + 1) * lds + j, _mm_mul_ps(rb, vs));
    }
  }
  for (; j < nj; j++)
    for (int64_t r = 0; r < R; r++) s[r * lds + j] = dot(q + r * ldq, k[j], D) * scale;
}

// Blocks of 4 value rows, kept in L1 while each query row's accumulator takes them.
void pv_rows(float *acc, const float *p, int64_t ldp, int64_t R, const float *const *v, int64_t nj, int64_t D) {
  if (R == 1) return pv(acc, p, v, nj, D);
  const int64_t D8 = D & ~(int64_t)7;
  int64_t j = 0;
  for (; j + 4 <= nj; j += 4) {
    const float *v0 = v[j], *v1 = v[j + 1], *v2 = v[j + 2], *v3 = v[j + 3];
    for (int64_t r = 0; r < R; r++) {
      const float *pr = p + r * ldp + j;
      float *ar = acc + r * D;
      __m256 p0 = _mm256_set1_ps(pr[0]), p1 = _mm256_set1_ps(pr[1]), p2 = _mm256_set1_ps(pr[2]), p3 = _mm256_set1_ps(pr[3]);
      for (int64_t d = 0; d < D8; d += 8) {
        __m256 a = _mm256_loadu_ps(ar + d);
        a = _mm256_fmadd_ps(p0, _mm256_loadu_ps(v0 + d), a);
        a = _mm256_fmadd_ps(p1, _mm256_loadu_ps(v1 + d), a);
        a = _mm256_fmadd_ps(p2, _mm256_loadu_ps(v2 + d), a);
        a = _mm256_fmadd_ps(p3, _mm256_loadu_ps(v3 + d), a);
        _mm256_storeu_ps(ar + d, a);
      }
      for (int64_t d = D8; d < D; d++) ar[d] += pr[0] * v0[d] + pr[1] * v1[d] + pr[2] * v2[d] + pr[3] * v3[d];
    }
  }
  for (; j < nj; j++)
    for (int64_t r = 0; r < R; r++) axpy(acc + r * D, p[r * ldp + j], v[j], D);
}

// 8-lane traits of attn16_impl.h.
struct W {
  static constexpr int L = 8;
  static constexpr int ACC = 8;
  using T = __m256;
  static T zero() { return _mm256_setzero_ps(); }
  static T loadu(const float *p) { return _mm256_loadu_ps(p); }
  static void storeu(float *p, T v) { _mm256_storeu_ps(p, v); }
  static T set1(float x) { return _mm256_set1_ps(x); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  template <bool Half>
  static T load16(const uint16_t *x) {
    const __m128i h = _mm_loadu_si128((const __m128i *)x);
    if (Half) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float sum(T v) { return hsum(v); }
  static __m256 fold8(T v) { return v; }
};

#include "attn16_impl.h"

// ---- packed KV rows (see PkRows in ops.h, the row kinds in pk_kinds.h)

// 8 codes of a packed row from position e (a multiple of 8; nibble order for 4 bits) as floats. E4M3 codes come
// out as 2^-8 times their value: the 7 magnitude bits shifted into an f16's exponent and mantissa make an f16 whose
// exponent bias is 8 higher, subnormals included (the caller folds 256 into the scale; the NaN code reads 480).
// Sign-extending the byte to 16 bits and shifting by 7 puts the sign in bit 15 (and a copy in bit 14, masked off).
template <int Kind>
inline __m256 dec8(const uint8_t *c, int64_t e) {
  if (Kind == PK_U8) return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + e))));
  if (Kind == PK_E4M3) {
    const __m128i b = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(c + e)));
    return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(b, 7), _mm_set1_epi16((short)0xbf80)));
  }
  if (Kind == PK_T3) {
    // 8 codes in a 24-bit little-endian word, code i at bits 3i..3i+2; the permute reads only an index's low 3
    // bits. The 4-byte load reads one byte past a row, which rmlx_alloc leaves readable at a pool's end.
    int32_t w;
    std::memcpy(&w, c + e / 8 * 3, 4);
    const __m256i idx = _mm256_srlv_epi32(_mm256_set1_epi32(w), _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21));
    return _mm256_permutevar8x32_ps(_mm256_loadu_ps(kTurbo3), idx);
  }
  const int64_t i = (e >> 3) & 3;
  __m128i b = _mm_loadl_epi64((const __m128i *)(c + (e >> 5) * 16 + (i & 1) * 8));
  if (i >> 1) b = _mm_srli_epi16(b, 4);
  const __m256i idx = _mm256_cvtepu8_epi32(_mm_and_si128(b, _mm_set1_epi8(15)));
  if (Kind == PK_T4)  // 16 levels: two 8-entry permutes, blended on the code's top bit
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(kTurbo4), idx),
                            _mm256_permutevar8x32_ps(_mm256_loadu_ps(kTurbo4 + 8), idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  return _mm256_cvtepi32_ps(idx);
}

constexpr float pk_mul(int Kind) { return Kind == PK_E4M3 ? kE4M3Mul : 1.f; }

// Lane u: the sum of the 8 lanes of v[u].
inline __m128 hsum4(const __m256 *v) {
  const __m256 c = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  return _mm_add_ps(_mm256_castps256_ps128(c), _mm256_extractf128_ps(c, 1));
}

// Lane u: the f16 p[j + u][g] as a float.
inline __m128 f16x4(const uint16_t *const *p, int64_t j, int64_t g) {
  return _mm_cvtph_ps(_mm_setr_epi16((short)p[j][g], (short)p[j + 1][g], (short)p[j + 2][g], (short)p[j + 3][g], 0, 0, 0, 0));
}

// NR query rows against every key, four keys a pass: each q load serves four keys, and the NR * 4 accumulator
// chains keep the FMA units busy. Per group the four keys' sums are reduced together into one vector (lane = key),
// scaled by the keys' group scales at once; the affine bias term is b * sum(q) per group, from qsum. The next
// code rows kAhead keys on are prefetched into L1.
template <int Kind, int NR>
void pk_dots_t(float *s, int64_t lds, const float *q, const float *qsum, const PkRows &k, int64_t nj, int64_t D) {
  const int64_t G = k.group, ng = D / G, rb = row_bytes(Kind, D);
  const __m128 mul = _mm_set1_ps(pk_mul(Kind));
  int64_t j = 0;
  for (; j + 4 <= nj; j += 4) {
    if (j + kAhead + 4 <= nj) prefetch_codes(k, j + kAhead, 4, rb);
    __m128 tot[NR];
    for (int r = 0; r < NR; r++) tot[r] = _mm_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
      __m256 a[NR][4];
      for (int r = 0; r < NR; r++)
        for (int u = 0; u < 4; u++) a[r][u] = _mm256_setzero_ps();
      for (int64_t e = g * G; e < (g + 1) * G; e += 8) {
        __m256 x[4];
        for (int u = 0; u < 4; u++) x[u] = dec8<Kind>(k.codes[j + u], e);
        for (int r = 0; r < NR; r++) {
          const __m256 qv = _mm256_loadu_ps(q + r * D + e);
          for (int u = 0; u < 4; u++) a[r][u] = _mm256_fmadd_ps(qv, x[u], a[r][u]);
        }
      }
      const __m128 sv = _mm_mul_ps(f16x4(k.scales, j, g), mul);
      for (int r = 0; r < NR; r++) tot[r] = _mm_fmadd_ps(hsum4(a[r]), sv, tot[r]);
      if (has_bias(Kind)) {
        const __m128 bv = f16x4(k.biases, j, g);
        for (int r = 0; r < NR; r++) tot[r] = _mm_fmadd_ps(bv, _mm_set1_ps(qsum[r * ng + g]), tot[r]);
      }
    }
    for (int r = 0; r < NR; r++) _mm_storeu_ps(s + r * lds + j, tot[r]);
  }
  for (; j < nj; j++) {
    float tot[NR] = {};
    for (int64_t g = 0; g < ng; g++) {
      __m256 a[NR];
      for (int r = 0; r < NR; r++) a[r] = _mm256_setzero_ps();
      for (int64_t e = g * G; e < (g + 1) * G; e += 8) {
        const __m256 x = dec8<Kind>(k.codes[j], e);
        for (int r = 0; r < NR; r++) a[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + r * D + e), x, a[r]);
      }
      const float sc = _cvtsh_ss(k.scales[j][g]) * pk_mul(Kind);
      const float b = has_bias(Kind) ? _cvtsh_ss(k.biases[j][g]) : 0.f;
      for (int r = 0; r < NR; r++) tot[r] += hsum(a[r]) * sc + (has_bias(Kind) ? b * qsum[r * ng + g] : 0.f);
    }
    for (int r = 0; r < NR; r++) s[r * lds + j] = tot[r];
  }
}

// acc += p v for NR rows, keys four at a time: per group the weights p[j] * scale[j] are broadcast once and each
// block of 8 accumulators takes the four keys' decoded codes; sum_j p[j] * bias[j] of each group is added after.
template <int Kind, int NR, int KB>
void pk_pv_t(float *acc, const float *p, int64_t ldp, const PkRows &v, int64_t nj, int64_t D) {
  const int64_t G = v.group, ng = D / G;
  float bacc[NR][64];
  if (has_bias(Kind))
    for (int r = 0; r < NR; r++)
      for (int64_t g = 0; g < ng; g++) bacc[r][g] = 0.f;
  auto block = [&](int64_t j, auto kb) {
    constexpr int B = decltype(kb)::value;
    // The rows' pointers in locals: read through v, the compiler reloads them after every store to acc.
    const uint8_t *cp[B];
    const uint16_t *sp[B], *bp[B];
    for (int u = 0; u < B; u++) cp[u] = v.codes[j + u], sp[u] = v.scales[j + u], bp[u] = v.biases[j + u];
    if (j + kAhead + B <= nj) prefetch_codes(v, j + kAhead, B, row_bytes(Kind, D));
    for (int64_t g = 0; g < ng; g++) {
      __m256 w[NR][B];
      for (int u = 0; u < B; u++) {
        const float sc = _cvtsh_ss(sp[u][g]) * pk_mul(Kind);
        for (int r = 0; r < NR; r++) w[r][u] = _mm256_set1_ps(p[r * ldp + j + u] * sc);
        if (has_bias(Kind)) {
          const float b = _cvtsh_ss(bp[u][g]);
          for (int r = 0; r < NR; r++) bacc[r][g] += p[r * ldp + j + u] * b;
        }
      }
      for (int64_t e = g * G; e < (g + 1) * G; e += 8) {
        __m256 a[NR];
        for (int r = 0; r < NR; r++) a[r] = _mm256_loadu_ps(acc + r * D + e);
        for (int u = 0; u < B; u++) {
          const __m256 x = dec8<Kind>(cp[u], e);
          for (int r = 0; r < NR; r++) a[r] = _mm256_fmadd_ps(w[r][u], x, a[r]);
        }
        for (int r = 0; r < NR; r++) _mm256_storeu_ps(acc + r * D + e, a[r]);
      }
    }
  };
  int64_t j = 0;
  for (; j + KB <= nj; j += KB) block(j, std::integral_constant<int, KB>{});
  for (; j < nj; j++) block(j, std::integral_constant<int, 1>{});
  if (has_bias(Kind))
    for (int r = 0; r < NR; r++)
      for (int64_t g = 0; g < ng; g++) {
        const __m256 b = _mm256_set1_ps(bacc[r][g]);
        for (int64_t e = g * G; e < (g + 1) * G; e += 8)
          _mm256_storeu_ps(acc + r * D + e, _mm256_add_ps(_mm256_loadu_ps(acc + r * D + e), b));
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
  for (; r + 2 <= R; r += 2) pk_pv_t<Kind, 2, 4>(acc + r * D, p + r * ldp, ldp, v, nj, D);
  if (r < R) pk_pv_t<Kind, 1, 8>(acc + r * D, p + r * ldp, ldp, v, nj, D);
}

void pk_dots(float *s, int64_t lds, const float *q, const float *qsum, int64_t R, const PkRows &k, int64_t nj, int64_t D) {
  if (D / k.group > 64 || k.group % 32) return kern_portable().pk_dots(s, lds, q, qsum, R, k, nj, D);
  with_pk_kind(k, [&]<int Kind>() { pk_dots_k<Kind>(s, lds, q, qsum, R, k, nj, D); });
}

void pk_pv(float *acc, const float *p, int64_t ldp, int64_t R, const PkRows &v, int64_t nj, int64_t D) {
  if (D / v.group > 64 || v.group % 32) return kern_portable().pk_pv(acc, p, ldp, R, v, nj, D);
  with_pk_kind(v, [&]<int Kind>() { pk_pv_k<Kind>(acc, p, ldp, R, v, nj, D); });
}

// One packed row to floats in element order (4-bit: each 16 bytes interleave back to 32 values).
void pk_decode(float *dst, const uint8_t *c, const uint16_t *scales, const uint16_t *biases, int mode, int bits,
               int64_t G, int64_t D) {
  if (G % 32) return kern_portable().pk_decode(dst, c, scales, biases, mode, bits, G, D);
  for (int64_t g = 0; g < D / G; g++) {
    const float sf = _cvtsh_ss(scales[g]);
    float *o = dst + g * G;
    if (mode == PK_FP8) {
      const __m256 s = _mm256_set1_ps(sf * 256.f);
      for (int64_t e = 0; e < G; e += 8) _mm256_storeu_ps(o + e, _mm256_mul_ps(dec8<PK_E4M3>(c + g * G, e), s));
      continue;
    }
    const __m256 s = _mm256_set1_ps(sf), b = _mm256_set1_ps(_cvtsh_ss(biases[g]));
    if (bits == 8) {
      for (int64_t e = 0; e < G; e += 8) _mm256_storeu_ps(o + e, _mm256_fmadd_ps(dec8<PK_U8>(c + g * G, e), s, b));
      continue;
    }
    const uint8_t *cg = c + g * G / 2;
    for (int64_t e = 0; e < G; e += 32) {
      const __m128i x = _mm_loadu_si128((const __m128i *)(cg + e / 2)), m = _mm_set1_epi8(15);
      const __m128i lo = _mm_and_si128(x, m), hi = _mm_and_si128(_mm_srli_epi16(x, 4), m);
      const __m128i v0 = _mm_unpacklo_epi8(lo, hi), v1 = _mm_unpackhi_epi8(lo, hi);
      const __m128i parts[4] = {v0, _mm_srli_si128(v0, 8), v1, _mm_srli_si128(v1, 8)};
      for (int i = 0; i < 4; i++)
        _mm256_storeu_ps(o + e + 8 * i, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i])), s, b));
    }
  }
}

// Two rows at a time share the loads of k and q; pass 1 (S . k) brings the rows into L1 for pass 2.
void delta_step(float *S, const float *k, const float *q, const float *v, float decay, float beta, float *out,
                int64_t Dv, int64_t Dk) {
  const int64_t D8 = Dk & ~(int64_t)7;
  const __m256 vd = _mm256_set1_ps(decay);
  int64_t j = 0;
  for (; j + 2 <= Dv; j += 2) {
    float *r0 = S + j * Dk, *r1 = r0 + Dk;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    for (int64_t d = 0; d < D8; d += 8) {
      const __m256 kv = _mm256_loadu_ps(k + d);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + d), kv, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + d), kv, a1);
    }
    float s0 = hsum(a0), s1 = hsum(a1);
    for (int64_t d = D8; d < Dk; d++) {
      s0 += r0[d] * k[d];
      s1 += r1[d] * k[d];
    }
    const float u0 = beta * (v[j] - decay * s0), u1 = beta * (v[j + 1] - decay * s1);
    const __m256 vu0 = _mm256_set1_ps(u0), vu1 = _mm256_set1_ps(u1);
    __m256 o0 = _mm256_setzero_ps(), o1 = o0;
    for (int64_t d = 0; d < D8; d += 8) {
      const __m256 kv = _mm256_loadu_ps(k + d), qv = _mm256_loadu_ps(q + d);
      const __m256 n0 = _mm256_fmadd_ps(vu0, kv, _mm256_mul_ps(vd, _mm256_loadu_ps(r0 + d)));
      const __m256 n1 = _mm256_fmadd_ps(vu1, kv, _mm256_mul_ps(vd, _mm256_loadu_ps(r1 + d)));
      _mm256_storeu_ps(r0 + d, n0);
      _mm256_storeu_ps(r1 + d, n1);
      o0 = _mm256_fmadd_ps(n0, qv, o0);
      o1 = _mm256_fmadd_ps(n1, qv, o1);
    }
    float p0 = hsum(o0), p1 = hsum(o1);
    for (int64_t d = D8; d < Dk; d++) {
      r0[d] = decay * r0[d] + u0 * k[d];
      r1[d] = decay * r1[d] + u1 * k[d];
      p0 += r0[d] * q[d];
      p1 += r1[d] * q[d];
    }
    out[j] = p0;
    out[j + 1] = p1;
  }
  for (; j < Dv; j++) {
    float *row = S + j * Dk;
    const float u = beta * (v[j] - decay * dot(row, k, Dk));
    float o = 0.f;
    for (int64_t d = 0; d < Dk; d++) {
      row[d] = decay * row[d] + u * k[d];
      o += row[d] * q[d];
    }
    out[j] = o;
  }
}

const Kern kAvx2 = {dot,  axpy,   scal,      exp_sum, vmax, sumsq, scale_mul, silu, sigmoid, gelu_tanh,
                    swiglu, geglu, add, sub, mul, h2f, b2f, f2h, f2b, dots, pv, dots_rows, pv_rows,
                    dots16, pv16, pk_dots, pk_pv, pk_decode, delta_step, true, nullptr, nullptr};

}  // namespace

const Kern &kern() { return kAvx2; }

}  // namespace avx2
}  // namespace rmlx
