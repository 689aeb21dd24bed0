// Prefill-shaped products (many rows of x) of affine 4 and 8-bit weights with 16-bit integer dot products
// (included by qkern_impl.h inside an ISA namespace after the f32 and bf16 GEMMs; no include guard on purpose).
//
// Why: the f32 GEMM decodes every weight to f32 and does 16 products per FMA; vpdpwssd does 32 per instruction,
// and affine weights are small integers already. x is put in 16-bit fixed point with one step per weight group
// and row (step = max|x| of the group / 32639), as the one-row x16 kernels do, so the sums inside a group are
// exact int32 and the only rounding is x's, at the precision the default decode path already has.
//
// Arithmetic: a weight s * q + b is stored in the panel as the odd integer 2q - (2^bits - 1) (centred, so that
// x's rounding errors are weighted by |q - c|, not by q), with per-group factors s / 2 and b + s * c (c the
// codes' centre); a group's dot is (s / 2) * step * sum(code * x16) + (b + s * c) * sum(x), the last sum exact
// f32. Bound: |y - y_exact| <= sum over groups of |s| * step / 2 * sum |q - c| (about 1e-5 of max|x| per
// weight). Ranges: |code| <= 255, |x16| <= 32639, 128 elements a group at most: every int32 sum fits.
//
// Layout: a panel of NB rows of W and KB columns is NB / TW sub-panels, each [KB / 2][TW] dwords, dword (p, c)
// holding the codes of elements 2p and 2p + 1 of row c (vpdpwssd multiplies and adds such pairs); beside it,
// per sub-panel and group, TW factors s / 2 and TW offsets b + s * c.

template <int F>
static constexpr bool gx16_format() {
  return V::L == 16 && (F == F_A4 || F == F_A8);
}

static inline bool gx16_takes(const WeightMat &W) {
  return (W.group == 32 || W.group == 64 || W.group == 128) && W.K % W.group == 0;
}

static constexpr int kGx16MaxGroupsPerSeg = KB / 32;

#if defined(__AVX512F__)
// Codes of row n, elements [k0, k0 + kl), as centred pairs (one dword per pair) into out[0, kl / 2).
template <int F>
static inline void gx16_row_codes(const WeightMat &W, int64_t n, int64_t k0, int kl, int32_t *out) {
  const uint8_t *row = W.w + n * W.row_bytes;
  if constexpr (F == F_A4) {
    const uint8_t *p = row + k0 / 2;
    const __m512i lo4 = _mm512_set1_epi32(15), centre = _mm512_set1_epi16(15);
    for (int i = 0; i < kl / 2; i += 16) {
      const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + i)));
      const __m512i v = _mm512_or_si512(_mm512_and_si512(d, lo4), _mm512_slli_epi32(_mm512_srli_epi32(d, 4), 16));
      _mm512_storeu_si512((void *)(out + i), _mm512_sub_epi16(_mm512_slli_epi16(v, 1), centre));
    }
  } else {
    const uint8_t *p = row + k0;
    const __m512i centre = _mm512_set1_epi16(255);
    for (int i = 0; i < kl; i += 32) {
      const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + i)));
      _mm512_storeu_si512((void *)(out + i / 2), _mm512_sub_epi16(_mm512_slli_epi16(v, 1), centre));
    }
  }
}

// The panel of rows [n0, n0 + nr) and columns [k0, k0 + kl), rows past nr zero (see the layout above).
template <int F>
static void gx16_pack(int32_t *bp, float *sv, float *bv, int32_t *rowbuf, RowCtx &c, const WeightMat &W, int64_t n0,
                      int nr, int64_t k0, int kl) {
  const int kp = kl / 2;
  const int64_t GS = W.group, g0 = k0 / GS, ng = kl / GS;
  constexpr float kCentre = (float)((1 << bits_of<F>()) - 1) * 0.5f;
  // rows 8 at a time into rowbuf (8 x kp dwords), then into the panel (see pack_panel)
  for (int r0 = 0; r0 < NB; r0 += 8) {
    for (int i = 0; i < 8; i++) {
      const int r = r0 + i, s = r / TW, col = r % TW;
      int32_t *codes = rowbuf + (int64_t)i * kp;
      float *svs = sv + (int64_t)s * kGx16MaxGroupsPerSeg * TW + col, *bvs = bv + (int64_t)s * kGx16MaxGroupsPerSeg * TW + col;
      if (r < nr) {
        gx16_row_codes<F>(W, n0 + r, k0, kl, codes);
        row_prep<F>(W, n0 + r, g0, g0 + ng, c);
        for (int64_t g = 0; g < ng; g++) {
          const float sc = c.sc[g0 + g], bi = c.bi[g0 + g];
          svs[g * TW] = 0.5f * sc;
          bvs[g * TW] = bi + sc * kCentre;
        }
      } else {
        for (int p = 0; p < kp; p++) codes[p] = 0;
        for (int64_t g = 0; g < ng; g++) svs[g * TW] = bvs[g * TW] = 0.f;
      }
    }
    panel_put8((const float *)rowbuf, kp, (float *)(bp + (int64_t)(r0 / TW) * kp * TW + r0 % TW));
  }
}

