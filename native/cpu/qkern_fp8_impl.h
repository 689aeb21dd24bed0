// Decode-shaped products of mxfp8 weights (E4M3 elements, one E8M0 scale per 32), up to kGemmMinRows - 1 rows of
// x (included by qkern_impl.h inside an ISA namespace after qkern_x16_impl.h; no include guard on purpose).
//
// Why not integers as for affine and fp4: an E4M3 value is k * 2^e with k < 16 and e over 15 binades (2^-9 to
// 448), 18 bits as an integer. In int16 it needs two exponent planes, so every 32 weights would cost each row of
// x two vpmaddwd / vpdpwssd plus a conversion and an FMA per group to stay inside int32: more instructions per
// product than f32 FMAs, not fewer. bf16 dot products (vdpbf16ps) hold every E4M3 value except the subnormals
// (the instruction flushes them), and x in bf16 alone is off by up to 2^-9 of each value; split in two bf16 parts
// it takes as many instructions as f32 FMAs. So the weights are decoded to f32 and the arithmetic stays exact:
//  - 32 bytes (one group) become 32 f16 values with two byte unpacks against zero (byte << 8 in each 16-bit
//    lane), an arithmetic shift and a mask (sign, then exponent and mantissa under f16's fields, as in
//    fp8_raw8_f16: value * 2^-8, subnormals included), then vcvtph2ps: 9 instructions per 32 weights where the
//    f32 path spends 6 per 16. The unpacks take bytes 0-7 and 8-15 of each 128-bit lane, so x is stored once per
//    call in that order: per 32 elements [0-7, 16-23, 8-15, 24-31] (fp8_prepare_all).
//  - the group's scale 2^(s-127) (times the 2^8 above) multiplies the weights once per group (one row of x: the
//    group's sum instead), then one FMA per vector of weights and row of x.
// Error: every decoded weight times its scale is exact in f32 (4 significant bits times a power of two; rows
// with a scale byte above 246 take the scalar dequantizer), so y differs from the exact product only by f32
// rounding of the sums: |y - y_exact| <= (K / lanes + 2 * groups / lanes + 8) * 2^-24 * sum |x w|, the same class
// as the f32 path (which the tests hold to 1e-5 of sum |x w|). rmlx_set_gemv_mode("f32") or RMLX_GEMV=f32 keeps
// the f32 path's own kernels.
//
// Where the CPU has AVX512-BF16 and VBMI (the AVX-512 variants only), decode takes bf16 dot products instead,
// because the f32 kernel above stays compute-bound for one row (about 25 GB/s a core, Zen 5): each E4M3 byte
// becomes the bf16 of value * 2^-8 through two 128-entry byte tables (vpermi2b: high and low byte, the sign
// or-ed in), which is exact, subnormals included (E4M3's smallest values are normal bf16 numbers); x is split
// once per call in two bf16 parts, x = hi + lo + r with hi = bf16(x), lo = bf16(x - hi), |r| <= 2^-18 |x|; and
// vdpbf16ps multiplies 32 weights with each part per instruction (exact products, f32 sums), the group's
// scale applied in f32 as above. 64 weights then cost about 15 instructions for one row where the f32 kernel
// spends 24. Error: |y - y_exact| <= 2^-18 * sum |x w| plus the f32 rounding of the sums (the bound above),
// finer than the x16 path's half step of 16-bit fixed point; rows of x with Inf or NaN and rows of K not a
// multiple of 64 take the f32 kernel.

// Whether the mxfp8 decode kernels take W (the f32 path's otherwise).
static inline bool fp8_takes(const WeightMat &W) {
  return W.kind == WKind::Mxfp8 && W.group == 32 && W.K % 32 == 0 && gemv_x16_enabled();
}

// x prepared for the decode kernels: a 64-byte header, then M rows of K in the layout of the kernel it names
// (4 bytes an element either way). free() releases it.
struct Fp8X {
  int bf16;  // 1: fp8_prepare_bf16's layout; 0: f32 in fp8_decode32's order
};
static constexpr size_t kFp8Head = 64;

