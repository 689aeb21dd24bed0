// Products of affine 2, 4 and 8-bit weights with several rows of x (batched decode, prefill) on 8-bit x (included
// by qkern_impl.h inside an ISA namespace after qkern_x16_impl.h; no include guard on purpose).
//
// Why: with x in 16 bits (qkern_x16_impl.h) a batch of rows is compute-bound, one vpdpwssd per 32 products; 16
// rows of a 4-bit product cost about 8x one row. With x in 8 bits one vpdpbusd does 64 (vpmaddubsw + vpmaddwd
// without VNNI), as llama.cpp's q8 activations do. The prefill GEMM takes the same kernel instead of f32 FMAs over
// dequantized panels.
//
// Arithmetic: each group of x (the weight's group) is put in int8 with step = max|x| / 127, rounded to nearest
// even; for w = s * q + b, a group's dot is s * step * sum(q * x8) + b * sum(x), the integer sum exact, the sum of
// x exact f32. As on the x16 path the codes are centred (the term -c * s * sum(x8 * step - x) is added per group,
// c = (2^bits - 1) / 2), so |y - y_exact| <= sum over groups of |s| * step / 2 * sum |q - c|, about 1/254 of
// max|x| per weight: 128x the x16 error, a little finer than llama.cpp's q8_0 (no centring, blocks of 32).
//
// Layout: a step is one vector of weight bytes (64 or 32), split into 16-byte chunks (16 * CPB elements, CPB codes
// a byte). The int32 lanes of vpdpbusd and vpmaddwd sum 4 bytes of one 128-bit lane, so 128-bit lane k sums one
// chunk; where a group spans two chunks or more, two steps form a unit and lane k takes chunks 2k and 2k + 1, one
// group, so that one accumulator serves the unit's groups and its conversion and scale are paid once a unit. x
// is stored in that order (x8_order), each code plane j of a step a vector of its own.

template <int L>
struct X8Vec;

template <>
struct X8Vec<8> {
  using I = __m256i;
  using F = __m256;
  static constexpr int NL = 2;  // 128-bit lanes
  static I load(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
  static I bytes(int v) { return _mm256_set1_epi8((char)v); }
  // step S of a unit loaded as a and b: lane k = chunk 2k + S
  template <int S>
  static I pair(I a, I b) {
    return _mm256_permute2x128_si256(a, b, S == 0 ? 0x20 : 0x31);
  }
  static I and_(I a, I b) { return _mm256_and_si256(a, b); }
  static I srl16(I a, int n) { return _mm256_srli_epi16(a, n); }
  static I zero() { return _mm256_setzero_si256(); }
#ifdef __AVX512VNNI__
  static I dpbusd(I acc, I w, I x) { return _mm256_dpbusd_epi32(acc, w, x); }
#else
  static I dpbusd(I acc, I w, I x);  // only VNNI variants call it
#endif
  static I maddubs(I w, I x) { return _mm256_maddubs_epi16(w, x); }
  static I add16(I a, I b) { return _mm256_add_epi16(a, b); }
  static I madd1(I a) { return _mm256_madd_epi16(a, _mm256_set1_epi16(1)); }
  static F fzero() { return _mm256_setzero_ps(); }
  // per 32-bit lane, the factor at sm[idx lane]
  static F factors(const float *sm, I idx) { return _mm256_permutevar8x32_ps(_mm256_loadu_ps(sm), idx); }
  static I lane_groups(const int *g) { return _mm256_setr_epi32(g[0], g[0], g[0], g[0], g[1], g[1], g[1], g[1]); }
  static F cvt_fma(I acc, F f, F tot) { return _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), f, tot); }
  static float hsum(F v) { return hsum8(v); }
  static F add8(F a, __m256 b) { return _mm256_add_ps(a, b); }
};