// Rows [m0, m1) of x into 16-bit pairs xq (K / 2 dwords a row), with each group's step and exact sum; false when
// x holds Inf or NaN (the f32 path keeps them).
static bool gx16_x(int32_t *xq, float *xst, float *xsm, const float *x, int64_t m0, int64_t m1, int64_t K, int64_t GS) {
  const int64_t NG = K / GS;
  __m256i bad = _mm256_setzero_si256();
  for (int64_t m = m0; m < m1; m++)
    for (int64_t g = 0; g < NG; g++) {
      const float *xg = x + m * K + g * GS;
      __m256 sum;
      const float amax = x_group_scan(xg, GS, sum, bad);
      const int64_t o = (m - m0) * NG + g;
      xst[o] = amax / kX16Max;
      xsm[o] = hsum8(sum);
      const __m512 inv = _mm512_set1_ps(amax > 0.f ? kX16Max / amax : 0.f);
      int16_t *q = (int16_t *)(xq + (m - m0) * (K / 2)) + g * GS;
      for (int64_t i = 0; i < GS; i += 16) {
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xg + i), inv));
        v = _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(-(int)kX16Max)), _mm512_set1_epi32((int)kX16Max));
        _mm256_storeu_si256((__m256i *)(q + i), _mm512_cvtepi32_epi16(v));
      }
    }
  return _mm256_testz_si256(bad, bad);
}

// acc += the pair products of a and b. Inline assembly: GCC 12 moves the accumulators of the intrinsic's loop
// through the stack on every step (it allocates vpdpwssd's tied operand badly), here they stay in registers.
static inline __m512i gx16_dp(__m512i acc, __m512i a, __m512i b) {
  if constexpr (V::kVnni) {
    asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
  } else {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
  }
}

#if defined(__AVX512VNNI__)
// One group's np pair steps of a 6-row micro-tile: acc[i][h] = the sums of row i (at xg + i * ldx dwords) with the
// sub-panel's columns 16h..16h+15 (bg, TW dwords a step). One statement with the loop inside: with gx16_dp a product
// a statement, GCC 12 still bounced an accumulator through another register twice a step (2 vector moves to 12
// products; such moves take the vector pipes' slots on Zen 5). Each x pair is broadcast once for its two products:
// as a broadcast operand of each product instead, the 512-row GEMM ran 0.84x.
#define RMLX_GX16_ROW(r, a0, a1) \
  "vpbroadcastd " r ", %[t]\n\tvpdpwssd %[t], %[b0], %[" a0 "]\n\tvpdpwssd %[t], %[b1], %[" a1 "]\n\t"
#define RMLX_GX16_ZERO(a) "vpxord %[" a "], %[" a "], %[" a "]\n\t"
static inline void gx16_group6(__m512i (&acc)[6][2], const int32_t *bg, const int32_t *xg, int64_t ldx, int64_t np) {
  const int32_t *x3 = xg + 3 * ldx;
  const int64_t ld = ldx * 4;
  __m512i b0, b1, t;
  asm(RMLX_GX16_ZERO("a00") RMLX_GX16_ZERO("a01") RMLX_GX16_ZERO("a10") RMLX_GX16_ZERO("a11") RMLX_GX16_ZERO("a20")
      RMLX_GX16_ZERO("a21") RMLX_GX16_ZERO("a30") RMLX_GX16_ZERO("a31") RMLX_GX16_ZERO("a40") RMLX_GX16_ZERO("a41")
      RMLX_GX16_ZERO("a50") RMLX_GX16_ZERO("a51")
      "1:\n\t"
      "vmovdqu64 (%[b]), %[b0]\n\t"
      "vmovdqu64 64(%[b]), %[b1]\n\t"
      RMLX_GX16_ROW("(%[x])", "a00", "a01") RMLX_GX16_ROW("(%[x],%[ld],1)", "a10", "a11")
      RMLX_GX16_ROW("(%[x],%[ld],2)", "a20", "a21") RMLX_GX16_ROW("(%[x3])", "a30", "a31")
      RMLX_GX16_ROW("(%[x],%[ld],4)", "a40", "a41") RMLX_GX16_ROW("(%[x3],%[ld],2)", "a50", "a51")
      "add %[step], %[b]\n\t"
      "add $4, %[x]\n\t"
      "add $4, %[x3]\n\t"
      "dec %[n]\n\t"
      "jnz 1b"
      : [a00] "=&v"(acc[0][0]), [a01] "=&v"(acc[0][1]), [a10] "=&v"(acc[1][0]), [a11] "=&v"(acc[1][1]),
        [a20] "=&v"(acc[2][0]), [a21] "=&v"(acc[2][1]), [a30] "=&v"(acc[3][0]), [a31] "=&v"(acc[3][1]),
        [a40] "=&v"(acc[4][0]), [a41] "=&v"(acc[4][1]), [a50] "=&v"(acc[5][0]), [a51] "=&v"(acc[5][1]),
        [b0] "=&v"(b0), [b1] "=&v"(b1), [t] "=&v"(t), [b] "+r"(bg), [x] "+r"(xg), [x3] "+r"(x3), [n] "+r"(np)
      : [ld] "r"(ld), [step] "i"(TW * 4)
      : "cc", "memory");
}
#undef RMLX_GX16_ZERO
#undef RMLX_GX16_ROW
#endif

