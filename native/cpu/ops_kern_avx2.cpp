// AVX2 + FMA + F16C row primitives (compiled with -march=haswell; used only after the run-time CPU check).
#include <immintrin.h>

#include <cmath>

#include "ops.h"

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

const Kern kAvx2 = {dot,  axpy,   scal,      exp_sum, vmax, sumsq, scale_mul, silu, sigmoid, gelu_tanh,
                    swiglu, geglu, add, sub, mul, h2f, b2f, f2h, f2b, dots, pv};

}  // namespace

const Kern &kern() { return kAvx2; }

}  // namespace avx2
}  // namespace rmlx
