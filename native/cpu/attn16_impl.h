// The single-row attention kernels over 16-bit key and value rows (f16 or bf16), written once for a vector width:
// ops_kern_avx2.cpp (8 lanes) and ops_kern_avx512.cpp (16 lanes) include this inside their ISA namespace after
// defining W, their lane traits (no include guard on purpose). A decode step's attention runs these, one call per
// KV head and chunk of keys.
//
// W: L (lanes), ACC (accumulator registers a kernel may keep: 16 or 8), T (float vector), zero(), loadu(p),
// storeu(p, v), set1(x), fmadd(a, b, c), load16<Half>(p) (L 16-bit values widened to floats), sum(v) (its lanes'
// sum), fold8(v) (8 floats whose sum is v's).

template <bool Half>
inline float f32_of16(uint16_t x) {
  return Half ? f16_to_f32(x) : bf16_to_f32(x);
}

// r[u] = the sum of a[u]'s lanes, u < 8 (r 32-byte aligned).
inline void sums8(const W::T *a, float *r) {
  __m256 h[8];
  for (int u = 0; u < 8; u++) h[u] = W::fold8(a[u]);
  const __m256 t0 = _mm256_hadd_ps(h[0], h[1]), t1 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 t2 = _mm256_hadd_ps(h[4], h[5]), t3 = _mm256_hadd_ps(h[6], h[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  _mm256_store_ps(r, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
}

// s[r * lds + j] = scale * (q[r] . k[j]) for R query rows (q[r] = q + r * D) and nj keys, NK keys at a time
// over L-lane steps of D: each key vector is widened once for all R rows (the GQA rows of one KV head), which is
// what bounds these kernels, rather than once a row.
template <bool Half, int R>
void dots16_t(float *s, int64_t lds, const float *q, const uint16_t *const *k, int64_t nj, int64_t D, float scale) {
  using T = W::T;
  constexpr int NK = W::ACC / R;  // R * NK accumulators, reduced 8 at a time
  static_assert(NK >= 1 && (R * NK) % 8 == 0, "accumulators come in eights");
  const int64_t DL = D - D % W::L;
  for (int64_t j = 0; j < nj; j += NK) {
    const int64_t m = nj - j < NK ? nj - j : NK;
    alignas(32) float res[R * NK];
    if (m == NK) {
      T a[R * NK];
      for (int i = 0; i < R * NK; i++) a[i] = W::zero();
      for (int64_t d = 0; d < DL; d += W::L) {
        T qv[R];
        for (int r = 0; r < R; r++) qv[r] = W::loadu(q + r * D + d);
        for (int u = 0; u < NK; u++) {
          const T kv = W::template load16<Half>(k[j + u] + d);
          for (int r = 0; r < R; r++) a[r * NK + u] = W::fmadd(qv[r], kv, a[r * NK + u]);
        }
      }
      for (int i = 0; i < R * NK; i += 8) sums8(a + i, res + i);
    } else {
      for (int r = 0; r < R; r++)
        for (int64_t u = 0; u < m; u++) {
          T a = W::zero();
          for (int64_t d = 0; d < DL; d += W::L) a = W::fmadd(W::loadu(q + r * D + d), W::template load16<Half>(k[j + u] + d), a);
          res[r * NK + u] = W::sum(a);
        }
    }
    for (int r = 0; r < R; r++)
      for (int64_t u = 0; u < m; u++) {
        float t = res[r * NK + u];
        for (int64_t d = DL; d < D; d++) t += q[r * D + d] * f32_of16<Half>(k[j + u][d]);
        s[r * lds + j + u] = t * scale;
      }
  }
}

// acc[r] += sum over nj keys of p[r * ldp + j] * v[j] for R rows (acc[r] = acc + r * D), 8 keys at a time over
// L-lane steps of D, each value vector widened once for all R rows.
template <bool Half, int R>
void pv16_t(float *acc, const float *p, int64_t ldp, const uint16_t *const *v, int64_t nj, int64_t D) {
  using T = W::T;
  const int64_t DL = D - D % W::L;
  int64_t j = 0;
  for (; j + 8 <= nj; j += 8) {
    for (int64_t d = 0; d < DL; d += W::L) {
      T x[8];
      for (int u = 0; u < 8; u++) x[u] = W::template load16<Half>(v[j + u] + d);
      for (int r = 0; r < R; r++) {
        T a = W::loadu(acc + r * D + d);
        for (int u = 0; u < 8; u++) a = W::fmadd(W::set1(p[r * ldp + j + u]), x[u], a);
        W::storeu(acc + r * D + d, a);
      }
    }
  }
  for (; j < nj; j++)
    for (int64_t d = 0; d < DL; d += W::L) {
      const T x = W::template load16<Half>(v[j] + d);
      for (int r = 0; r < R; r++) W::storeu(acc + r * D + d, W::fmadd(W::set1(p[r * ldp + j]), x, W::loadu(acc + r * D + d)));
    }
  for (int r = 0; r < R; r++)
    for (int64_t d = DL; d < D; d++) {
      float a = acc[r * D + d];
      for (int64_t u = 0; u < nj; u++) a += p[r * ldp + u] * f32_of16<Half>(v[u][d]);
      acc[r * D + d] = a;
    }
}

// R rows as passes of 4, 2 and 1.
template <bool Half>
void dots16_rows(float *s, int64_t lds, const float *q, int64_t R, const uint16_t *const *k, int64_t nj, int64_t D,
                 float scale) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) dots16_t<Half, 4>(s + r * lds, lds, q + r * D, k, nj, D, scale);
  for (; r + 2 <= R; r += 2) dots16_t<Half, 2>(s + r * lds, lds, q + r * D, k, nj, D, scale);
  for (; r < R; r++) dots16_t<Half, 1>(s + r * lds, lds, q + r * D, k, nj, D, scale);
}

template <bool Half>
void pv16_rows(float *acc, const float *p, int64_t ldp, int64_t R, const uint16_t *const *v, int64_t nj, int64_t D) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) pv16_t<Half, 4>(acc + r * D, p + r * ldp, ldp, v, nj, D);
  for (; r + 2 <= R; r += 2) pv16_t<Half, 2>(acc + r * D, p + r * ldp, ldp, v, nj, D);
  for (; r < R; r++) pv16_t<Half, 1>(acc + r * D, p + r * ldp, ldp, v, nj, D);
}

void dots16(float *s, int64_t lds, const float *q, int64_t R, const uint16_t *const *k, int64_t nj, int64_t D,
            float scale, int dt) {
  if (dt == RMLX_F16) dots16_rows<true>(s, lds, q, R, k, nj, D, scale);
  else dots16_rows<false>(s, lds, q, R, k, nj, D, scale);
}

void pv16(float *acc, const float *p, int64_t ldp, int64_t R, const uint16_t *const *v, int64_t nj, int64_t D, int dt) {
  if (dt == RMLX_F16) pv16_rows<true>(acc, p, ldp, R, v, nj, D);
  else pv16_rows<false>(acc, p, ldp, R, v, nj, D);
}
