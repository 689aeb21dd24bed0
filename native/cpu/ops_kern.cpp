// Portable row primitives and the choice of table for the active ISA.
#include <cmath>

#include "ops.h"
#include "quant_formats.h"

namespace rmlx {
namespace {

inline float sigm(float x) { return 1.f / (1.f + std::exp(-x)); }
// 0.5 * (1 + tanh(y)) == sigmoid(2y), which avoids the cancellation of 1 + tanh for negative inputs.
inline float gelu(float x) { return x * sigm(1.5957691216057308f * (x + 0.044715f * x * x * x)); }

float dot(const float *a, const float *b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}
void axpy(float *y, float a, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}
void scal(float *y, float a, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] *= a;
}
float exp_sum(float *y, const float *x, float m, int64_t n) {
  // Summed in double: one f32 running sum over a 150k vocabulary drifts by about 2.5e-4 of the log-sum (the
  // vector kernels keep 8 or 16 partial sums and stay far closer).
  double s = 0.0;
  for (int64_t i = 0; i < n; i++) s += (y[i] = std::exp(x[i] - m));
  return (float)s;
}
float vmax(const float *x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}
float sumsq(const float *x, int64_t n) { return dot(x, x, n); }
void scale_mul(float *y, const float *x, float s, const float *w, int64_t n) {
  if (w)
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * s * w[i];
  else
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * s;
}
void silu(float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = x[i] * sigm(x[i]);
}
void sigmoid(float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = sigm(x[i]);
}
void gelu_tanh(float *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = gelu(x[i]);
}
void swiglu(float *y, const float *g, const float *u, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = g[i] * sigm(g[i]) * u[i];
}
void geglu(float *y, const float *g, const float *u, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = gelu(g[i]) * u[i];
}
void add(float *y, const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}
void sub(float *y, const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = a[i] - b[i];
}
void mul(float *y, const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = a[i] * b[i];
}
void h2f(float *y, const uint16_t *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = rmlx::f16_to_f32(x[i]);
}
void b2f(float *y, const uint16_t *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = rmlx::bf16_to_f32(x[i]);
}
void f2h(uint16_t *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = rmlx::f32_to_f16(x[i]);
}
void f2b(uint16_t *y, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = rmlx::f32_to_bf16(x[i]);
}

void dots(float *s, const float *q, const float *const *k, int64_t nj, int64_t D, float scale) {
  for (int64_t j = 0; j < nj; j++) s[j] = dot(q, k[j], D) * scale;
}
void pv(float *acc, const float *p, const float *const *v, int64_t nj, int64_t D) {
  for (int64_t j = 0; j < nj; j++) axpy(acc, p[j], v[j], D);
}

void dots_rows(float *s, int64_t lds, const float *q, int64_t ldq, int64_t R, const float *const *k, int64_t nj,
               int64_t D, float scale) {
  for (int64_t r = 0; r < R; r++) dots(s + r * lds, q + r * ldq, k, nj, D, scale);
}
void pv_rows(float *acc, const float *p, int64_t ldp, int64_t R, const float *const *v, int64_t nj, int64_t D) {
  for (int64_t r = 0; r < R; r++) pv(acc + r * D, p + r * ldp, v, nj, D);
}

inline float ld16(const uint16_t *x, int64_t i, int dt) {
  return dt == RMLX_F16 ? rmlx::f16_to_f32(x[i]) : rmlx::bf16_to_f32(x[i]);
}
void dots16(float *s, int64_t lds, const float *q, int64_t R, const uint16_t *const *k, int64_t nj, int64_t D,
            float scale, int dt) {
  for (int64_t r = 0; r < R; r++)
    for (int64_t j = 0; j < nj; j++) {
      float a = 0.f;
      for (int64_t d = 0; d < D; d++) a += q[r * D + d] * ld16(k[j], d, dt);
      s[r * lds + j] = a * scale;
    }
}
void pv16(float *acc, const float *p, int64_t ldp, int64_t R, const uint16_t *const *v, int64_t nj, int64_t D, int dt) {
  for (int64_t r = 0; r < R; r++)
    for (int64_t j = 0; j < nj; j++)
      for (int64_t d = 0; d < D; d++) acc[r * D + d] += p[r * ldp + j] * ld16(v[j], d, dt);
}

// The code at position e of a packed row (nibble order for 4 bits, see pk_nibble_pos), as a float; FP8 codes as
// their E4M3 value.
inline float pk_code(const uint8_t *c, int mode, int bits, int64_t e) {
  if (mode == PK_FP8) return kE4M3[c[e]];
  if (bits == 8) return (float)c[e];
  const int64_t b = e & ~(int64_t)31, i = (e >> 3) & 3, k = e & 7;
  const uint8_t byte = c[b / 2 + (i & 1) * 8 + k];
  return (float)(i >> 1 ? byte >> 4 : byte & 15);
}

void pk_dots(float *s, int64_t lds, const float *q, const float *qsum, int64_t R, const PkRows &k, int64_t nj, int64_t D) {
  const int64_t G = k.group, ng = D / G;
  for (int64_t j = 0; j < nj; j++) {
    const uint8_t *c = k.codes[j];
    for (int64_t r = 0; r < R; r++) {
      const float *qr = q + r * D;
      float tot = 0.f;
      for (int64_t g = 0; g < ng; g++) {
        float a = 0.f;
        for (int64_t e = g * G; e < (g + 1) * G; e++) a += qr[e] * pk_code(c, k.mode, k.bits, e);
        tot += a * rmlx::f16_to_f32(k.scales[j][g]);
        if (k.mode == PK_AFFINE) tot += rmlx::f16_to_f32(k.biases[j][g]) * qsum[r * ng + g];
      }
      s[r * lds + j] = tot;
    }
  }
}

void pk_pv(float *acc, const float *p, int64_t ldp, int64_t R, const PkRows &v, int64_t nj, int64_t D) {
  const int64_t G = v.group, ng = D / G;
  for (int64_t j = 0; j < nj; j++) {
    const uint8_t *c = v.codes[j];
    for (int64_t g = 0; g < ng; g++) {
      const float sc = rmlx::f16_to_f32(v.scales[j][g]), b = v.mode == PK_AFFINE ? rmlx::f16_to_f32(v.biases[j][g]) : 0.f;
      for (int64_t r = 0; r < R; r++) {
        const float pj = p[r * ldp + j];
        float *ar = acc + r * D;
        for (int64_t e = g * G; e < (g + 1) * G; e++) ar[e] += pj * (sc * pk_code(c, v.mode, v.bits, e) + b);
      }
    }
  }
}

void pk_decode(float *dst, const uint8_t *c, const uint16_t *scales, const uint16_t *biases, int mode, int bits,
               int64_t G, int64_t D) {
  for (int64_t g = 0; g < D / G; g++) {
    const float s = rmlx::f16_to_f32(scales[g]), b = mode == PK_AFFINE ? rmlx::f16_to_f32(biases[g]) : 0.f;
    float *o = dst + g * G;
    if (mode == PK_FP8)
      for (int64_t j = 0; j < G; j++) o[j] = kE4M3[c[g * G + j]] * s;
    else if (bits == 8)
      for (int64_t j = 0; j < G; j++) o[j] = s * (float)c[g * G + j] + b;
    else
      for (int64_t j = 0; j < G / 2; j++) {
        const uint8_t x = c[g * G / 2 + j];
        o[2 * j] = s * (float)(x & 15) + b;
        o[2 * j + 1] = s * (float)(x >> 4) + b;
      }
  }
}

void delta_step(float *S, const float *k, const float *q, const float *v, float decay, float beta, float *out,
                int64_t Dv, int64_t Dk) {
  for (int64_t j = 0; j < Dv; j++) {
    float *row = S + j * Dk;
    const float u = beta * (v[j] - decay * dot(row, k, Dk));
    float o = 0.f;
    for (int64_t d = 0; d < Dk; d++) {
      const float r = decay * row[d] + u * k[d];
      row[d] = r;
      o += r * q[d];
    }
    out[j] = o;
  }
}

const Kern kPortable = {dot,  axpy,   scal,      exp_sum, vmax, sumsq, scale_mul, silu, sigmoid, gelu_tanh,
                        swiglu, geglu, add, sub, mul, h2f, b2f, f2h, f2b, dots, pv, dots_rows, pv_rows,
                        dots16, pv16, pk_dots, pk_pv, pk_decode, delta_step, false, nullptr, nullptr};

}  // namespace

const Kern &kern_portable() { return kPortable; }

const Kern &kern() {
  const Isa isa = active_isa();
  return isa >= Isa::Avx512 ? avx512::kern() : isa >= Isa::Avx2 ? avx2::kern() : kPortable;
}

}  // namespace rmlx