static inline bool fp8_bf16_cpu() {
  if constexpr (V::L != 16) {
    return false;
  } else {
    static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi");
    return has;
  }
}

// bf16 layout, per 64 elements (two groups; e = 16k + i, k = 0..3, i = 0..7): the 32 words of x[e] in the
// order vpunpcklbw pairs the weights' bytes (hi parts, then lo parts), then the same for x[e + 8]
// (vpunpckhbw's). False when x holds Inf or NaN.
template <int = 0>  // instantiated by the AVX-512 variants only
__attribute__((target("avx512bf16"))) static bool fp8_prepare_bf16(const float *x, int64_t n, uint16_t *o) {
  const __m512i exp = _mm512_set1_epi32(0x7f800000);
  __mmask16 bad = 0;
  for (int64_t b = 0; b < n; b += 64, o += 128) {
    for (int h = 0; h < 2; h++) {
      const float *xb = x + b + 8 * h;
      __m512 a = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(xb)), _mm256_loadu_ps(xb + 16), 1);
      __m512 c = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(xb + 32)), _mm256_loadu_ps(xb + 48), 1);
      bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(a), exp), exp);
      bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(c), exp), exp);
      __m512i hi = (__m512i)_mm512_cvtne2ps_pbh(c, a);
      auto widen = [](__m256i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16)); };
      __m512 ah = widen(_mm512_castsi512_si256(hi)), ch = widen(_mm512_extracti64x4_epi64(hi, 1));
      __m512i lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(c, ch), _mm512_sub_ps(a, ah));
      _mm512_storeu_si512((void *)(o + 64 * h), hi);
      _mm512_storeu_si512((void *)(o + 64 * h + 32), lo);
    }
  }
  return bad == 0;
}

// x in the decode kernels' layout (see above); null when W does not take these kernels or memory is short.
static void *fp8_prepare_all(const float *x, int64_t M, const WeightMat &W) {
  if (!fp8_takes(W)) return nullptr;
  const int64_t n = M * W.K;
  char *mem = (char *)aligned_alloc(64, kFp8Head + (((size_t)n * 4 + 63) & ~(size_t)63));
  if (!mem) return nullptr;
  Fp8X *h = (Fp8X *)mem;
  h->bf16 = 0;
  if constexpr (V::L == 16) h->bf16 = W.K % 64 == 0 && fp8_bf16_cpu() && fp8_prepare_bf16(x, n, (uint16_t *)(mem + kFp8Head));
  if (h->bf16) return mem;
  float *xp = (float *)(mem + kFp8Head);
  for (int64_t b = 0; b < n; b += 32) {
    _mm256_storeu_ps(xp + b, _mm256_loadu_ps(x + b));
    _mm256_storeu_ps(xp + b + 8, _mm256_loadu_ps(x + b + 16));
    _mm256_storeu_ps(xp + b + 16, _mm256_loadu_ps(x + b + 8));
    _mm256_storeu_ps(xp + b + 24, _mm256_loadu_ps(x + b + 24));
  }
  return mem;
}

// The bytes of bf16(E4M3 value * 2^-8) by the byte's low 7 bits: high bytes (without the sign) in [0], low in [1].
struct Fp8Bf16Tables {
  uint8_t b[2][128];
};
static constexpr Fp8Bf16Tables kFp8Bf16 = [] {
  Fp8Bf16Tables t{};
  for (int i = 0; i < 128; i++) {
    uint32_t e = (uint32_t)i >> 3, m = (uint32_t)i & 7, bits;
    if (i == 127) {
      bits = 0x7fc0;  // NaN
    } else if (e == 0) {
      // m * 2^-9 * 2^-8 = 2^-17 * m, normalised
      if (m == 0) bits = 0;
      else {
        int lead = m >= 4 ? 2 : m >= 2 ? 1 : 0;
        uint32_t frac = (m << (7 - lead)) & 0x7f;
        bits = ((uint32_t)(127 - 17 + lead) << 7) | frac;
      }
    } else {
      bits = ((e - 7 - 8 + 127) << 7) | (m << 4);  // 2^(e-7) * (1 + m/8) * 2^-8
    }
    t.b[0][i] = (uint8_t)(bits >> 8);
    t.b[1][i] = (uint8_t)bits;
  }
  return t;
}();

