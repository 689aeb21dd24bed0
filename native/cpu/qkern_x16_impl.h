// Decode-shaped products of affine (2-8 bit), mxfp4 and nvfp4 weights with integer dot products (included by
// qkern_impl.h inside an ISA namespace; no include guard on purpose).
//
// Why: with x in f32 every weight costs a widening, a conversion and an FMA, and on 2 cores that kept 4-bit
// decode near 15 GB/s however the decoders were arranged (compute-bound, not memory-bound). Here x is first
// put in 16-bit fixed point with one step per weight group (step = max|x| of the group / 32639; nvfp4: per 32
// elements), weights stay integers, and vpmaddwd (vpmaddubsw for fp4) does 16 products and half their
// additions per instruction. The sum inside a group is an exact int32; groups meet in f32 after their scale,
// as on the f32 path.
//
// Error: each x differs from its 16-bit value by at most half a step, so |y - y_f32| <= sum over groups of
// step/2 * sum |code - centre| * |scale| (about 1.5e-5 of max|x| per weight), far under the bf16 rounding MLX
// applies to activations on the GPU. rmlx_set_gemv_mode("f32") or RMLX_GEMV=f32 keeps the exact f32 path.

template <int F>
static constexpr bool x16_format() {
  return is_affine<F>() || F == F_FP4;
}

// Affine widths whose codes straddle bytes (3, 5, 6 bits): 16 codes (2 * bits bytes) per step, in x's natural
// order (see x16_odd_codes).
template <int F>
static constexpr bool x16_odd() {
  return F == F_A3 || F == F_A5 || F == F_A6;
}

// The largest 16-bit value of x: below 32767 so that mxfp4's byte planes (x = 256 xh + xl, both signed bytes)
// hold every value.
static constexpr float kX16Max = 32639.f;

// fp4 rows of whole 128-element blocks take 512-bit steps where the ISA has them (128 elements per step).
static inline bool x16_fp4_wide(const WeightMat &W) { return V::L == 16 && W.K % 128 == 0; }

// Affine 2, 4 and 8-bit rows take 512-bit steps where the ISA has them (x16_affine_rows_wide). A step is 64
// bytes; its four 128-bit chunks are the unit of layout (16 bytes: 16 * CPB elements, CPB codes a byte, never
// more than one group). Where a group spans two or more chunks, two steps form one unit: their chunks are
// exchanged (vshufi64x2) so that each 128-bit lane holds chunks of a single group in both steps.
template <int F>
static constexpr int x16_cpb() {
  return 8 / (int)bits_of<F>();
}
template <int F>
static constexpr bool x16_wide_format() {
  return V::L == 16 && (F == F_A2 || F == F_A4 || F == F_A8);
}
// Steps a unit for groups of GS: two where a group spans two chunks or more.
template <int F>
static constexpr int x16_wide_steps(int64_t GS) {
  return GS / (16 * x16_cpb<F>()) >= 2 ? 2 : 1;
}
template <int F>
static inline bool x16_affine_wide(const WeightMat &W) {
  if constexpr (!x16_wide_format<F>()) return false;
  else return W.K % (64 * x16_cpb<F>() * x16_wide_steps<F>(W.group)) == 0;
}

// Which chunk (of the unit's 4 * U in memory order) step s' of a unit puts in its lane k: a group spans LPG
// chunks, and the lane must keep one group over both steps.
static constexpr int x16_wide_chunk(int lpg, int s, int k) {
  if (lpg == 2) return 2 * k + s;                   // groups of chunks {0,1} {2,3} {4,5} {6,7}: lane k, group k
  if (lpg == 4) return (k >> 1) * 4 + 2 * s + (k & 1);  // {0-3} {4-7}: lanes 0-1 group 0, lanes 2-3 group 1
  return 4 * s + k;                                 // one chunk a group (U = 1), or one group a unit
}

// A row of x16 in natural order -> the order of x16_affine_rows_wide: per unit (U steps), per step s', word
// vector v = 2j + h (code j of the bytes, h: the low or high 8 bytes of each 128-bit lane, as vpunpcklbw /
// vpunpckhbw take them), word 8k + i of it = the element of byte 8h + i of chunk x16_wide_chunk(s', k), code j.
template <int CPB, int LPG, int U>
static void x16_wide_order(int16_t *q, int64_t K) {
  constexpr int SE = 64 * CPB, UE = U * SE;
  struct Idx {
    int16_t src[UE];
  };
  static constexpr Idx t = [] {
    Idx r{};
    for (int st = 0; st < U; st++)
      for (int v = 0; v < 2 * CPB; v++)
        for (int w = 0; w < 32; w++) {
          int j = v >> 1, h = v & 1, k = w >> 3, i = w & 7;
          int chunk = x16_wide_chunk(LPG, st, k);
          r.src[st * SE + v * 32 + w] = (int16_t)((16 * chunk + 8 * h + i) * CPB + j);
        }
    return r;
  }();
  alignas(64) int16_t tmp[UE];
  for (int64_t b = 0; b < K; b += UE) {
    std::memcpy(tmp, q + b, sizeof tmp);
    for (int e = 0; e < UE; e++) q[b + e] = tmp[t.src[e]];
  }
}

template <int F>
static void x16_wide_order_for(int16_t *q, const WeightMat &W) {
  constexpr int CPB = x16_cpb<F>();
  const int64_t lpg = W.group / (16 * CPB);
  if (lpg == 1) x16_wide_order<CPB, 1, 1>(q, W.K);
  else if (lpg == 2) x16_wide_order<CPB, 2, 2>(q, W.K);
  else if (lpg == 4) x16_wide_order<CPB, 4, 2>(q, W.K);
  else x16_wide_order<CPB, 8, 2>(q, W.K);
}

// 4-bit rows on AVX512-VNNI skip the widening of codes to words: each step's x (in the order above) becomes byte
// planes, x = 256 h + l with l the signed low byte (|x| <= 32639 keeps h within a signed byte), and vpdpbusd
// multiplies the code bytes (unsigned) with each plane. Per step and code j: 64 bytes of h, then 64 of l, byte
// 16k + i the element of weight byte i of lane k's chunk: vpacksswb of the two word vectors 2j and 2j + 1 puts
// bytes 0-7 and 8-15 of each 128-bit lane in that order.
template <int F>
static constexpr bool x16_planes() {
  return F == F_A4 && V::L == 16 && V::kVnni;
}