// Rows of x a micro-tile: 6, so that the tile's 12 integer accumulators and its 12 f32 sums all stay in registers
// across the groups (with 12 rows the sums went through memory, and the accumulators with them, once a group).
static constexpr int kGx16Mr = 6;

// c[MRR, ncols] += the products of ng groups of GS columns: x pairs (row i at xq + i * ldx dwords), their steps
// and sums (row i at xst / xsm + i * ldg), and one sub-panel (bp, with its factors sv and offsets bv).
template <int MRR, int GS>
static void gx16_micro(const int32_t *xq, int64_t ldx, const float *xst, const float *xsm, int64_t ldg,
                       const int32_t *bp, const float *sv, const float *bv, int ng, float *c, int64_t ldc, int ncols) {
  const __mmask16 k0 = (__mmask16)(ncols >= 16 ? 0xffff : (1u << ncols) - 1);
  const __mmask16 k1 = (__mmask16)(ncols >= 32 ? 0xffff : ncols <= 16 ? 0 : (1u << (ncols - 16)) - 1);
  __m512 tot[MRR][2];
  for (int i = 0; i < MRR; i++) {
    tot[i][0] = _mm512_maskz_loadu_ps(k0, c + i * ldc);
    tot[i][1] = _mm512_maskz_loadu_ps(k1, c + i * ldc + 16);
  }
  for (int g = 0; g < ng; g++) {
    const int32_t *xg = xq + g * (GS / 2), *bg = bp + (int64_t)g * (GS / 2) * TW;
    __m512i acc[MRR][2];
#if defined(__AVX512VNNI__)
    if constexpr (MRR == 6) {
      gx16_group6(acc, bg, xg, ldx, GS / 2);
    } else
#endif
    {
      for (int i = 0; i < MRR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
      for (int p = 0; p < GS / 2; p++) {
        const __m512i b0 = _mm512_loadu_si512((const void *)(bg + p * TW));
        const __m512i b1 = _mm512_loadu_si512((const void *)(bg + p * TW + 16));
        for (int i = 0; i < MRR; i++) {
          const __m512i a = _mm512_set1_epi32(xg[i * ldx + p]);
          acc[i][0] = gx16_dp(acc[i][0], a, b0);
          acc[i][1] = gx16_dp(acc[i][1], a, b1);
        }
      }
    }
    const __m512 s0 = _mm512_loadu_ps(sv + g * TW), s1 = _mm512_loadu_ps(sv + g * TW + 16);
    const __m512 o0 = _mm512_loadu_ps(bv + g * TW), o1 = _mm512_loadu_ps(bv + g * TW + 16);
    for (int i = 0; i < MRR; i++) {
      const __m512 st = _mm512_set1_ps(xst[i * ldg + g]), sm = _mm512_set1_ps(xsm[i * ldg + g]);
      tot[i][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][0]), _mm512_mul_ps(s0, st), _mm512_fmadd_ps(o0, sm, tot[i][0]));
      tot[i][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][1]), _mm512_mul_ps(s1, st), _mm512_fmadd_ps(o1, sm, tot[i][1]));
    }
  }
  for (int i = 0; i < MRR; i++) {
    _mm512_mask_storeu_ps(c + i * ldc, k0, tot[i][0]);
    _mm512_mask_storeu_ps(c + i * ldc + 16, k1, tot[i][1]);
  }
}