// One group of 32 E4M3 bytes as V::L-lane f32 vectors, value * 2^-8, in the order of fp8_prepare_all.
template <typename T>
static inline void fp8_decode32(const uint8_t *p, T *w) {
  const __m256i b = _mm256_loadu_si256((const __m256i *)p), z = _mm256_setzero_si256();
  const __m256i keep = _mm256_set1_epi16((short)0xbfff);
  __m256i lo = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpacklo_epi8(z, b), 1), keep);  // [0-7 | 16-23]
  __m256i hi = _mm256_and_si256(_mm256_srai_epi16(_mm256_unpackhi_epi8(z, b), 1), keep);  // [8-15 | 24-31]
  if constexpr (V::L == 16) {
    w[0] = _mm512_cvtph_ps(lo);
    w[1] = _mm512_cvtph_ps(hi);
  } else {
    w[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(lo));
    w[1] = _mm256_cvtph_ps(_mm256_extracti128_si256(lo, 1));
    w[2] = _mm256_cvtph_ps(_mm256_castsi256_si128(hi));
    w[3] = _mm256_cvtph_ps(_mm256_extracti128_si256(hi, 1));
  }
}

// W's rows [n0, n1) against MR rows of x (permuted xp, natural x for rows the scalar dequantizer takes), from
// row m0, groups [g0, g1): the first block of groups writes y with the bias, later blocks add.
template <int MR>
static void fp8_rows(float *y, int64_t ldy, const float *xp, const float *x, const WeightMat &W, int64_t n0,
                     int64_t n1, const float *bias, RowCtx &c, int64_t g0, int64_t g1) {
  using T = typename V::T;
  constexpr int L = V::L, NV = 32 / L;
  const int64_t K = W.K;
  for (int64_t n = n0; n < n1; n++) {
    if (!row_prep<F_FP8>(W, n, g0, g1, c)) {
      const int64_t k0 = g0 * 32, len = (g1 - g0) * 32;
      dequant_range_scalar(W, n, k0, len, c.buf);
      for (int m = 0; m < MR; m++) {
        float r = 0.f;
        for (int64_t k = 0; k < len; k++) r += x[m * K + k0 + k] * c.buf[k];
        x16_put(y + m * ldy + n, r, g0, bias, n);
      }
      continue;
    }
    const uint8_t *p = W.w + n * W.row_bytes + g0 * 32;
    const float *xg = xp + g0 * 32;
    if constexpr (MR == 1) {
      // each group's products summed, then one FMA with its scale; two totals (even and odd groups) so that no
      // chain waits on FMA latency
      auto group = [&](const uint8_t *q, const float *xq) {
        T w[NV];
        fp8_decode32(q, w);
        T a = V::mul(V::loadu(xq), w[0]);
        if constexpr (NV == 2) {
          a = V::fma(V::loadu(xq + L), w[1], a);
        } else {
          T b = V::mul(V::loadu(xq + L), w[1]);
          a = V::fma(V::loadu(xq + 2 * L), w[2], a);
          b = V::fma(V::loadu(xq + 3 * L), w[3], b);
          a = V::add(a, b);
        }
        return a;
      };
      T t0 = V::zero(), t1 = V::zero();
      int64_t g = g0;
      for (; g + 2 <= g1; g += 2, p += 64, xg += 64) {
        prefetch_ahead(p);
        t0 = V::fma(group(p, xg), V::set1(c.sc[g]), t0);
        t1 = V::fma(group(p + 32, xg + 32), V::set1(c.sc[g + 1]), t1);
      }
      if (g < g1) t0 = V::fma(group(p, xg), V::set1(c.sc[g]), t0);
      x16_put(y + n, V::hsum(V::add(t0, t1)), g0, bias, n);
    } else {
      T acc[MR][2];
      for (int m = 0; m < MR; m++) acc[m][0] = acc[m][1] = V::zero();
      for (int64_t g = g0; g < g1; g++, p += 32, xg += 32) {
        if (((g * 32) & 63) == 0) prefetch_ahead(p);
        T w[NV];
        fp8_decode32(p, w);
        const T s = V::set1(c.sc[g]);
        for (int j = 0; j < NV; j++) {
          const T ws = V::mul(w[j], s);
          for (int m = 0; m < MR; m++) acc[m][j & 1] = V::fma(V::loadu(xg + m * K + j * L), ws, acc[m][j & 1]);
        }
      }
      for (int m = 0; m < MR; m++) x16_put(y + m * ldy + n, V::hsum(V::add(acc[m][0], acc[m][1])), g0, bias, n);
    }
  }
}