#if defined(__AVX512BW__)
static void x16_a4_planes(int16_t *q, int64_t K) {
  for (int64_t b = 0; b < K; b += 128) {
    __m512i *p = (__m512i *)(q + b), v[4];
    for (int i = 0; i < 4; i++) v[i] = _mm512_loadu_si512((const void *)(p + i));
    for (int j = 0; j < 2; j++) {
      const __m512i la = _mm512_srai_epi16(_mm512_slli_epi16(v[2 * j], 8), 8);
      const __m512i lb = _mm512_srai_epi16(_mm512_slli_epi16(v[2 * j + 1], 8), 8);
      const __m512i ha = _mm512_srai_epi16(_mm512_sub_epi16(v[2 * j], la), 8);
      const __m512i hb = _mm512_srai_epi16(_mm512_sub_epi16(v[2 * j + 1], lb), 8);
      _mm512_storeu_si512((void *)(p + 2 * j), _mm512_packs_epi16(ha, hb));
      _mm512_storeu_si512((void *)(p + 2 * j + 1), _mm512_packs_epi16(la, lb));
    }
  }
}
#endif

// fp4 codes as small integers: 2 * E2M1 value + 12 (0..24, unsigned bytes for vpmaddubsw); the 12 is taken
// back through the group sums of x16.
static constexpr int kFp4Offset = 12;

struct X16 {
  int16_t *q;    // [M][K] in the kernels' order (see x16_prepare)
  float *step;   // [M][groups]: the factor from an integer sum to y (step, or step / 2 for fp4)
  float *fix;    // [M][groups]: affine: sum of x (for biases); fp4: 6 * step * sum of q (for the offset)
  float *err;    // [M][groups]: affine: -c * sum of (q * step - x), the group's rounding error times minus the
                 // codes' centre c (see x16_affine_rows)
};

// Natural-order 16-bit values of 32 elements (4 vectors of 8) -> two vectors of 16, ready for the layout.
static inline void x16_pack32(__m256i i0, __m256i i1, __m256i i2, __m256i i3, __m256i &a, __m256i &b) {
  a = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8);
  b = _mm256_permute4x64_epi64(_mm256_packs_epi32(i2, i3), 0xD8);
}

// 16 natural values of each of a (x[0..15]) and b (x[16..31]) -> lo = even elements, hi = odd elements.
static inline void x16_deinterleave(__m256i a, __m256i b, __m256i &lo, __m256i &hi) {
  const __m256i eo = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
  a = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(a, eo), 0xD8);
  b = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(b, eo), 0xD8);
  lo = _mm256_permute2x128_si256(a, b, 0x20);
  hi = _mm256_permute2x128_si256(a, b, 0x31);
}

// Rewrites each 64-element block of a row of x16 in the 4-bit order [even0 odd0 even1 odd1] (16 values each)
// through fn, which returns the block's four new vectors.
template <typename Fn>
static inline void x16_regroup64(int16_t *q, int64_t K, Fn fn) {
  for (int64_t i = 0; i < K; i += 64) {
    __m256i *p = (__m256i *)(q + i), out[4];
    fn(_mm256_loadu_si256(p), _mm256_loadu_si256(p + 1), _mm256_loadu_si256(p + 2), _mm256_loadu_si256(p + 3), out);
    for (int j = 0; j < 4; j++) _mm256_storeu_si256(p + j, out[j]);
  }
}

// One group of x (G a multiple of 8) as both activation quantizers read it: its largest |x| (returned), its sum,
// and any Inf or NaN lane or-ed into `bad`.
static inline float x_group_scan(const float *xg, int64_t G, __m256 &sum, __m256i &bad) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i expmask = _mm256_set1_epi32(0x7f800000);
  __m256 mx = _mm256_setzero_ps();
  sum = _mm256_setzero_ps();
  for (int64_t i = 0; i < G; i += 8) {
    __m256 v = _mm256_loadu_ps(xg + i);
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(v), expmask), expmask));
    mx = _mm256_max_ps(mx, _mm256_and_ps(v, absmask));
    sum = _mm256_add_ps(sum, v);
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