#ifdef __AVX512F__
template <>
struct X8Vec<16> {
  using I = __m512i;
  using F = __m512;
  static constexpr int NL = 4;
  static I load(const void *p) { return _mm512_loadu_si512(p); }
  static I bytes(int v) { return _mm512_set1_epi8((char)v); }
  template <int S>
  static I pair(I a, I b) {
    return _mm512_shuffle_i64x2(a, b, S == 0 ? 0x88 : 0xDD);  // chunks 0 2 4 6, or 1 3 5 7
  }
  static I and_(I a, I b) { return _mm512_and_si512(a, b); }
  static I srl16(I a, int n) { return _mm512_srli_epi16(a, n); }
  static I zero() { return _mm512_setzero_si512(); }
#ifdef __AVX512VNNI__
  static I dpbusd(I acc, I w, I x) { return _mm512_dpbusd_epi32(acc, w, x); }
#else
  static I dpbusd(I acc, I w, I x);  // only VNNI variants call it
#endif
  static I maddubs(I w, I x) { return _mm512_maddubs_epi16(w, x); }
  static I add16(I a, I b) { return _mm512_add_epi16(a, b); }
  static I madd1(I a) { return _mm512_madd_epi16(a, _mm512_set1_epi16(1)); }
  static F fzero() { return _mm512_setzero_ps(); }
  static F factors(const float *sm, I idx) { return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(sm)); }
  static I lane_groups(const int *g) {
    return _mm512_setr_epi32(g[0], g[0], g[0], g[0], g[1], g[1], g[1], g[1], g[2], g[2], g[2], g[2], g[3], g[3],
                             g[3], g[3]);
  }
  static F cvt_fma(I acc, F f, F tot) { return _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), f, tot); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
  static F add8(F a, __m256 b) { return _mm512_add_ps(a, _mm512_zextps256_ps512(b)); }
};
#endif

using XV = X8Vec<V::L>;

// 2 and 4-bit everywhere; 8-bit only with VNNI: vpmaddubsw's pairs of 255 * 127 would saturate int16.
template <int F>
static constexpr bool x8_format() {
  return F == F_A2 || F == F_A4 || (F == F_A8 && V::kVnni);
}
template <int F>
static constexpr int x8_cpb() {
  return 8 / (int)bits_of<F>();
}
// Chunks a group of GS, steps a unit, elements a unit.
template <int F>
static constexpr int x8_lpg(int64_t GS) {
  return (int)(GS / (16 * x8_cpb<F>()));
}
template <int F>
static constexpr int x8_steps(int64_t GS) {
  return x8_lpg<F>(GS) >= 2 ? 2 : 1;
}
template <int F>
static constexpr int64_t x8_unit(int64_t GS) {
  return (int64_t)x8_steps<F>(GS) * XV::NL * 16 * x8_cpb<F>();
}

// Several rows only unless one row is measured faster than x16's (it is not: see README, x16 products).
static constexpr int64_t kX8MinRows = 2;

template <int F>
static bool x8_takes(const WeightMat &W, int64_t M) {
  if constexpr (!x8_format<F>()) {
    return false;
  } else {
    // Weights of models that route tokens to experts keep x16 rows: int8 x moved a router's near-tie to another
    // expert (the Gemma 4 MoE fixture on AVX2, 0.29 of the logit scale at one position), as x16 prefill did.
    if (M < kX8MinRows || !gemv_x8_enabled() || W.exact_rows) return false;
    if (W.group != 32 && W.group != 64 && W.group != 128) return false;
    if (x8_lpg<F>(W.group) < 1) return false;  // 2-bit g32: less than a chunk a group
    return W.K % x8_unit<F>(W.group) == 0;
  }
}

struct X8 {
  int8_t *q;    // [M][K] in the kernels' order (x8_order), or the panels' (x8p_order)
  float *step;  // [M][groups]
  float *fix;   // [M][groups]: sum of x (for biases)
  float *err;   // [M][groups]: -c * sum of (q * step - x) (the centring, see the top of this file)
  bool panel;   // for the panels (x8p_takes)
};

// Batched decode (7-63 rows) runs on the x16 panels' tiles (qkern_x16_panel_impl.h) with x in 8 bits: one
// vpdpbusd per 64 products where x16 takes two, and a group's integer sum converted and scaled once for 16 outputs
// where the row kernels here reduce lanes per unit. The same integer sums as x8_rows; the f32 terms are added in
// another order.
template <int F>
static bool x8p_takes(const WeightMat &W, int64_t M) {
  if constexpr (!x16p_format<F>()) {
    return false;
  } else {
    return M >= kX16pMinRows && M < kX16pMaxRows && x8_takes<F>(W, M) && x16_takes<F>(W);
  }
}