// W's rows [n0, n1) against MR rows of x (xb: fp8_prepare_bf16's layout, natural x for rows the scalar
// dequantizer takes), groups [g0, g1) (even g0), on bf16 dot products: 64 bytes, two groups, a step; the f32 lanes
// of vdpbf16ps follow the 128-bit lanes, so lanes 0-7 sum the first group and 8-15 the second.
template <int MR>
__attribute__((target("avx512bf16,avx512vbmi"))) static void fp8_rows_bf16(float *y, int64_t ldy, const uint16_t *xb,
                                                                        const float *x, const WeightMat &W,
                                                                        int64_t n0, int64_t n1, const float *bias,
                                                                        RowCtx &c, int64_t g0, int64_t g1) {
  const int64_t K = W.K;
  const __m512i th0 = _mm512_loadu_si512((const void *)kFp8Bf16.b[0]), th1 = _mm512_loadu_si512((const void *)(kFp8Bf16.b[0] + 64));
  const __m512i tl0 = _mm512_loadu_si512((const void *)kFp8Bf16.b[1]), tl1 = _mm512_loadu_si512((const void *)(kFp8Bf16.b[1] + 64));
  const __m512i sign = _mm512_set1_epi8((char)0x80);
  const __m512i halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  for (int64_t n = n0; n < n1; n++) {
    if (!row_prep<F_FP8>(W, n, g0, g1, c)) {
      const int64_t k0 = g0 * 32, len = (g1 - g0) * 32;
      dequant_range_scalar(W, n, k0, len, c.buf);
      for (int m = 0; m < MR; m++) {
        float r = 0.f;
        for (int64_t k = 0; k < len; k++) r += x[m * K + k0 + k] * c.buf[k];
        x16_put(y + m * ldy + n, r, g0, bias, n);
      }
      continue;
    }
    const uint8_t *p = W.w + n * W.row_bytes + g0 * 32;
    const uint16_t *xg = xb + g0 * 64;
    __m512 tot[MR];
    for (int m = 0; m < MR; m++) tot[m] = _mm512_setzero_ps();
    for (int64_t g = g0; g < g1; g += 2, p += 64, xg += 128) {
      prefetch_ahead(p);
      const __m512i b = _mm512_loadu_si512((const void *)p);
      const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(th0, b, th1), b, sign, 0xF8);  // | b & 0x80
      const __m512i lo = _mm512_permutex2var_epi8(tl0, b, tl1);
      const __m512bh w0 = (__m512bh)_mm512_unpacklo_epi8(lo, hi), w1 = (__m512bh)_mm512_unpackhi_epi8(lo, hi);
      const __m512 f = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double *)(c.sc + g)))));
      for (int m = 0; m < MR; m++) {
        const uint16_t *xe = xg + m * 2 * K;
        auto part = [&](int i) { return (__m512bh)_mm512_loadu_si512((const void *)(xe + 32 * i)); };
        __m512 a = _mm512_dpbf16_ps(_mm512_setzero_ps(), w0, part(0));
        a = _mm512_dpbf16_ps(a, w0, part(1));
        a = _mm512_dpbf16_ps(a, w1, part(2));
        a = _mm512_dpbf16_ps(a, w1, part(3));
        tot[m] = _mm512_fmadd_ps(a, f, tot[m]);
      }
    }
    for (int m = 0; m < MR; m++) x16_put(y + m * ldy + n, _mm512_reduce_add_ps(tot[m]), g0, bias, n);
  }
}