// Quantizes M rows of x for W's groups into X16; false when x holds Inf or NaN (the f32 path keeps them).
// Orders: 8, 3, 5 and 6-bit natural; 4-bit, per 32 elements, the 16 even ones then the 16 odd ones (low and
// high nibbles of 16 bytes); 2-bit, per 64 elements, the four codes of 16 bytes; fp4, per 64 (or, for 512-bit
// steps, 128) elements, byte planes.
template <int F>
static bool x16_prepare(const float *x, int64_t M, const WeightMat &W, X16 &o) {
  const int64_t K = W.K, WG = W.group, NG = W.groups;
  // x's own groups: nvfp4's 16-element weight groups share one step per 32 elements of x
  const int64_t G = WG < 32 ? 32 : WG, NXG = K / G, SUB = G / WG;
  constexpr float kCentre = (float)((1ll << bits_of<F>()) - 1) * 0.5f;  // affine (see x16_affine_rows)
  __m256i bad = _mm256_setzero_si256();
  for (int64_t m = 0; m < M; m++) {
    const float *xm = x + m * K;
    int16_t *qm = o.q + m * K;
    for (int64_t g = 0; g < NXG; g++) {
      const float *xg = xm + g * G;
      __m256 sum;
      float amax = x_group_scan(xg, G, sum, bad);
      float step = amax / kX16Max;
      __m256 inv = _mm256_set1_ps(amax > 0.f ? kX16Max / amax : 0.f);
      int16_t *qg = qm + g * G;
      __m256i qsum = _mm256_setzero_si256(), qhalf = _mm256_setzero_si256();  // qhalf: the first 16 (nvfp4)
      __m256 err = _mm256_setzero_ps(), vstep = _mm256_set1_ps(step);
      for (int64_t i = 0; i < G; i += 32) {
        __m256i r[4];
        for (int j = 0; j < 4; j++) {
          __m256 v = _mm256_loadu_ps(xg + i + 8 * j);
          r[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv));
          r[j] = _mm256_min_epi32(r[j], _mm256_set1_epi32((int)kX16Max));  // amax * (max / amax) may round past
          qsum = _mm256_add_epi32(qsum, r[j]);
          if (j == 1) qhalf = qsum;
          err = _mm256_add_ps(err, _mm256_fmsub_ps(_mm256_cvtepi32_ps(r[j]), vstep, v));
        }
        __m256i a, b;
        x16_pack32(r[0], r[1], r[2], r[3], a, b);
        if constexpr (F == F_A2 || F == F_A4 || F == F_FP4)
          if (!x16_affine_wide<F>(W)) x16_deinterleave(a, b, a, b);
        _mm256_storeu_si256((__m256i *)(qg + i), a);
        _mm256_storeu_si256((__m256i *)(qg + i + 16), b);
      }
      float *st = o.step + m * NG + g * SUB, *fx = o.fix + m * NG + g * SUB;
      if constexpr (F == F_FP4) {
        auto isum = [](__m256i v) {
          __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
          s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
          s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
          return (float)_mm_cvtsi128_si32(s4);
        };
        const float k = 0.5f * kFp4Offset * step;
        if (SUB == 2) {
          float first = isum(qhalf);
          st[0] = st[1] = step * 0.5f;
          fx[0] = k * first;
          fx[1] = k * (isum(qsum) - first);
        } else {
          *st = step * 0.5f;
          *fx = k * isum(qsum);
        }
      } else {
        *st = step;
        *fx = hsum8(sum);
        o.err[m * NG + g] = -kCentre * hsum8(err);
      }
    }
    if constexpr (x16_wide_format<F>()) {
      if (x16_affine_wide<F>(W)) {
        x16_wide_order_for<F>(qm, W);
#if defined(__AVX512BW__)
        if constexpr (x16_planes<F>()) x16_a4_planes(qm, K);
#endif
        continue;
      }
    }
    if constexpr (F == F_A2) {
      // from the 4-bit order of each 64-element block to the element 4j + c for c = 0..3 (the four 2-bit codes
      // of 16 bytes): the evens of the evens, of the odds, and so on
      x16_regroup64(qm, K, [](__m256i e0, __m256i o0, __m256i e1, __m256i o1, __m256i out[4]) {
        x16_deinterleave(e0, e1, out[0], out[2]);
        x16_deinterleave(o0, o1, out[1], out[3]);
      });
    }
    if constexpr (F == F_FP4) {
      // from the 4-bit order of each 64-element block to byte planes [high bytes of the 32 even | of the 32 odd |
      // low bytes of the even | of the odd]: x = 256 h + l with l the signed low byte, so that each plane is
      // signed bytes for vpmaddubsw (see x16_fp4_rows)
      x16_regroup64(qm, K, [](__m256i e0, __m256i o0, __m256i e1, __m256i o1, __m256i out[4]) {
        auto planes = [](__m256i a, __m256i b, __m256i &h, __m256i &l) {
          const __m256i lowbyte = _mm256_set1_epi16(0xff);
          __m256i la = _mm256_srai_epi16(_mm256_slli_epi16(a, 8), 8), lb = _mm256_srai_epi16(_mm256_slli_epi16(b, 8), 8);
          __m256i ha = _mm256_srai_epi16(_mm256_sub_epi16(a, la), 8), hb = _mm256_srai_epi16(_mm256_sub_epi16(b, lb), 8);
          h = _mm256_permute4x64_epi64(_mm256_packs_epi16(ha, hb), 0xD8);
          l = _mm256_permute4x64_epi64(
              _mm256_packus_epi16(_mm256_and_si256(a, lowbyte), _mm256_and_si256(b, lowbyte)), 0xD8);
        };
        planes(e0, e1, out[0], out[2]);
        planes(o0, o1, out[1], out[3]);
      });
      if (x16_fp4_wide(W)) {
        // 128-element blocks for 512-bit steps: each plane of the two 64-element halves side by side
        for (int64_t i = 0; i < K; i += 128) {
          __m256i *p = (__m256i *)(qm + i), t[8];
          for (int j = 0; j < 8; j++) t[j] = _mm256_loadu_si256(p + j);
          for (int j = 0; j < 4; j++) {
            _mm256_storeu_si256(p + 2 * j, t[j]);
            _mm256_storeu_si256(p + 2 * j + 1, t[4 + j]);
          }
        }
      }
    }
  }
  return _mm256_testz_si256(bad, bad);
}

static inline __m256i x16_mad(__m256i w, const int16_t *x) {
  return _mm256_madd_epi16(w, _mm256_loadu_si256((const __m256i *)x));
}

// acc + the pairwise products of w and x: one vpdpwssd where the ISA has VNNI.
static inline __m256i x16_mad_add(__m256i acc, __m256i w, const int16_t *x) {
  if constexpr (V::kVnni) return _mm256_dpwssd_epi32(acc, w, _mm256_loadu_si256((const __m256i *)x));
  else return _mm256_add_epi32(acc, x16_mad(w, x));
}

// sc[g] * step[m][g] for every group, MR rows of x: the factor of each group's integer sum.
template <int MR>
static inline void x16_scales(const float *sc, const X16 &xq, int64_t m0, int64_t NG, int64_t g0, int64_t g1,
                              float *out) {
  for (int m = 0; m < MR; m++) {
    const float *st = xq.step + (m0 + m) * NG;
    float *o = out + m * NG;
    int64_t g = g0;
    for (; g + 8 <= g1; g += 8) _mm256_storeu_ps(o + g, _mm256_mul_ps(_mm256_loadu_ps(sc + g), _mm256_loadu_ps(st + g)));
    for (; g < g1; g++) o[g] = sc[g] * st[g];
  }
}

// The row's result for groups [g0, g1): the first block of groups writes it with the layer's bias, later
// blocks add to it.
static inline void x16_put(float *o, float r, int64_t g0, const float *bias, int64_t n) {
  *o = g0 == 0 ? r + (bias ? bias[n] : 0.f) : *o + r;
}

// 16 codes of BITS (3, 5 or 6) from the 2 * BITS bytes at p, one per int16 lane in order. Every code lies within
// the two bytes at its first bit, so a byte shuffle puts those two bytes in its lane (the 16 bytes are in both
// 128-bit halves), a multiply by 2^(16 - BITS - offset) moves the code to the lane's top bits and a shift
// brings it down: AVX2 has no per-lane 16-bit shift. `last` is where the weights end: a read of 16 bytes that
// would pass it goes through a copy.
template <int BITS>
static inline __m256i x16_odd_codes(const uint8_t *p, const uint8_t *last) {
  struct Tables {
    int8_t shuf[32];
    int16_t mul[16];
  };
  static constexpr Tables t = [] {
    Tables r{};
    for (int j = 0; j < 16; j++) {
      int bit = j * BITS, byte = bit >> 3, off = bit & 7, lane = j & 7;
      r.shuf[(j >> 3) * 16 + 2 * lane] = (int8_t)byte;
      r.shuf[(j >> 3) * 16 + 2 * lane + 1] = (int8_t)(byte + 1);
      r.mul[j] = (int16_t)(1 << (16 - BITS - off));
    }
    return r;
  }();
  __m128i b;
  if (p + 16 <= last) {
    b = _mm_loadu_si128((const __m128i *)p);
  } else {
    alignas(16) uint8_t tmp[16] = {};
    std::memcpy(tmp, p, 2 * BITS);
    b = _mm_load_si128((const __m128i *)tmp);
  }
  __m256i v = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(b), _mm256_loadu_si256((const __m256i *)t.shuf));
  return _mm256_srli_epi16(_mm256_mullo_epi16(v, _mm256_loadu_si256((const __m256i *)t.mul)), 16 - BITS);
}