// A row of int8 x in natural order -> the panels' order: per word of W (4 * CPB elements) and code plane j, the 4
// bytes of elements 4 * CPB * d + CPB * b + j, b = 0..3 (each 16 bytes of x stay 16 bytes).
template <int CPB>
static void x8p_order(int8_t *q, int64_t K) {
  if constexpr (CPB > 1) {
    const __m128i s = CPB == 2 ? _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15)
                               : _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (int64_t i = 0; i < K; i += 16)
      _mm_storeu_si128((__m128i *)(q + i), _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(q + i)), s));
  }
}

// The CPB code planes of one chunk (16 * CPB int8 values of x in natural order): byte i of plane j is element
// CPB * i + j.
template <int CPB>
static inline void x8_planes(const int8_t *src, __m128i *out) {
  if constexpr (CPB == 1) {
    out[0] = _mm_loadu_si128((const __m128i *)src);
  } else if constexpr (CPB == 2) {
    const __m256i eo = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
    __m256i v = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)src), eo), 0xD8);
    out[0] = _mm256_castsi256_si128(v);
    out[1] = _mm256_extracti128_si256(v, 1);
  } else {
    static_assert(CPB == 4);
    // per 128-bit lane, dword j = the lane's elements j, 4 + j, 8 + j, 12 + j; then dword pairs across lanes
    const __m256i q = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
    const __m256i pairs = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i a = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)src), q), pairs);
    __m256i b = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(src + 32)), q), pairs);
    __m256i lo = _mm256_unpacklo_epi64(a, b), hi = _mm256_unpackhi_epi64(a, b);
    out[0] = _mm256_castsi256_si128(lo);
    out[1] = _mm256_castsi256_si128(hi);
    out[2] = _mm256_extracti128_si256(lo, 1);
    out[3] = _mm256_extracti128_si256(hi, 1);
  }
}

// A row of int8 x in natural order -> per unit of U steps, per step s and code plane j, byte 16k + i = the
// element of byte i of chunk kU + s, code j.
template <int CPB, int U>
static void x8_order(int8_t *q, int64_t K) {
  constexpr int NL = XV::NL, CE = 16 * CPB, UE = U * NL * CE;
  alignas(64) int8_t tmp[UE];
  for (int64_t b = 0; b < K; b += UE) {
    std::memcpy(tmp, q + b, sizeof tmp);
    for (int c = 0; c < U * NL; c++) {
      __m128i pl[CPB];
      x8_planes<CPB>(tmp + c * CE, pl);
      const int s = c % U, k = c / U;
      for (int j = 0; j < CPB; j++) _mm_storeu_si128((__m128i *)(q + b + (s * CPB + j) * 16 * NL + 16 * k), pl[j]);
    }
  }
}

template <int F>
static void x8_order_for(int8_t *q, const WeightMat &W) {
  constexpr int CPB = x8_cpb<F>();
  if (x8_steps<F>(W.group) == 2) x8_order<CPB, 2>(q, W.K);
  else x8_order<CPB, 1>(q, W.K);
}

// Rows [m0, m1) of x quantized for W's groups; false when they hold Inf or NaN (the f32 path keeps them).
template <int F>
static bool x8_fill_f(X8 &o, const float *x, int64_t m0, int64_t m1, const WeightMat &W) {
  const int64_t K = W.K, G = W.group, NG = W.groups;
  constexpr float kCentre = (float)((1 << bits_of<F>()) - 1) * 0.5f;
  const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-127);
  __m256i bad = _mm256_setzero_si256();
  for (int64_t m = m0; m < m1; m++) {
    const float *xm = x + m * K;
    int8_t *qm = o.q + m * K;
    for (int64_t g = 0; g < NG; g++) {
      const float *xg = xm + g * G;
      __m256 sum;
      float amax = x_group_scan(xg, G, sum, bad);
      float step = amax / 127.f;
      __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f), vstep = _mm256_set1_ps(step);
      __m256 err = _mm256_setzero_ps();
      int8_t *qg = qm + g * G;
      for (int64_t i = 0; i < G; i += 32) {
        __m256i r[4];
        for (int j = 0; j < 4; j++) {
          __m256 v = _mm256_loadu_ps(xg + i + 8 * j);
          r[j] = _mm256_max_epi32(_mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, inv)), hi), lo);
          err = _mm256_add_ps(err, _mm256_fmsub_ps(_mm256_cvtepi32_ps(r[j]), vstep, v));
        }
        // int32 -> int8 in order: the packs interleave 128-bit halves, the permute restores them
        __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
        w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(qg + i), w);
      }
      o.step[m * NG + g] = step;
      o.fix[m * NG + g] = hsum8(sum);
      o.err[m * NG + g] = -kCentre * hsum8(err);
    }
    if (o.panel) x8p_order<x8_cpb<F>()>(qm, K);
    else x8_order_for<F>(qm, W);
  }
  return _mm256_testz_si256(bad, bad);
}