// Rows [n0, n1), MR rows of x from m, groups in blocks whose MR rows of x (f32) stay within 16 KiB of L1 while the
// tile's rows pass over them.
template <int MR>
static void fp8_pass(float *y, int64_t ldy, const float *xp, const float *x, const WeightMat &W, int64_t n0,
                     int64_t n1, const float *bias, RowCtx &c, bool bf16) {
  const int64_t NG = W.groups;
  int64_t gblk = (4096 / MR) / 32;
  if (gblk < 8) gblk = 8;
  for (int64_t g0 = 0; g0 < NG; g0 += gblk) {
    int64_t g1 = NG - g0 <= gblk + gblk / 4 ? NG : g0 + gblk;  // no sliver of a block at the end
    if constexpr (V::L == 16)
      if (bf16) fp8_rows_bf16<MR>(y, ldy, (const uint16_t *)xp, x, W, n0, n1, bias, c, g0, g1);
    if (!bf16) fp8_rows<MR>(y, ldy, xp, x, W, n0, n1, bias, c, g0, g1);
    if (g1 == NG) break;
  }
}

// y for rows of the tiles [t0, t1), all M rows of x (xp: fp8_prepare_all's); false when memory is short (the
// caller then takes the f32 path).
static bool fp8_tiles(float *y, const void *prepared, const float *x, int64_t M, const WeightMat &W,
                      const float *bias, int64_t t0, int64_t t1) {
  const bool bf16 = ((const Fp8X *)prepared)->bf16;
  const float *xp_shared = (const float *)((const char *)prepared + kFp8Head);
  constexpr int MRMAX = V::L == 16 ? 8 : 4;  // 2 * MR accumulators and the group's weights in the registers
  const int64_t N = W.N, K = W.K, NG = W.groups;
  // a small x is read from a copy of each thread's own, as in x16_tiles
  const size_t xbytes = (size_t)(M * K) * 4;
  const bool copy = xbytes <= 64 * 1024;
  const size_t qbytes = copy ? (xbytes + 63) & ~(size_t)63 : 0;
  char *mem = (char *)aligned_alloc(64, qbytes + sizeof(float) * (size_t)(2 * NG + K + 16));
  if (!mem) return false;
  if (copy) std::memcpy(mem, xp_shared, xbytes);
  const float *xp = copy ? (const float *)mem : xp_shared;
  float *rc = (float *)(mem + qbytes);
  RowCtx c{rc, rc + NG, rc + 2 * NG, 5, nullptr};
  for (int64_t t = t0; t < t1; t++) {
    int64_t n0 = t * kGemvTile, n1 = n0 + kGemvTile < N ? n0 + kGemvTile : N;
    for (int64_t m = 0; m < M;) {
      const int64_t left = M - m;
      float *ym = y + m * N;
      const float *xpm = xp + m * K, *xm = x + m * K;
      if (left >= 8 && MRMAX >= 8) fp8_pass<MRMAX>(ym, N, xpm, xm, W, n0, n1, bias, c, bf16), m += MRMAX;
      else if (left >= 4) fp8_pass<4>(ym, N, xpm, xm, W, n0, n1, bias, c, bf16), m += 4;
      else if (left >= 2) fp8_pass<2>(ym, N, xpm, xm, W, n0, n1, bias, c, bf16), m += 2;
      else fp8_pass<1>(ym, N, xpm, xm, W, n0, n1, bias, c, bf16), m += 1;
    }
  }
  free(mem);
  return true;
}