// Affine weights: MR rows of x (from row m0) against W's rows [n0, n1), groups of GS weights. The rounding
// errors e of x meet the codes q in s * sum(q e); codes centred on c = (2^bits - 1) / 2 would halve that, and
// s * sum((q - c) e) = s * sum(q e) - c * s * sum(e) moves the centring out of the loop: the row adds
// scales . (-c * group sums of e), which x16_prepare stores.
template <int F, int MR, int GS>
static void x16_affine_rows(float *y, int64_t ldy, const X16 &xq, int64_t m0, const WeightMat &W, int64_t n0,
                            int64_t n1, const float *bias, RowCtx &c, int64_t g0, int64_t g1) {
  const int64_t K = W.K, NG = W.groups;
  constexpr int BITS = (int)bits_of<F>();
  constexpr int CH = x16_odd<F>() ? 16 : 128 / BITS;  // weights per chunk (16 bytes, or 2 * BITS bytes)
  constexpr int CB = CH * BITS / 8;                   // bytes per chunk
  constexpr int NCH = GS / CH;                        // chunks per group
  constexpr int GB = GS * BITS / 8;                   // bytes per group
  static_assert(NCH >= 1, "a group holds whole 16-byte chunks");
  const __m256i low4 = _mm256_set1_epi16(15), low2 = _mm256_set1_epi16(3);
  float *scm = c.buf;
  const uint8_t *last = W.w + W.N * W.row_bytes;
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t *p = W.w + n * W.row_bytes + g0 * GB;
    row_prep<F>(W, n, g0, g1, c);
    x16_scales<MR>(c.sc, xq, m0, NG, g0, g1, scm);
    __m256 tot[MR];
    for (int m = 0; m < MR; m++) tot[m] = _mm256_setzero_ps();
    const int16_t *xg = xq.q + m0 * K + g0 * GS;
    for (int64_t g = g0; g < g1; g++, xg += GS, p += GB) {
      if constexpr (GB >= 64) {
        for (int o = 0; o < GB; o += 64) prefetch_ahead(p + o);
      } else {
        if (((g * GB) & 63) < GB) prefetch_ahead(p);  // the group starts the row's next 64 bytes
      }
      __m256i acc[MR];
      for (int j = 0; j < NCH; j++) {
        __m256i v;
        if constexpr (x16_odd<F>()) v = x16_odd_codes<BITS>(p + CB * j, last);
        else v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p + CB * j)));
        if constexpr (V::kVnni) {
          // one accumulating instruction per 16 products
          if (j == 0)
            for (int m = 0; m < MR; m++) acc[m] = _mm256_setzero_si256();
          if constexpr (F == F_A8 || x16_odd<F>()) {
            for (int m = 0; m < MR; m++) acc[m] = x16_mad_add(acc[m], v, xg + m * K + CH * j);
          } else if constexpr (F == F_A4) {
            __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_srli_epi16(v, 4);
            for (int m = 0; m < MR; m++) {
              const int16_t *xe = xg + m * K + CH * j;
              acc[m] = x16_mad_add(x16_mad_add(acc[m], lo, xe), hi, xe + 16);
            }
          } else {
            __m256i c0 = _mm256_and_si256(v, low2), c1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), low2);
            __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low2), c3 = _mm256_srli_epi16(v, 6);
            for (int m = 0; m < MR; m++) {
              const int16_t *xe = xg + m * K + CH * j;
              acc[m] = x16_mad_add(x16_mad_add(acc[m], c0, xe), c1, xe + 16);
              acc[m] = x16_mad_add(x16_mad_add(acc[m], c2, xe + 32), c3, xe + 48);
            }
          }
        } else if constexpr (F == F_A8 || x16_odd<F>()) {
          // Without VNNI a chunk's products meet in a tree before joining acc: one chain of adds through
          // x16_mad_add, as above, measured 5% slower for 4-bit.
          for (int m = 0; m < MR; m++) {
            __m256i t = x16_mad(v, xg + m * K + CH * j);
            acc[m] = j == 0 ? t : _mm256_add_epi32(acc[m], t);
          }
        } else if constexpr (F == F_A4) {
          __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_srli_epi16(v, 4);
          for (int m = 0; m < MR; m++) {
            const int16_t *xe = xg + m * K + CH * j;
            __m256i t = _mm256_add_epi32(x16_mad(lo, xe), x16_mad(hi, xe + 16));
            acc[m] = j == 0 ? t : _mm256_add_epi32(acc[m], t);
          }
        } else {
          __m256i c0 = _mm256_and_si256(v, low2), c1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), low2);
          __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low2), c3 = _mm256_srli_epi16(v, 6);
          for (int m = 0; m < MR; m++) {
            const int16_t *xe = xg + m * K + CH * j;
            __m256i t = _mm256_add_epi32(_mm256_add_epi32(x16_mad(c0, xe), x16_mad(c1, xe + 16)),
                                         _mm256_add_epi32(x16_mad(c2, xe + 32), x16_mad(c3, xe + 48)));
            acc[m] = j == 0 ? t : _mm256_add_epi32(acc[m], t);
          }
        }
      }
      for (int m = 0; m < MR; m++)
        tot[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m]), _mm256_broadcast_ss(scm + m * NG + g), tot[m]);
    }
    for (int m = 0; m < MR; m++) {
      const float *fx = xq.fix + (m0 + m) * NG, *er = xq.err + (m0 + m) * NG;
      float r = hsum8(tot[m]) + dot_range(c.bi, fx, g0, g1) + dot_range(c.sc, er, g0, g1);
      x16_put(y + m * ldy + n, r, g0, bias, n);
    }
  }
}

#if defined(__AVX512F__)
// Scales or biases of GPU (1, 2 or 4) consecutive groups from index i, bf16 or f16 (half), as the low lanes of a
// vector (lanes past GPU are zero).
template <int GPU>
static inline __m128 x16_sb(const void *base, int64_t i, bool half) {
  const uint16_t *p = (const uint16_t *)base + i;
  __m128i v;
  if constexpr (GPU == 4) v = _mm_loadl_epi64((const __m128i *)p);
  else if constexpr (GPU == 2) v = _mm_cvtsi32_si128((int)ld32((const uint8_t *)p));
  else v = _mm_cvtsi32_si128(*p);
  return half ? _mm_cvtph_ps(v) : _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(v), 16));
}

// GPU floats from p as the low lanes of a vector (the rest zero).
template <int GPU>
static inline __m128 x16_f4(const float *p) {
  if constexpr (GPU == 4) return _mm_loadu_ps(p);
  else if constexpr (GPU == 2) return _mm_castpd_ps(_mm_load_sd((const double *)p));
  else return _mm_load_ss(p);
}