// Per-thread state of a tile: its rows' scales and biases, and the factors scale * step of NR rows for MR rows
// of x.
struct X8Ctx {
  float *sc, *bi;  // [kGemvTile][groups], row n of W at n - n0
  int64_t n0;
  float *fac[2];   // [MR][groups] each, padded so that a vector load past the last group stays inside
};

// sum over groups [g0, g1) of bi[g] * fx[g] + sc[g] * er[g], as 8 partial sums
static inline __m256 x8_terms(const float *bi, const float *fx, const float *sc, const float *er, int64_t g0,
                              int64_t g1) {
  __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
  int64_t g = g0;
  for (; g + 8 <= g1; g += 8) {
    a = _mm256_fmadd_ps(_mm256_loadu_ps(bi + g), _mm256_loadu_ps(fx + g), a);
    b = _mm256_fmadd_ps(_mm256_loadu_ps(sc + g), _mm256_loadu_ps(er + g), b);
  }
  if (g < g1) {
    const __m256i k = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(g1 - g)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    a = _mm256_fmadd_ps(_mm256_maskload_ps(bi + g, k), _mm256_maskload_ps(fx + g, k), a);
    b = _mm256_fmadd_ps(_mm256_maskload_ps(sc + g, k), _mm256_maskload_ps(er + g, k), b);
  }
  return _mm256_add_ps(a, b);
}