template <int GS, int MRR = kGx16Mr>
static void gx16_micro_any(int mr, const int32_t *xq, int64_t ldx, const float *xst, const float *xsm, int64_t ldg,
                           const int32_t *bp, const float *sv, const float *bv, int ng, float *c, int64_t ldc,
                           int ncols) {
  if constexpr (MRR >= 1) {
    if (mr == MRR) return gx16_micro<MRR, GS>(xq, ldx, xst, xsm, ldg, bp, sv, bv, ng, c, ldc, ncols);
    gx16_micro_any<GS, MRR - 1>(mr, xq, ldx, xst, xsm, ldg, bp, sv, bv, ng, c, ldc, ncols);
  }
}

// Units [u0, u1) as gemm_units_f numbers them; returns the first unit not done (u1 when all are: an earlier one
// when memory is short or a block of x holds Inf or NaN, for the f32 path to finish).
template <int F, int GS>
static int64_t gemm_units_x16_g(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias,
                                int64_t mchunks, int64_t mlen, int64_t u0, int64_t u1) {
  const int64_t N = W.N, K = W.K, NG = W.groups, ldx = K / 2;
  constexpr int64_t SVN = (NB / TW) * kGx16MaxGroupsPerSeg * TW;
  int32_t *bp = (int32_t *)aligned_alloc(64, sizeof(int32_t) * (NB * KB / 2 + 8 * KB / 2) + sizeof(float) * 2 * SVN);
  float *ctxm = (float *)aligned_alloc(64, sizeof(float) * ((2 * NG + 15) & ~(int64_t)15));
  int32_t *xq = (int32_t *)aligned_alloc(
      64, ((sizeof(int32_t) * (size_t)(mlen * ldx) + sizeof(float) * 2 * (size_t)(mlen * NG)) + 63) & ~(size_t)63);
  int64_t u = u0;
  if (bp && ctxm && xq) {
    int32_t *rowbuf = bp + NB * KB / 2;
    float *sv = (float *)(rowbuf + 8 * KB / 2), *bv = sv + SVN;
    float *xst = (float *)(xq + mlen * ldx), *xsm = xst + mlen * NG;
    RowCtx c{ctxm, ctxm + NG, nullptr, __builtin_ctz((unsigned)GS), nullptr};
    int64_t xq_m0 = -1;  // the first row of x that xq holds
    for (; u < u1; u++) {
      const int64_t n0 = (u / mchunks) * NB, m0 = (u % mchunks) * mlen, m1 = m0 + mlen < M ? m0 + mlen : M;
      const int nr = (int)(N - n0 < NB ? N - n0 : NB);
      if (m0 != xq_m0) {
        if (!gx16_x(xq, xst, xsm, x, m0, m1, K, GS)) break;
        xq_m0 = m0;
      }
      for (int64_t m = m0; m < m1; m++)
        for (int j = 0; j < nr; j++) y[m * N + n0 + j] = bias ? bias[n0 + j] : 0.f;
      for (int64_t k0 = 0; k0 < K; k0 += KB) {
        const int kl = (int)(K - k0 < KB ? K - k0 : KB), kp = kl / 2, ng = (int)(kl / GS);
        gx16_pack<F>(bp, sv, bv, rowbuf, c, W, n0, nr, k0, kl);
        for (int64_t m = m0; m < m1; m += kGx16Mr) {
          const int mr = (int)(m1 - m < kGx16Mr ? m1 - m : kGx16Mr);
          const int64_t xo = (m - m0) * ldx + k0 / 2, go = (m - m0) * NG + k0 / GS;
          for (int s = 0; s * TW < nr; s++) {
            const int nc = nr - s * TW < TW ? nr - s * TW : TW;
            const int64_t so = (int64_t)s * kGx16MaxGroupsPerSeg * TW;
            gx16_micro_any<GS>(mr, xq + xo, ldx, xst + go, xsm + go, NG, bp + (int64_t)s * kp * TW, sv + so,
                               bv + so, ng, y + m * N + n0 + s * TW, N, nc);
          }
        }
      }
    }
  }
  free(bp);
  free(ctxm);
  free(xq);
  return u;
}

template <int F>
static int64_t gemm_units_x16(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias,
                              int64_t mchunks, int64_t mlen, int64_t u0, int64_t u1) {
  switch (W.group) {
    case 32: return gemm_units_x16_g<F, 32>(y, x, M, W, bias, mchunks, mlen, u0, u1);
    case 64: return gemm_units_x16_g<F, 64>(y, x, M, W, bias, mchunks, mlen, u0, u1);
    default: return gemm_units_x16_g<F, 128>(y, x, M, W, bias, mchunks, mlen, u0, u1);
  }
}
#endif