#endif

// The same for 2, 4 and 8-bit codes with 512-bit vectors (AVX-512 only: instantiated where V is 16 lanes wide),
// rows of whole units (x16_affine_wide). A step's bytes are split into their codes (4-bit with VNNI: multiplied as
// bytes with x's byte planes, see x16_planes) and widened to words with
// vpunpcklbw / vpunpckhbw against zero, which keep each 128-bit lane's bytes in that lane, so int32 lane 4k + i of
// every product sums elements of the chunks in lane k only, one group (x16_wide_chunk). One integer accumulator
// thus serves a unit's groups (up to four) at once, and its conversion and the FMA with the groups' factors are
// paid once a unit instead of once a group. The unpacked codes serve MR rows of x: a batch pays the decode once
// a step, then 2 * CPB vpdpwssd a row. The biases' and the centring's terms join the same accumulators.
// NR rows of W at once (1, or 2 for 3 or 4 rows of x and 4 or 8-bit codes, where the registers hold both rows'
// codes): each load of x then feeds NR products (see x16_affine_wide_rows for when). c.buf holds 8 * NG
// factors, then the second row's scales and biases (x16_tiles).
//
// INL (few rows of x, scales and biases in bf16 or f16): a unit's scales and biases are read and converted where
// the unit is, instead of each row first writing its factors to c.buf and the terms of the biases and the
// centring being summed after the row: at 1024-element rows (every product of a 0.6B model's hidden size) those
// per-row passes, and one horizontal sum per row, cost about as much as the row's dot products.
template <int F, int MR, int GS, int NR, bool INL>
static void x16_affine_rows_wide(float *y, int64_t ldy, const X16 &xq, int64_t m0, const WeightMat &W, int64_t n0,
                                 int64_t n1, const float *bias, RowCtx &c0, int64_t g0, int64_t g1) {
  constexpr int BITS = (int)bits_of<F>(), CPB = x16_cpb<F>(), SE = 64 * CPB, NV = 2 * CPB;
  constexpr int LPG = GS / (16 * CPB);  // chunks a group
  constexpr int U = x16_wide_steps<F>(GS), UE = U * SE;
  constexpr int GPU = UE / GS;          // groups a unit
  static_assert(NR == 1 || MR * NR <= 8, "the second row's factors follow the first's in c.buf");
  const int64_t K = W.K, NG = W.groups;
  const bool half = W.sb_dtype == RMLX_F16;
  const __m512i z = _mm512_setzero_si512(), mask = _mm512_set1_epi8((char)((1 << BITS) - 1));
  const __m512i quarters = GPU == 4   ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                           : GPU == 2 ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                                      : _mm512_setzero_si512();
  RowCtx cs[NR] = {c0};
  if constexpr (NR == 2) cs[1] = RowCtx{c0.buf + 8 * NG, c0.buf + 9 * NG, c0.buf + MR * NG, c0.gshift, nullptr};
  for (int64_t n = n0; n < n1; n += NR) {
    const uint8_t *p[NR];
    __m512 tot[NR][MR];
    __m128 corr[NR][MR];
    for (int r = 0; r < NR; r++) {
      p[r] = W.w + (n + r) * W.row_bytes + g0 * GS * BITS / 8;
      if constexpr (!INL) {
        row_prep<F>(W, n + r, g0, g1, cs[r]);
        x16_scales<MR>(cs[r].sc, xq, m0, NG, g0, g1, cs[r].buf);
      }
      for (int m = 0; m < MR; m++) tot[r][m] = _mm512_setzero_ps(), corr[r][m] = _mm_setzero_ps();
    }
    const int16_t *xg = xq.q + m0 * K + g0 * GS;
    for (int64_t g = g0; g < g1; g += GPU, xg += UE) {
      __m512i st[NR][U];
      for (int r = 0; r < NR; r++, p[r - 1] += 64 * U) {
        prefetch_ahead(p[r]);
        if constexpr (U == 2) prefetch_ahead(p[r] + 64);
        if constexpr (U == 1) {
          st[r][0] = _mm512_loadu_si512((const void *)p[r]);
        } else {
          const __m512i a = _mm512_loadu_si512((const void *)p[r]), b = _mm512_loadu_si512((const void *)(p[r] + 64));
          if constexpr (LPG == 2) {
            st[r][0] = _mm512_shuffle_i64x2(a, b, 0x88);  // chunks 0 2 4 6
            st[r][1] = _mm512_shuffle_i64x2(a, b, 0xDD);  // chunks 1 3 5 7
          } else if constexpr (LPG == 4) {
            st[r][0] = _mm512_shuffle_i64x2(a, b, 0x44);  // chunks 0 1 4 5
            st[r][1] = _mm512_shuffle_i64x2(a, b, 0xEE);  // chunks 2 3 6 7
          } else {
            st[r][0] = a, st[r][1] = b;
          }
        }
      }
      __m512i acc[NR][MR];
      if constexpr (x16_planes<F>()) {
        __m512i ah[NR][MR], al[NR][MR];
        for (int s = 0; s < U; s++) {
          __m512i w[NR][2];
          for (int r = 0; r < NR; r++) {
            w[r][0] = _mm512_and_si512(st[r][s], mask);
            w[r][1] = _mm512_and_si512(_mm512_srli_epi16(st[r][s], 4), mask);
          }
          for (int m = 0; m < MR; m++) {
            const int8_t *xb = (const int8_t *)(xg + m * K + s * SE);
            for (int j = 0; j < 2; j++) {
              const __m512i xh = _mm512_loadu_si512((const void *)(xb + 128 * j));
              const __m512i xl = _mm512_loadu_si512((const void *)(xb + 128 * j + 64));
              for (int r = 0; r < NR; r++) {
                if (s == 0 && j == 0) ah[r][m] = al[r][m] = z;
                ah[r][m] = _mm512_dpbusd_epi32(ah[r][m], w[r][j], xh);
                al[r][m] = _mm512_dpbusd_epi32(al[r][m], w[r][j], xl);
              }
            }
          }
        }
        for (int r = 0; r < NR; r++)
          for (int m = 0; m < MR; m++) acc[r][m] = _mm512_add_epi32(_mm512_slli_epi32(ah[r][m], 8), al[r][m]);
      } else {
        for (int s = 0; s < U; s++) {
          __m512i w[NR][NV];
          for (int r = 0; r < NR; r++)
            for (int j = 0; j < CPB; j++) {
              __m512i cj = j == 0 ? st[r][s] : _mm512_srli_epi16(st[r][s], BITS * j);
              if constexpr (BITS < 8) cj = _mm512_and_si512(cj, mask);
              w[r][2 * j] = _mm512_unpacklo_epi8(cj, z);
              w[r][2 * j + 1] = _mm512_unpackhi_epi8(cj, z);
            }
          for (int m = 0; m < MR; m++) {
            const int16_t *xe = xg + m * K + s * SE;
            for (int i = 0; i < NV; i++) {
              const __m512i xv = _mm512_loadu_si512((const void *)(xe + 32 * i));
              for (int r = 0; r < NR; r++) {
                if (s == 0 && i == 0) acc[r][m] = _mm512_madd_epi16(w[r][i], xv);
                else if constexpr (V::kVnni) acc[r][m] = _mm512_dpwssd_epi32(acc[r][m], w[r][i], xv);
                else acc[r][m] = _mm512_add_epi32(acc[r][m], _mm512_madd_epi16(w[r][i], xv));
              }
            }
          }
        }
      }
      if constexpr (INL) {
        for (int r = 0; r < NR; r++) {
          const int64_t i = (n + r) * NG + g;
          const __m128 sc = x16_sb<GPU>(W.scales, i, half), bi = x16_sb<GPU>(W.biases, i, half);
          for (int m = 0; m < MR; m++) {
            const int64_t j = (m0 + m) * NG + g;
            const __m128 f = _mm_mul_ps(sc, x16_f4<GPU>(xq.step + j));
            tot[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][m]),
                                        _mm512_permutexvar_ps(quarters, _mm512_castps128_ps512(f)), tot[r][m]);
            corr[r][m] = _mm_fmadd_ps(bi, x16_f4<GPU>(xq.fix + j), corr[r][m]);
            corr[r][m] = _mm_fmadd_ps(sc, x16_f4<GPU>(xq.err + j), corr[r][m]);
          }
        }
      } else {
        for (int r = 0; r < NR; r++)
          for (int m = 0; m < MR; m++) {
            const float *sm = cs[r].buf + m * NG + g;
            __m512 f;
            if constexpr (GPU == 1) f = _mm512_set1_ps(*sm);
            else f = _mm512_permutexvar_ps(quarters, _mm512_castps128_ps512(_mm_loadu_ps(sm)));
            tot[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][m]), f, tot[r][m]);
          }
      }
    }
    if constexpr (INL) {
      for (int r = 0; r < NR; r++)
        for (int m = 0; m < MR; m++) {
          const __m512 t = _mm512_add_ps(tot[r][m], _mm512_zextps128_ps512(corr[r][m]));
          x16_put(y + m * ldy + n + r, _mm512_reduce_add_ps(t), g0, bias, n + r);
        }
      continue;
    }
    // biases against the exact sums of x, scales against the centred rounding errors (x16_prepare)
    for (int r = 0; r < NR; r++) {
      for (int64_t g = g0; g < g1; g += 16) {
        const __mmask16 k = g1 - g >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (g1 - g)) - 1);
        const __m512 bi = _mm512_maskz_loadu_ps(k, cs[r].bi + g), sc = _mm512_maskz_loadu_ps(k, cs[r].sc + g);
        for (int m = 0; m < MR; m++) {
          const float *fx = xq.fix + (m0 + m) * NG + g, *er = xq.err + (m0 + m) * NG + g;
          tot[r][m] = _mm512_fmadd_ps(bi, _mm512_maskz_loadu_ps(k, fx), tot[r][m]);
          tot[r][m] = _mm512_fmadd_ps(sc, _mm512_maskz_loadu_ps(k, er), tot[r][m]);
        }
      }
      for (int m = 0; m < MR; m++) x16_put(y + m * ldy + n + r, _mm512_reduce_add_ps(tot[r][m]), g0, bias, n + r);
    }
  }
}