// MR rows of x (from m0) against W's rows [n0, n1), NR at a time (n1 - n0 a multiple of NR), groups [g0, g1)
// of GS weights (whole units). Each unit: U steps of weight bytes per row of W, their CPB code planes, then per
// row of x one accumulator over all the planes (vpdpbusd; without VNNI, vpmaddubsw pairs summed in int16, at
// most 8 * 2 * 15 * 127 for 4-bit, then one vpmaddwd), converted and scaled once.
template <int F, int MR, int NR, int GS>
static void x8_rows(float *y, int64_t ldy, const X8 &xq, int64_t m0, const WeightMat &W, int64_t n0, int64_t n1,
                    const float *bias, X8Ctx &c, int64_t g0, int64_t g1) {
  using I = XV::I;
  using Fv = XV::F;
  constexpr int BITS = (int)bits_of<F>(), CPB = x8_cpb<F>(), NL = XV::NL, VB = 16 * NL;
  constexpr int LPG = x8_lpg<F>(GS), U = x8_steps<F>(GS);
  constexpr int UE = (int)x8_unit<F>(GS), GPU = UE / GS, NV = U * CPB;
  static_assert(LPG >= 1 && GPU >= 1, "a unit holds whole groups of whole chunks");
  const int64_t K = W.K, NG = W.groups;
  const I mask = XV::bytes((1 << BITS) - 1);
  int lg[4];
  for (int k = 0; k < NL; k++) lg[k] = k * U / LPG;
  const I gidx = XV::lane_groups(lg);
  for (int64_t n = n0; n < n1; n += NR) {
    const uint8_t *p[NR];
    Fv tot[NR][MR];
    const float *sc[NR], *bi[NR];
    for (int r = 0; r < NR; r++) {
      p[r] = W.w + (n + r) * W.row_bytes + g0 * GS * BITS / 8;
      sc[r] = c.sc + (n + r - c.n0) * NG, bi[r] = c.bi + (n + r - c.n0) * NG;
      x16_scales<MR>(sc[r], X16{nullptr, xq.step, nullptr, nullptr}, m0, NG, g0, g1, c.fac[r]);
      for (int m = 0; m < MR; m++) tot[r][m] = XV::fzero();
    }
    const int8_t *xg = xq.q + m0 * K + g0 * GS;
    for (int64_t g = g0; g < g1; g += GPU, xg += UE) {
      I w[NR][NV];
      for (int r = 0; r < NR; r++, p[r - 1] += VB * U) {
        prefetch_ahead(p[r]);
        I st[U];
        if constexpr (U == 1) {
          st[0] = XV::load(p[r]);
        } else {
          if constexpr (VB * U > 64) prefetch_ahead(p[r] + 64);
          const I a = XV::load(p[r]), b = XV::load(p[r] + VB);
          st[0] = XV::template pair<0>(a, b);
          st[1] = XV::template pair<1>(a, b);
        }
        for (int s = 0; s < U; s++)
          for (int j = 0; j < CPB; j++) {
            I cj = j == 0 ? st[s] : XV::srl16(st[s], BITS * j);
            w[r][s * CPB + j] = BITS < 8 ? XV::and_(cj, mask) : cj;
          }
      }
      I acc[NR][MR];
      for (int m = 0; m < MR; m++) {
        const int8_t *xe = xg + m * K;
        for (int i = 0; i < NV; i++) {
          const I xv = XV::load(xe + VB * i);
          for (int r = 0; r < NR; r++) {
            if constexpr (V::kVnni) acc[r][m] = XV::dpbusd(i == 0 ? XV::zero() : acc[r][m], w[r][i], xv);
            else acc[r][m] = i == 0 ? XV::maddubs(w[r][i], xv) : XV::add16(acc[r][m], XV::maddubs(w[r][i], xv));
          }
        }
      }
      for (int r = 0; r < NR; r++)
        for (int m = 0; m < MR; m++) {
          const I a = V::kVnni ? acc[r][m] : XV::madd1(acc[r][m]);
          tot[r][m] = XV::cvt_fma(a, XV::factors(c.fac[r] + m * NG + g, gidx), tot[r][m]);
        }
    }
    // biases against the exact sums of x, scales against the centred rounding errors (x8_fill_f)
    for (int r = 0; r < NR; r++)
      for (int m = 0; m < MR; m++) {
        const float *fx = xq.fix + (m0 + m) * NG, *er = xq.err + (m0 + m) * NG;
        float v = XV::hsum(XV::add8(tot[r][m], x8_terms(bi[r], fx, sc[r], er, g0, g1)));
        x16_put(y + m * ldy + n + r, v, g0, bias, n + r);
      }
  }
}

// Rows of 512-bit vectors take two rows of W a pass (each load of x feeds both); the 16 registers of AVX2 one.
static constexpr int kX8Nr = V::L == 16 ? 2 : 1;

template <int F, int MR, int GS>
static void x8_rows_all(float *y, int64_t ldy, const X8 &xq, int64_t m0, const WeightMat &W, int64_t n0, int64_t n1,
                        const float *bias, X8Ctx &c, int64_t g0, int64_t g1) {
  const int64_t n2 = n0 + ((n1 - n0) / kX8Nr) * kX8Nr;
  x8_rows<F, MR, kX8Nr, GS>(y, ldy, xq, m0, W, n0, n2, bias, c, g0, g1);
  if (n2 < n1) x8_rows<F, MR, 1, GS>(y, ldy, xq, m0, W, n2, n1, bias, c, g0, g1);
}

