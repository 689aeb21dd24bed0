// The single-row attention kernels over 16-bit key and value rows (f16 or bf16), written once for a vector width:
// ops_kern_avx2.cpp (8 lanes) and ops_kern_avx512.cpp (16 lanes) include this inside their ISA namespace after
// defining W, their lane traits (no include guard on purpose). A decode step's attention runs these, one call per
// query row and chunk of keys.
//
// W: L (lanes), T (float vector), zero(), loadu(p), storeu(p, v), set1(x), fmadd(a, b, c), load16<Half>(p) (L
// 16-bit values widened to floats), sum(v) (its lanes' sum), fold8(v) (8 floats whose sum is v's).

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

// s[j] = scale * (q . k[j]) for nj keys, 8 keys at a time over L-lane steps of D.
template <bool Half>
void dots16_t(float *s, const float *q, const uint16_t *const *k, int64_t nj, int64_t D, float scale) {
  using T = W::T;
  const int64_t DL = D - D % W::L;
  for (int64_t j = 0; j < nj; j += 8) {
    const int64_t m = nj - j < 8 ? nj - j : 8;
    alignas(32) float r[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (m == 8) {
      T a[8];
      for (int u = 0; u < 8; u++) a[u] = W::zero();
      for (int64_t d = 0; d < DL; d += W::L) {
        const T qv = W::loadu(q + d);
        for (int u = 0; u < 8; u++) a[u] = W::fmadd(qv, W::template load16<Half>(k[j + u] + d), a[u]);
      }
      sums8(a, r);
    } else {
      for (int64_t u = 0; u < m; u++) {
        T a = W::zero();
        for (int64_t d = 0; d < DL; d += W::L) a = W::fmadd(W::loadu(q + d), W::template load16<Half>(k[j + u] + d), a);
        r[u] = W::sum(a);
      }
    }
    for (int64_t u = 0; u < m; u++) {
      float t = r[u];
      for (int64_t d = DL; d < D; d++) t += q[d] * f32_of16<Half>(k[j + u][d]);
      s[j + u] = t * scale;
    }
  }
}

// acc += sum over nj keys of p[j] * v[j], 8 keys at a time over L-lane steps of D.
template <bool Half>
void pv16_t(float *acc, const float *p, const uint16_t *const *v, int64_t nj, int64_t D) {
  using T = W::T;
  const int64_t DL = D - D % W::L;
  int64_t j = 0;
  for (; j + 8 <= nj; j += 8) {
    T pj[8];
    for (int u = 0; u < 8; u++) pj[u] = W::set1(p[j + u]);
    for (int64_t d = 0; d < DL; d += W::L) {
      T a = W::loadu(acc + d);
      for (int u = 0; u < 8; u++) a = W::fmadd(pj[u], W::template load16<Half>(v[j + u] + d), a);
      W::storeu(acc + d, a);
    }
  }
  for (; j < nj; j++) {
    const T pj = W::set1(p[j]);
    for (int64_t d = 0; d < DL; d += W::L)
      W::storeu(acc + d, W::fmadd(pj, W::template load16<Half>(v[j] + d), W::loadu(acc + d)));
  }
  for (int64_t d = DL; d < D; d++) {
    float a = acc[d];
    for (int64_t u = 0; u < nj; u++) a += p[u] * f32_of16<Half>(v[u][d]);
    acc[d] = a;
  }
}

void dots16(float *s, const float *q, const uint16_t *const *k, int64_t nj, int64_t D, float scale, int dt) {
  if (dt == RMLX_F16) dots16_t<true>(s, q, k, nj, D, scale);
  else dots16_t<false>(s, q, k, nj, D, scale);
}

void pv16(float *acc, const float *p, const uint16_t *const *v, int64_t nj, int64_t D, int dt) {
  if (dt == RMLX_F16) pv16_t<true>(acc, p, v, nj, D);
  else pv16_t<false>(acc, p, v, nj, D);
}