// The wide kernel over rows [n0, n1). One or two rows of x take one row of W at a time, with the scales read in
// the unit loop where they are 16-bit: a pair of rows of W read side by side halved the rate at which weights
// stream from DRAM (two interleaved streams a page defeat the hardware prefetcher; 4-bit 3072x1024, one row of
// x, copies far beyond the caches: 61.5 us a call in pairs, 51 us alone and inline, Zen 5). Three or four rows of x
// take pairs of rows of W where rows are long, since each load of x then feeds two products (4 rows of x, 4-bit:
// 14336x4096 1.55 ms a call in pairs, 1.70 ms alone and inline), and one row inline up to 2048-element rows, where
// the per-row passes weigh more (3072x1024 118 -> 86 us, 4096x2048 212 -> 203 us; 1024x3072 alike either way).
template <int F, int MR, int GS>
static void x16_affine_wide_rows(float *y, int64_t ldy, const X16 &xq, int64_t m0, const WeightMat &W, int64_t n0,
                                 int64_t n1, const float *bias, RowCtx &c, int64_t g0, int64_t g1) {
  constexpr bool pairs = MR > 2 && MR <= 4 && x16_cpb<F>() <= 2;
  if constexpr (MR <= 2 || pairs)
    if (W.sb_dtype != RMLX_F32 && (MR <= 2 || W.K <= 2048))
      return x16_affine_rows_wide<F, MR, GS, 1, true>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
  if constexpr (pairs) {
    const int64_t n2 = n0 + ((n1 - n0) & ~(int64_t)1);
    x16_affine_rows_wide<F, MR, GS, 2, false>(y, ldy, xq, m0, W, n0, n2, bias, c, g0, g1);
    if (n2 < n1) x16_affine_rows_wide<F, MR, GS, 1, false>(y, ldy, xq, m0, W, n2, n1, bias, c, g0, g1);
  } else {
    x16_affine_rows_wide<F, MR, GS, 1, false>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
  }
}