// Rows [n0, n1) of W, MR rows of x from m, K in blocks of whole units that keep the block of x in L1.
template <int F, int MR>
static void x8_pass(float *y, int64_t ldy, const X8 &xq, int64_t m, const WeightMat &W, int64_t n0, int64_t n1,
                    const float *bias, X8Ctx &c) {
  const int64_t NG = W.groups, gpu = x8_unit<F>(W.group) / W.group;
  int64_t gblk = (16384 / MR) / W.group / gpu * gpu;
  if (gblk < gpu) gblk = gpu;
  for (int64_t g0 = 0; g0 < NG; g0 += gblk) {
    int64_t g1 = NG - g0 <= gblk + gblk / 4 ? NG : g0 + gblk;
    if constexpr (F != F_A2)
      if (W.group == 32) x8_rows_all<F, MR, 32>(y, ldy, xq, m, W, n0, n1, bias, c, g0, g1);
    if (W.group == 64) x8_rows_all<F, MR, 64>(y, ldy, xq, m, W, n0, n1, bias, c, g0, g1);
    if (W.group == 128) x8_rows_all<F, MR, 128>(y, ldy, xq, m, W, n0, n1, bias, c, g0, g1);
    if (g1 == NG) break;
  }
}

static constexpr int kX8Mr = 4;

template <int F>
static X8 *x8_alloc_f(int64_t M, const WeightMat &W) {
  if (!x8_takes<F>(W, M)) return nullptr;
  const int64_t K = W.K, NG = W.groups;
  size_t head = 64, qbytes = ((size_t)(M * K) + 63) & ~(size_t)63;
  size_t total = (head + qbytes + sizeof(float) * (size_t)(3 * M * NG + 16) + 63) & ~(size_t)63;
  char *mem = (char *)aligned_alloc(64, total);
  if (!mem) return nullptr;
  float *fm = (float *)(mem + head + qbytes);
  X8 *xq = (X8 *)mem;
  *xq = X8{(int8_t *)(mem + head), fm, fm + M * NG, fm + 2 * M * NG, x8p_takes<F>(W, M)};
  return xq;
}

// y for rows of the tiles [t0, t1), all M rows of x; false when memory is short (the caller then takes the f32
// path).
template <int F>
static bool x8_tiles(float *y, const X8 &shared, int64_t M, const WeightMat &W, const float *bias, int64_t t0,
                     int64_t t1) {
#if defined(__AVX512VNNI__)
  if constexpr (x16p_format<F>())
    if (shared.panel) return xpanel_tiles<F, true>(y, XPanel{shared.q, shared.step, shared.fix, shared.err}, M, W, bias, t0, t1);
#endif
  const int64_t N = W.N, NG = W.groups;
  // a small x is read from a copy of its own by each thread, as on the x16 path
  const size_t xbytes = (size_t)(M * W.K);
  const bool copy = xbytes <= 64 * 1024;
  const size_t qbytes = copy ? (xbytes + 63) & ~(size_t)63 : 0, fpad = 16;
  char *mem = (char *)aligned_alloc(
      64, qbytes + sizeof(float) * (size_t)((2 * kGemvTile + 2 * kX8Mr) * NG + 2 * fpad));
  if (!mem) return false;
  if (copy) std::memcpy(mem, shared.q, xbytes);
  const X8 xq{copy ? (int8_t *)mem : shared.q, shared.step, shared.fix, shared.err, false};
  float *f = (float *)(mem + qbytes), *fac = f + 2 * kGemvTile * NG;
  X8Ctx c{f, f + kGemvTile * NG, 0, {fac, fac + kX8Mr * NG + fpad}};
  for (int64_t t = t0; t < t1; t++) {
    int64_t n0 = t * kGemvTile, n1 = n0 + kGemvTile < N ? n0 + kGemvTile : N;
    // the tile's scales and biases once for every pass over its rows
    c.n0 = n0;
    for (int64_t n = n0; n < n1; n++) {
      RowCtx rc{c.sc + (n - n0) * NG, c.bi + (n - n0) * NG, nullptr, 0, nullptr};
      row_prep<F>(W, n, 0, NG, rc);
    }
    for (int64_t m = 0; m < M;) {
      int64_t left = M - m;
      float *ym = y + m * N;
      if (left >= 4) x8_pass<F, 4>(ym, N, xq, m, W, n0, n1, bias, c), m += 4;
      else if (left >= 2) x8_pass<F, 2>(ym, N, xq, m, W, n0, n1, bias, c), m += 2;
      else x8_pass<F, 1>(ym, N, xq, m, W, n0, n1, bias, c), m += 1;
    }
  }
  free(mem);
  return true;
}