// mxfp4 and nvfp4 (rows of whole 64-element blocks): 32 bytes, two groups of 32 or four of 16, per step. The
// low and high nibbles of the bytes are looked up as bytes (kFp4Offset + 2 * value, unsigned), and vpmaddubsw
// multiplies them with the byte planes of x: 256 * (w . xh) + (w . xl). Its pairs and vpmaddwd's stay within
// 128-bit halves and each int32 lane holds 8 weights, so the sum's lanes follow the groups in order: 4 lanes per
// group of 32, 2 per group of 16.
template <int MR, int G>
static void x16_fp4_rows(float *y, int64_t ldy, const X16 &xq, int64_t m0, const WeightMat &W, int64_t n0,
                         int64_t n1, const float *bias, RowCtx &c, int64_t g0, int64_t g1) {
  constexpr int GPS = 64 / G;  // groups per step
  const int64_t K = W.K, NG = W.groups;
  const __m256i lut = _mm256_broadcastsi128_si256(
      _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
  const __m256i low4 = _mm256_set1_epi8(15), k256 = _mm256_set1_epi16(256), k1 = _mm256_set1_epi16(1);
  const __m256i quads = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
  float *scm = c.buf;
  auto plane = [](const int8_t *x) { return _mm256_loadu_si256((const __m256i *)x); };
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t *p = W.w + n * W.row_bytes + g0 * G / 2;
    row_prep<F_FP4>(W, n, g0, g1, c);
    x16_scales<MR>(c.sc, xq, m0, NG, g0, g1, scm);
    __m256 tot[MR];
    for (int m = 0; m < MR; m++) tot[m] = _mm256_setzero_ps();
    const int8_t *xg = (const int8_t *)(xq.q + m0 * K + g0 * G);
    for (int64_t g = g0; g < g1; g += GPS, p += 32, xg += 128) {
      if (((g - g0) & (2 * GPS - 1)) == 0) prefetch_ahead(p);
      __m256i v = _mm256_loadu_si256((const __m256i *)p);
      __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low4));
      __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
      for (int m = 0; m < MR; m++) {
        const int8_t *xe = xg + 2 * m * K;
        __m256i s;
        if constexpr (V::kVnni) {
          // vpdpbusd sums four byte products straight into int32
          const __m256i z = _mm256_setzero_si256();
          __m256i h = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(z, lo, plane(xe)), hi, plane(xe + 32));
          __m256i l = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(z, lo, plane(xe + 64)), hi, plane(xe + 96));
          s = _mm256_add_epi32(_mm256_slli_epi32(h, 8), l);
        } else {
          // |pair| <= 2 * 24 * 128, and two pairs added stay within int16
          __m256i h = _mm256_add_epi16(_mm256_maddubs_epi16(lo, plane(xe)), _mm256_maddubs_epi16(hi, plane(xe + 32)));
          __m256i l = _mm256_add_epi16(_mm256_maddubs_epi16(lo, plane(xe + 64)), _mm256_maddubs_epi16(hi, plane(xe + 96)));
          s = _mm256_add_epi32(_mm256_madd_epi16(h, k256), _mm256_madd_epi16(l, k1));
        }
        const float *sm = scm + m * NG + g;
        __m256 f;
        if constexpr (GPS == 2)
          f = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(sm)), _mm_broadcast_ss(sm + 1), 1);
        else
          f = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sm)), quads);
        tot[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, tot[m]);
      }
    }
    for (int m = 0; m < MR; m++) {
      float r = hsum8(tot[m]) - dot_range(c.sc, xq.fix + (m0 + m) * NG, g0, g1);
      x16_put(y + m * ldy + n, r, g0, bias, n);
    }
  }
}

// The same with 512-bit vectors (AVX-512 only: instantiated where V is 16 lanes wide): 64 bytes, four groups of
// 32 or eight of 16, per step; g0 and g1 are multiples of that count.
template <int MR, int G>
static void x16_fp4_rows_wide(float *y, int64_t ldy, const X16 &xq, int64_t m0, const WeightMat &W, int64_t n0,
                              int64_t n1, const float *bias, RowCtx &c, int64_t g0, int64_t g1) {
  constexpr int GPS = 128 / G;  // groups per step
  const int64_t K = W.K, NG = W.groups;
  const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
  const __m512i low4 = _mm512_set1_epi8(15), k256 = _mm512_set1_epi16(256), k1 = _mm512_set1_epi16(1);
  const __m512i lanes = GPS == 4 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                                 : _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  float *scm = c.buf;
  auto plane = [](const int8_t *x) { return _mm512_loadu_si512((const void *)x); };
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t *p = W.w + n * W.row_bytes + g0 * G / 2;
    row_prep<F_FP4>(W, n, g0, g1, c);
    x16_scales<MR>(c.sc, xq, m0, NG, g0, g1, scm);
    __m512 tot[MR];
    for (int m = 0; m < MR; m++) tot[m] = _mm512_setzero_ps();
    const int8_t *xg = (const int8_t *)(xq.q + m0 * K + g0 * G);
    for (int64_t g = g0; g < g1; g += GPS, p += 64, xg += 256) {
      prefetch_ahead(p);
      __m512i v = _mm512_loadu_si512((const void *)p);
      __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, low4));
      __m512i hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
      for (int m = 0; m < MR; m++) {
        const int8_t *xe = xg + 2 * m * K;
        __m512i s;
        if constexpr (V::kVnni) {
          const __m512i z = _mm512_setzero_si512();
          __m512i h = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo, plane(xe)), hi, plane(xe + 64));
          __m512i l = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, lo, plane(xe + 128)), hi, plane(xe + 192));
          s = _mm512_add_epi32(_mm512_slli_epi32(h, 8), l);
        } else {
          __m512i h = _mm512_add_epi16(_mm512_maddubs_epi16(lo, plane(xe)), _mm512_maddubs_epi16(hi, plane(xe + 64)));
          __m512i l = _mm512_add_epi16(_mm512_maddubs_epi16(lo, plane(xe + 128)), _mm512_maddubs_epi16(hi, plane(xe + 192)));
          s = _mm512_add_epi32(_mm512_madd_epi16(h, k256), _mm512_madd_epi16(l, k1));
        }
        const float *sm = scm + m * NG + g;
        __m512 f;
        if constexpr (GPS == 4) f = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_loadu_ps(sm)));
        else f = _mm512_permutexvar_ps(lanes, _mm512_castps256_ps512(_mm256_loadu_ps(sm)));
        tot[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), f, tot[m]);
      }
    }
    for (int m = 0; m < MR; m++) {
      float r = _mm512_reduce_add_ps(tot[m]) - dot_range(c.sc, xq.fix + (m0 + m) * NG, g0, g1);
      x16_put(y + m * ldy + n, r, g0, bias, n);
    }
  }
}

template <int F, int MR>
static void x16_rows(float *y, int64_t ldy, const X16 &xq, int64_t m0, const WeightMat &W, int64_t n0, int64_t n1,
                     const float *bias, RowCtx &c, int64_t g0, int64_t g1) {
  if constexpr (F == F_FP4) {
    if constexpr (V::L == 16)
      if (x16_fp4_wide(W))
        return W.group == 32 ? x16_fp4_rows_wide<MR, 32>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1)
                             : x16_fp4_rows_wide<MR, 16>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
    if (W.group == 32) x16_fp4_rows<MR, 32>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
    else x16_fp4_rows<MR, 16>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
  } else {
    if constexpr (x16_wide_format<F>())
      if (x16_affine_wide<F>(W)) {
        if constexpr (F != F_A2)
          if (W.group == 32) return x16_affine_wide_rows<F, MR, 32>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
        if (W.group == 64) return x16_affine_wide_rows<F, MR, 64>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
        return x16_affine_wide_rows<F, MR, 128>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
      }
    if constexpr (MR > 4) return;  // only the wide kernels take more than 4 rows at once (x16_tiles)
    if constexpr (F != F_A2)  // 2-bit chunks are 64 weights
      if (W.group == 32) return x16_affine_rows<F, MR, 32>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
    if (W.group == 64) x16_affine_rows<F, MR, 64>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
    else x16_affine_rows<F, MR, 128>(y, ldy, xq, m0, W, n0, n1, bias, c, g0, g1);
  }
}

// Rows [n0, n1) of W, MR rows of x from m, K in blocks of whole groups: the block of MR rows of x (2 bytes
// each) stays within about 16 KiB of L1 while the tile's rows pass over it (with whole rows of x, 4 rows at
// once cost as much per row as one on the 14336x4096 shape; with blocks about 0.8x).
template <int F, int MR>
static void x16_pass(float *y, int64_t ldy, const X16 &xq, int64_t m, const WeightMat &W, int64_t n0, int64_t n1,
                     const float *bias, RowCtx &c) {
  const int64_t NG = W.groups;
  // the wide kernels' blocks are twice as long: their per-row costs (scales, biases, the final sums) weigh more
  // against their shorter steps (16 rows of 4-bit 1024x4096 with 8 rows a pass: 0.81 ms against 0.86 ms with
  // 8192-element blocks and 1.1 ms with 4096, Zen 5)
  int64_t gblk = ((x16_affine_wide<F>(W) ? 16384 : 8192) / MR) / W.group;
  if (F == F_FP4) gblk &= ~(128 / W.group - 1);  // fp4 steps over up to 128 elements
  if (gblk < 8) gblk = 8;
  for (int64_t g0 = 0; g0 < NG; g0 += gblk) {
    int64_t g1 = NG - g0 <= gblk + gblk / 4 ? NG : g0 + gblk;  // no sliver of a block at the end
    x16_rows<F, MR>(y, ldy, xq, m, W, n0, n1, bias, c, g0, g1);
    if (g1 == NG) break;
  }
}

// Whether W takes the integer path: groups that whole chunks tile (2-bit: 64 or 128), fp4 rows of whole
// 64-element blocks, and the f32 path not asked for.
template <int F>
static bool x16_takes(const WeightMat &W) {
  if constexpr (!x16_format<F>()) {
    return false;
  } else {
    if (!gemv_x16_enabled()) return false;
    if (F == F_FP4)
      return ((W.kind == WKind::Mxfp4 && W.group == 32) || (W.kind == WKind::Nvfp4 && W.group == 16)) && W.K % 64 == 0;
    return (W.group == 32 && F != F_A2) || W.group == 64 || W.group == 128;
  }
}

// M rows of x prepared for W by fill(X16 &) (false: x holds Inf or NaN): one allocation holding the X16 header
// and its arrays (free() releases it); null when fill fails or memory is short. The row kernels and the panels
// (qkern_x16_panel_impl.h) fill it in their own orders.
template <class Fill>
static X16 *x16_filled(int64_t M, const WeightMat &W, Fill fill) {
  const int64_t K = W.K, NG = W.groups;
  size_t head = 64, qbytes = ((size_t)(M * K) * 2 + 63) & ~(size_t)63;
  size_t total = (head + qbytes + sizeof(float) * (size_t)(3 * M * NG + 16) + 63) & ~(size_t)63;  // C11 asks it
  char *mem = (char *)aligned_alloc(64, total);
  if (!mem) return nullptr;
  float *fm = (float *)(mem + head + qbytes);
  X16 *xq = (X16 *)mem;
  *xq = X16{(int16_t *)(mem + head), fm, fm + M * NG, fm + 2 * M * NG};
  if (!fill(*xq)) {
    free(mem);
    return nullptr;
  }
  return xq;
}

// x of M rows prepared once for W and shared by every thread; null when W does not take the integer path, x holds
// Inf or NaN, or memory is short (the caller then takes the f32 path).
template <int F>
static X16 *x16_prepare_all(const float *x, int64_t M, const WeightMat &W) {
  if (!x16_takes<F>(W)) return nullptr;
  return x16_filled(M, W, [&](X16 &o) { return x16_prepare<F>(x, M, W, o); });
}

// y for rows of the tiles [t0, t1), all M rows of x, on the integer path; false when memory is short (the
// caller then takes the f32 path).
template <int F>
static bool x16_tiles(float *y, const X16 &shared, int64_t M, const WeightMat &W, const float *bias, int64_t t0,
                      int64_t t1) {
  if constexpr (!x16_format<F>()) {
    return false;
  } else {
    const int64_t N = W.N, NG = W.groups;
    // A small x (one or a few rows) is read from a copy of its own by each thread: reading the buffer the
    // dispatcher wrote made these products 10-25% slower on a 2-core Zen 4 (measured A/B with one row). A large
    // one is read where it is, the copy would cost more than it saves.
    // Then the row context: scales, biases, the per-row factors of up to 8 rows of x, and a second row's scales
    // and biases (x16_affine_rows_wide).
    const size_t xbytes = (size_t)(M * W.K) * 2;
    const bool copy = xbytes <= 64 * 1024;
    size_t qbytes = copy ? (xbytes + 63) & ~(size_t)63 : 0;
    char *mem = (char *)aligned_alloc(64, qbytes + sizeof(float) * (size_t)(12 * NG + 16));
    if (!mem) return false;
    if (copy) std::memcpy(mem, shared.q, xbytes);
    const X16 xq{copy ? (int16_t *)mem : shared.q, shared.step, shared.fix, shared.err};
    float *rc = (float *)(mem + qbytes);
    RowCtx c{rc, rc + NG, rc + 2 * NG, __builtin_ctz((unsigned)W.group), nullptr};
    for (int64_t t = t0; t < t1; t++) {
      int64_t n0 = t * kGemvTile, n1 = n0 + kGemvTile < N ? n0 + kGemvTile : N;
      for (int64_t m = 0; m < M;) {
        int64_t left = M - m;
        float *ym = y + m * N;
        if constexpr (x16_wide_format<F>())
          if (left >= 8 && x16_cpb<F>() > 2 && x16_affine_wide<F>(W)) {
            x16_pass<F, 8>(ym, N, xq, m, W, n0, n1, bias, c), m += 8;
            continue;
          }
        if (left >= 4) x16_pass<F, 4>(ym, N, xq, m, W, n0, n1, bias, c), m += 4;
        else if (left >= 2) x16_pass<F, 2>(ym, N, xq, m, W, n0, n1, bias, c), m += 2;
        else x16_pass<F, 1>(ym, N, xq, m, W, n0, n1, bias, c), m += 1;
      }
    }
    free(mem);
    return true;
  }
}
