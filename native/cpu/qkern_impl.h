// The SIMD product kernels, written once and compiled per ISA: qkern_avx2.cpp and qkern_avx512_body.h (shared by
// the AVX-512 and AVX512-VNNI variants) include this file inside their own namespace after defining `V`, the
// vector type of their width (lanes V::L, micro-tile rows V::MR). Weights are decoded 8 values at a time into
// __m256 (AVX-512VL runs the same decoders), so every variant reads every format identically. Included only by
// ISA files; it has no include guard on purpose.
//
// Two shapes of work:
//  - few rows of x (decode): memory-bound. Each weight row is streamed once, decoded in registers and dotted with
//    up to 8 rows of x at once; rows of W are split across threads.
//  - many rows of x (prefill): compute-bound. A panel of W (NB rows x KB columns) is decoded to f32 once into a
//    thread-local buffer, laid out for an FMA micro-kernel of V::MR rows x 2*V::L columns, and reused by every
//    row of x.
//
// Work is split by the caller (linear.cpp runs the thread pool), so that no std:: template is instantiated
// here with this file's ISA flags.

enum : int { F_F32, F_F16, F_BF16, F_A2, F_A3, F_A4, F_A5, F_A6, F_A8, F_FP4, F_FP8 };

static inline int fmt_code(const WeightMat &W) {
  switch (W.kind) {
    case WKind::F32: return F_F32;
    case WKind::F16: return F_F16;
    case WKind::BF16: return F_BF16;
    case WKind::Mxfp4:
    case WKind::Nvfp4: return F_FP4;
    case WKind::Mxfp8: return F_FP8;
    case WKind::Affine:
      switch (W.bits) {
        case 2: return F_A2;
        case 3: return F_A3;
        case 4: return F_A4;
        case 5: return F_A5;
        case 6: return F_A6;
        default: return F_A8;
      }
  }
  return F_F32;
}

using T8 = __m256;

static inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// sum of a[i] * b[i] for i in [i0, i1), vectorised so that it is no long chain of dependent FMAs.
static inline float dot_range(const float *a, const float *b, int64_t i0, int64_t i1) {
  __m256 t = _mm256_setzero_ps();
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) t = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), t);
  float r = hsum8(t);
  for (; i < i1; i++) r += a[i] * b[i];
  return r;
}

// Each weight is read once per product, and for a matrix far larger than the caches the hardware prefetchers
// alone left a one-row product at about 65% of the rate it reaches with a software prefetch this far ahead of
// the bytes being decoded (measured for 4-bit affine on a 2-core Zen 4; 8 to 32 KiB performed alike).
static constexpr int64_t kPrefetchBytes = 8192;

static inline void prefetch_ahead(const uint8_t *p) {
  _mm_prefetch((const char *)p + kPrefetchBytes, _MM_HINT_T0);
}

static inline uint32_t ld32(const uint8_t *p) {
  uint32_t u;
  std::memcpy(&u, p, 4);
  return u;
}

static inline __m256i shifted(uint32_t lo, uint32_t hi, __m256i shifts, int blend_hi_lanes) {
  __m256i v = _mm256_set1_epi32((int)lo);
  if (blend_hi_lanes == 2) v = _mm256_blend_epi32(v, _mm256_set1_epi32((int)hi), 0xC0);
  if (blend_hi_lanes == 3) v = _mm256_blend_epi32(v, _mm256_set1_epi32((int)hi), 0xE0);
  return _mm256_srlv_epi32(v, shifts);
}

// E4M3 bytes as f16 (sign, then exponent and mantissa under f16's fields: both have subnormals at the bottom
// of the range, so every byte converts exactly), widened to f32: the value times 2^-8.
static inline __m256 fp8_raw8_f16(const uint8_t *row, int64_t k) {
  __m128i b = _mm_unpacklo_epi8(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)(row + k)));  // byte << 8
  __m128i h = _mm_and_si128(_mm_srai_epi16(b, 1), _mm_set1_epi16((short)0xbfff));
  return _mm256_cvtph_ps(h);
}

// E2M1: the table holds mag[i] with bits 28..30 xor-ed by i, so that xor-ing the looked-up value with
// (code << 28) restores those bits and moves the code's sign bit to the float's.
static inline __m256 fp4_raw8(const uint8_t *row, int64_t k) {
  const __m256i tag = _mm256_slli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), 28);
  const __m256 lut = _mm256_xor_ps(_mm256_setr_ps(0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f), _mm256_castsi256_ps(tag));
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)ld32(row + (k >> 1))), shifts);
  return _mm256_xor_ps(_mm256_permutevar8x32_ps(lut, v), _mm256_castsi256_ps(_mm256_slli_epi32(v, 28)));
}

// Elements [k, k+8) of a row, before scale and bias: quantized codes as floats, fp4/fp8 values, dense values.
// k is a multiple of 8 for the packed formats. Reads only the bytes of those 8 elements.
template <int F, bool TAIL = true>
static inline __m256 raw8(const uint8_t *row, int64_t k) {
  if constexpr (F == F_F32) {
    return _mm256_loadu_ps((const float *)row + k);
  } else if constexpr (F == F_F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
  } else if constexpr (F == F_BF16) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  } else if constexpr (F == F_A8) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + k))));
  } else if constexpr (F == F_FP8) {
    return _mm256_mul_ps(fp8_raw8_f16(row, k), _mm256_set1_ps(256.f));
  } else if constexpr (F == F_FP4) {
    return fp4_raw8(row, k);
  } else {
    __m256i v;
    int mask;
    if constexpr (F == F_A2) {
      uint16_t u;
      std::memcpy(&u, row + (k >> 2), 2);
      v = shifted(u, 0, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), 0), mask = 3;
    } else if constexpr (F == F_A3) {
      // 8 values fill 3 bytes; the fourth byte read is masked off and, unless TAIL, still inside the row.
      const uint8_t *p = row + ((k * 3) >> 3);
      uint32_t u = TAIL ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 : ld32(p);
      v = shifted(u, 0, _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21), 0), mask = 7;
    } else if constexpr (F == F_A4) {
      v = shifted(ld32(row + (k >> 1)), 0, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), 0), mask = 15;
    } else if constexpr (F == F_A5) {
      const uint8_t *p = row + ((k * 5) >> 3);
      v = shifted(ld32(p), ld32(p + 1), _mm256_setr_epi32(0, 5, 10, 15, 20, 25, 22, 27), 2), mask = 31;
    } else {
      static_assert(F == F_A6);
      const uint8_t *p = row + ((k * 6) >> 3);
      v = shifted(ld32(p), ld32(p + 2), _mm256_setr_epi32(0, 6, 12, 18, 24, 14, 20, 26), 3), mask = 63;
    }
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(mask)));
  }
}

template <int F>
static constexpr bool is_dense() {
  return F == F_F32 || F == F_F16 || F == F_BF16;
}

// Bits per stored weight.
template <int F>
static constexpr int64_t bits_of() {
  constexpr int64_t b[] = {32, 16, 16, 2, 3, 4, 5, 6, 8, 4, 8};
  return b[F];
}

template <int F>
static constexpr bool is_affine() {
  return F >= F_A2 && F <= F_A8;
}

// Decoded elements [k0, k0+len) of row n; k0 and len are group-aligned for quantized formats.
template <int F>
static void decode_segment(const WeightMat &W, int64_t n, int64_t k0, int64_t len, float *out) {
  const uint8_t *row = W.w + n * W.row_bytes;
  if constexpr (is_dense<F>()) {
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) _mm256_storeu_ps(out + i, raw8<F>(row, k0 + i));
    for (; i < len; i++) out[i] = raw_value(W, row, k0 + i);
  } else {
    const int64_t G = W.group;
    for (int64_t g = k0 / G, k = k0; k < k0 + len; g++) {
      __m256 s = _mm256_set1_ps(group_scale(W, n, g)), b = _mm256_set1_ps(group_bias(W, n, g));
      for (int64_t e = k + G; k < e; k += 8) {
        __m256 r = raw8<F>(row, k);
        _mm256_storeu_ps(out + (k - k0), is_affine<F>() ? _mm256_fmadd_ps(r, s, b) : _mm256_mul_ps(r, s));
      }
    }
  }
}

// ---- few rows of x ----

// Per-row decoding state of the streaming kernel: each row's scales (and biases) are decoded once into small
// arrays, so the inner loop reads them with a broadcast load whatever the group size.
struct RowCtx {
  float *sc, *bi;   // [groups]
  float *buf;       // [K] a dequantized row segment, for rows the fast decoders cannot take
  int gshift;       // log2(group)
  const float *xs;  // [rows of x][groups]: sum of x over each group, for the biases of factored rows
};

// Decodes the scales of groups [g0, g1) of row n into ctx; false when a row needs the generic path (an E8M0
// scale too large to take the folded 2^8 of fp8_raw8_f16).
template <int F>
static bool row_prep(const WeightMat &W, int64_t n, int64_t g0, int64_t g1, RowCtx &c) {
  const int64_t G = g1 - g0, i0 = n * W.groups + g0;
  float *sc = c.sc + g0, *bi = c.bi + g0;
  if constexpr (is_affine<F>()) {
    if (W.sb_dtype == RMLX_F32) {
      std::memcpy(sc, (const float *)W.scales + i0, G * 4);
      std::memcpy(bi, (const float *)W.biases + i0, G * 4);
    } else {
      const uint16_t *s = (const uint16_t *)W.scales + i0, *b = (const uint16_t *)W.biases + i0;
      bool h = W.sb_dtype == RMLX_F16;
      int64_t g = 0;
      for (; g + 8 <= G; g += 8) {
        __m128i s8 = _mm_loadu_si128((const __m128i *)(s + g)), b8 = _mm_loadu_si128((const __m128i *)(b + g));
        if (h) {
          _mm256_storeu_ps(sc + g, _mm256_cvtph_ps(s8));
          _mm256_storeu_ps(bi + g, _mm256_cvtph_ps(b8));
        } else {
          _mm256_storeu_si256((__m256i *)(sc + g), _mm256_slli_epi32(_mm256_cvtepu16_epi32(s8), 16));
          _mm256_storeu_si256((__m256i *)(bi + g), _mm256_slli_epi32(_mm256_cvtepu16_epi32(b8), 16));
        }
      }
      for (; g < G; g++) {
        sc[g] = load_scalar(W.scales, W.sb_dtype, i0 + g);
        bi[g] = load_scalar(W.biases, W.sb_dtype, i0 + g);
      }
    }
  } else if constexpr (F == F_FP8) {
    // 2^(s-127) * 2^8 has the float bits (s + 8) << 23, for s = 0 too.
    const uint8_t *s = (const uint8_t *)W.scales + i0;
    int64_t g = 0;
    for (; g + 8 <= G; g += 8) {
      __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(s + g)));
      if (_mm256_movemask_epi8(_mm256_cmpgt_epi32(v, _mm256_set1_epi32(246)))) return false;
      _mm256_storeu_si256((__m256i *)(sc + g), _mm256_slli_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(8)), 23));
    }
    for (; g < G; g++) {
      if (s[g] > 246) return false;
      sc[g] = e8m0_value(s[g]) * 256.f;
    }
  } else if constexpr (F == F_FP4) {
    const uint8_t *s = (const uint8_t *)W.scales + i0;
    if (W.kind == WKind::Mxfp4) {
      // E8M0 byte s -> float bits s << 23; s = 0 is 2^-127, the subnormal 0x00400000.
      int64_t g = 0;
      for (; g + 8 <= G; g += 8) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(s + g)));
        __m256i z = _mm256_cmpeq_epi32(v, _mm256_setzero_si256());
        v = _mm256_blendv_epi8(_mm256_slli_epi32(v, 23), _mm256_set1_epi32(0x00400000), z);
        _mm256_storeu_si256((__m256i *)(sc + g), v);
      }
      for (; g < G; g++) sc[g] = e8m0_value(s[g]);
    } else {
      // E4M3 through f16 as fp8_raw8_f16 (times 2^8 restores the value exactly), except bytes that are NaN.
      const __m256 gf = _mm256_set1_ps(W.gfactor);
      int64_t g = 0;
      for (; g + 8 <= G; g += 8) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(s + g));
        __m128i nan = _mm_cmpeq_epi8(_mm_and_si128(b, _mm_set1_epi8(0x7f)), _mm_set1_epi8(0x7f));
        if (_mm_movemask_epi8(_mm_unpacklo_epi64(nan, _mm_setzero_si128()))) break;
        __m256 v = _mm256_mul_ps(fp8_raw8_f16(s, g), _mm256_set1_ps(256.f));
        _mm256_storeu_ps(sc + g, _mm256_mul_ps(v, gf));
      }
      for (; g < G; g++) sc[g] = kE4M3[s[g]] * W.gfactor;
    }
  }
  return true;
}

// Weights [k, k+8) before their group's scale (fp8 without the 2^8 that row_prep folds into the scales).
// TAIL: the chunk may end the row, so nothing past its own bytes may be read.
template <int F, bool TAIL>
static inline __m256 wraw8(const uint8_t *row, int64_t k) {
  if constexpr (F == F_FP8) return fp8_raw8_f16(row, k);
  else return raw8<F, TAIL>(row, k);
}

template <int F>
static inline typename V::T scaled(typename V::T w, typename V::T s, typename V::T b) {
  if constexpr (is_affine<F>()) return V::fma(w, s, b);
  else return V::mul(w, s);
}

// 4-bit weights (affine and E2M1) decoded as nibble pairs (x permuted to match): fewer instructions per weight
// than shifting each nibble into place. The ISA opts in through V::kLane8Decoders.
template <int F>
static constexpr bool nibble_pairs() {
  return (F == F_A4 || F == F_FP4) && V::kLane8Decoders;
}

// 8 bytes: their low nibbles decoded in w0, their high nibbles in w1 (codes for affine, values for E2M1).
template <int F>
static inline void pair16(const uint8_t *p, T8 &w0, T8 &w1) {
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
  if constexpr (F == F_A4) {
    w0 = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
    w1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
  } else {
    static_assert(F == F_FP4);
    // as fp4_raw8: the permute reads only an index's low 3 bits, and the code shifted to bit 28 (the byte's
    // other nibble shifted out) restores the table's tag bits and sets the sign.
    const __m256i tag = _mm256_slli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), 28);
    const __m256 lut = _mm256_xor_ps(_mm256_setr_ps(0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f), _mm256_castsi256_ps(tag));
    __m256i h = _mm256_srli_epi32(v, 4);
    w0 = _mm256_xor_ps(_mm256_permutevar8x32_ps(lut, v), _mm256_castsi256_ps(_mm256_slli_epi32(v, 28)));
    w1 = _mm256_xor_ps(_mm256_permutevar8x32_ps(lut, h), _mm256_castsi256_ps(_mm256_slli_epi32(h, 28)));
  }
}

// xp = x with each run of 2L elements reordered as its L even elements, then its L odd ones.
static void permute_x_nibbles(float *xp, const float *x, int64_t n) {
  constexpr int L = V::L;
  for (int64_t c = 0; c < n; c += 2 * L)
    for (int j = 0; j < L; j++) xp[c + j] = x[c + 2 * j], xp[c + L + j] = x[c + 2 * j + 1];
}

// One row of x (permuted) against the 4-bit groups [g0, g1) of a row, P byte octets (16 weights) per group, the
// scale factored out: sum over groups of sc[g] * (x . w). The group is unrolled whole, so its first products
// start its partial sums (no zeroing) and they meet in FADDs, leaving one FMA per group on the scale.
template <int F, int P>
static inline T8 nib_groups(const uint8_t *row, const float *x, const float *sc, int64_t g0, int64_t g1) {
  static_assert(P == 1 || P == 2 || P == 4 || P == 8);
  T8 tot = _mm256_setzero_ps();
  const uint8_t *p = row + g0 * P * 8;
  const float *xg = x + g0 * P * 16;
  for (int64_t g = g0; g < g1; g++, p += P * 8, xg += P * 16) {
    T8 a[4];
    prefetch_ahead(p);
    for (int j = 0; j < P; j++) {
      T8 w0, w1;
      pair16<F>(p + 8 * j, w0, w1);
      T8 x0 = _mm256_loadu_ps(xg + 16 * j), x1 = _mm256_loadu_ps(xg + 16 * j + 8);
      int i = (2 * j) & 3;
      if (j < 2) a[i] = _mm256_mul_ps(x0, w0), a[i + 1] = _mm256_mul_ps(x1, w1);
      else a[i] = _mm256_fmadd_ps(x0, w0, a[i]), a[i + 1] = _mm256_fmadd_ps(x1, w1, a[i + 1]);
    }
    T8 s = P == 1 ? _mm256_add_ps(a[0], a[1]) : _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
    tot = _mm256_fmadd_ps(s, _mm256_broadcast_ss(sc + g), tot);
  }
  return tot;
}

// y[m, n] (+)= x[m, k0:k1] . W[n, k0:k1] for n in [n0, n1) and MR rows of x; the first block of a row writes
// (with the bias), later ones add. A accumulators per row of x keep enough FMA chains in flight when MR is
// small. PER_GROUP: a group spans whole steps of A vectors, so its scale and bias are loaded once per group;
// otherwise once per vector.
template <int F, int MR, int A, bool PER_GROUP, bool FACTOR>
static void gemv_rows(float *y, int64_t ldy, const float *x, const WeightMat &W, int64_t n0, int64_t n1,
                      const float *bias, RowCtx &c, int64_t k0, int64_t k1) {
  using T = typename V::T;
  constexpr int L = V::L;
  constexpr bool NIBBLE_PAIRS = nibble_pairs<F>();
  constexpr int SPAN = NIBBLE_PAIRS && A < 2 ? 2 * L : A * L;  // weights per step
  const int64_t K = W.K;
  auto put = [&](int m, int64_t n, float r) {
    float *o = y + m * ldy + n;
    *o = k0 == 0 ? r + (bias ? bias[n] : 0.f) : *o + r;
  };
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t *row = W.w + n * W.row_bytes;
    if (!is_dense<F>() && !row_prep<F>(W, n, k0 >> c.gshift, k1 >> c.gshift, c)) {
      dequant_range_scalar(W, n, k0, k1 - k0, c.buf);
      for (int m = 0; m < MR; m++) {
        float r = 0.f;
        for (int64_t k = k0; k < k1; k++) r += x[m * K + k] * c.buf[k - k0];
        put(m, n, r);
      }
      continue;
    }
    T acc[MR][A];
    for (int m = 0; m < MR; m++)
      for (int a = 0; a < A; a++) acc[m][a] = V::zero();
    auto step = [&]<bool TAIL>(int64_t k, T s, T b) {
      // once per line; dense rows stream at full bandwidth without (they lost ~20% with it)
      if (!is_dense<F>() && ((k * bits_of<F>()) & 511) == 0) prefetch_ahead(row + ((k * bits_of<F>()) >> 3));
      if constexpr (NIBBLE_PAIRS) {
        // 2L weights from L bytes: low nibbles are the even elements, high nibbles the odd ones, and x was
        // permuted to match (see permute_x_nibbles).
        for (int a = 0; a < SPAN / L; a += 2) {
          T w0, w1;
          pair16<F>(row + ((k + a * L) >> 1), w0, w1);
          if constexpr (!FACTOR) w0 = scaled<F>(w0, s, b), w1 = scaled<F>(w1, s, b);
          for (int m = 0; m < MR; m++) {
            acc[m][a % A] = V::fma(V::loadu(x + m * K + k + a * L), w0, acc[m][a % A]);
            acc[m][(a + 1) % A] = V::fma(V::loadu(x + m * K + k + (a + 1) * L), w1, acc[m][(a + 1) % A]);
          }
        }
      } else {
        for (int a = 0; a < A; a++) {
          T w = V::template wchunk<F, TAIL>(row, k + a * L);
          if constexpr (!is_dense<F>() && !FACTOR) w = scaled<F>(w, s, b);
          for (int m = 0; m < MR; m++) acc[m][a] = V::fma(V::loadu(x + m * K + k + a * L), w, acc[m][a]);
        }
      }
    };
    int64_t k = k0;
    if constexpr (MR == 1 && NIBBLE_PAIRS) {
      // nibble pairs read whole octets, so the row's last group needs no care
      const int64_t G = W.group, g0 = k0 >> c.gshift, g1 = k1 >> c.gshift;
      if (G == 16 || G == 32 || G == 64 || G == 128) {
        T8 t = G == 64   ? nib_groups<F, 4>(row, x, c.sc, g0, g1)
               : G == 32 ? nib_groups<F, 2>(row, x, c.sc, g0, g1)
               : G == 16 ? nib_groups<F, 1>(row, x, c.sc, g0, g1)
                         : nib_groups<F, 8>(row, x, c.sc, g0, g1);
        float r = hsum8(t);
        if constexpr (is_affine<F>()) r += dot_range(c.bi, c.xs, g0, g1);
        put(0, n, r);
        continue;
      }
    }
    if constexpr (is_dense<F>()) {
      for (; k + L * A <= k1; k += L * A) step.template operator()<false>(k, V::zero(), V::zero());
    } else if constexpr (PER_GROUP && FACTOR) {
      // sum_k x (s q + b) = s sum_k x q + b sum_k x: the scale is applied once per group and the bias through
      // the group sums of x, which leaves one FMA per vector of weights.
      const int64_t G = W.group, g0 = k0 >> c.gshift, g1 = k1 >> c.gshift;
      const int64_t gend = g1 - (k1 == K ? 1 : 0);  // only the row's last group may end at its last byte
      T tot[MR][A];
      for (int m = 0; m < MR; m++)
        for (int a = 0; a < A; a++) tot[m][a] = V::zero();
      auto group = [&]<bool TAIL>(int64_t g) {
        for (int m = 0; m < MR; m++)
          for (int a = 0; a < A; a++) acc[m][a] = V::zero();
        for (int64_t e = k + G; k < e; k += SPAN) step.template operator()<TAIL>(k, V::zero(), V::zero());
        T s = V::set1(c.sc[g]);
        for (int m = 0; m < MR; m++)
          for (int a = 0; a < A; a++) tot[m][a] = V::fma(acc[m][a], s, tot[m][a]);
      };
      for (int64_t g = g0; g < gend; g++) group.template operator()<false>(g);
      if (gend < g1) group.template operator()<true>(gend);
      for (int m = 0; m < MR; m++) {
        T t = tot[m][0];
        for (int a = 1; a < A; a++) t = V::add(t, tot[m][a]);
        float r = V::hsum(t);
        if constexpr (is_affine<F>()) r += dot_range(c.bi, c.xs + m * W.groups, g0, g1);
        put(m, n, r);
      }
      continue;
    } else if constexpr (PER_GROUP) {
      // Only the row's last group may end at the row's last byte.
      const int64_t G = W.group, gend = (k1 >> c.gshift) - (k1 == K ? 1 : 0);
      for (int64_t g = k0 >> c.gshift; g < gend; g++) {
        T s = V::set1(c.sc[g]), b = is_affine<F>() ? V::set1(c.bi[g]) : V::zero();
        for (int64_t e = k + G; k < e; k += SPAN) step.template operator()<false>(k, s, b);
      }
      if (k < k1) {
        int64_t g = k >> c.gshift;
        T s = V::set1(c.sc[g]), b = is_affine<F>() ? V::set1(c.bi[g]) : V::zero();
        for (; k < k1; k += SPAN) step.template operator()<true>(k, s, b);
      }
    } else {
      if constexpr (NIBBLE_PAIRS) {
        // groups smaller than a step (at least one octet pair, 2L weights)
        for (; k < k1; k += 2 * L) {
          prefetch_ahead(row + (k >> 1));
          int64_t g = k >> c.gshift;
          T s = V::set1(c.sc[g]), b = is_affine<F>() ? V::set1(c.bi[g]) : V::zero(), w0, w1;
          pair16<F>(row + (k >> 1), w0, w1);
          w0 = scaled<F>(w0, s, b), w1 = scaled<F>(w1, s, b);
          for (int m = 0; m < MR; m++) {
            acc[m][0] = V::fma(V::loadu(x + m * K + k), w0, acc[m][0]);
            acc[m][A - 1] = V::fma(V::loadu(x + m * K + k + L), w1, acc[m][A - 1]);
          }
        }
      }
      auto chunk = [&](int64_t kk, int a) {
        int64_t g = kk >> c.gshift;
        T w = scaled<F>(V::template wchunk<F, true>(row, kk), V::set1(c.sc[g]),
                        is_affine<F>() ? V::set1(c.bi[g]) : V::zero());
        for (int m = 0; m < MR; m++) acc[m][a] = V::fma(V::loadu(x + m * K + kk), w, acc[m][a]);
      };
      for (; k + L * A <= k1; k += L * A) {
        prefetch_ahead(row + ((k * bits_of<F>()) >> 3));
        for (int a = 0; a < A; a++) chunk(k + a * L, a);
      }
      for (; k < k1; k += L) chunk(k, 0);
    }
    for (int m = 0; m < MR; m++) {
      T t = acc[m][0];
      for (int a = 1; a < A; a++) t = V::add(t, acc[m][a]);
      float r = V::hsum(t);
      for (int64_t kk = k; kk < k1; kk++) r += x[m * K + kk] * raw_value(W, row, kk);
      put(m, n, r);
    }
  }
}

// Rows [n0, n1) of W against MR rows of x; several rows of x take K in blocks small enough that the block of x
// stays in L1 while every row of the tile passes over it (the tile's rows stay in L2 between blocks).
template <int F, int MR, int A>
static void gemv_block(float *y, int64_t ldy, const float *x, const WeightMat &W, int64_t n0, int64_t n1,
                       const float *bias, RowCtx &c) {
  const int64_t K = W.K;
  // One row of x takes whole rows: in blocks, each row of the tile is a stream restarted once a block, which the
  // hardware prefetcher follows poorly (bf16 2048x8192 from DRAM: 1.19 ms a call in 4096-element blocks, 0.74 ms
  // in whole rows; 4096x14336: 4.3 ms against 3.0 ms, Zen 5); x then comes from L1 or L2.
  const int64_t kblk = MR == 1 ? K : (4096 / MR) < 512 ? 512 : 4096 / MR;  // a multiple of every group and of L * A
  const bool per_group = is_dense<F>() || W.group >= V::L * A;
  // Factoring the scale out pays for one row of x (one FMA per weight vector left); with more rows the
  // accumulators would not fit the registers. Measured no faster for fp4, whose decode dominates.
  constexpr bool factor = MR == 1 && !is_dense<F>() && F != F_FP4;
  for (int64_t k0 = 0; k0 < K; k0 += kblk) {
    int64_t k1 = K - k0 <= kblk + kblk / 4 ? K : k0 + kblk;  // no sliver of a block at the end
    if (!per_group) gemv_rows<F, MR, A, false, false>(y, ldy, x, W, n0, n1, bias, c, k0, k1);
    else gemv_rows<F, MR, A, true, factor>(y, ldy, x, W, n0, n1, bias, c, k0, k1);
    if (k1 == K) break;
  }
}

// 3- and 6-bit affine weights against one row of x: 24 bytes at a time are spread so that each of the 8 lanes
// holds 3 of them (C = 8 or 4 codes), then one uniform shift and mask per vector yields the same code of every
// lane. x is permuted to match: in each run of 8C elements, lane i of vector j is element C * i + j.
template <int F>
static constexpr int spread_codes() {
  return !V::kLane8Decoders ? 0 : F == F_A3 ? 8 : F == F_A6 ? 4 : 0;
}

static inline __m256i spread24(const uint8_t *p) {
  __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                      _mm_loadl_epi64((const __m128i *)(p + 16)), 1);
  b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 1, 2, 3, 3, 4, 5, 6));  // upper half: bytes 12-27
  const __m256i take3 = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1));
  return _mm256_shuffle_epi8(b, take3);
}

// sum over groups [0, groups) of sc[g] * (x . q) for one row, P spreads per group, partial sums as nib_groups.
template <int F, int P>
static inline T8 spread_groups(const uint8_t *p, const float *xg, const float *sc, int64_t groups) {
  constexpr int C = spread_codes<F>(), BITS = 24 / C;
  const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
  T8 tot = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; g++) {
    T8 a[4];
    prefetch_ahead(p);
    for (int j = 0; j < P; j++, p += 24, xg += 8 * C) {
      __m256i v = spread24(p);
      for (int i = 0; i < C; i++) {
        __m256i q = i == 0 ? v : _mm256_srli_epi32(v, BITS * i);
        if (i < C - 1) q = _mm256_and_si256(q, mask);  // the last code is alone in the lane's top bits
        T8 w = _mm256_cvtepi32_ps(q), xv = _mm256_loadu_ps(xg + 8 * i);
        a[i & 3] = j == 0 && i < 4 ? _mm256_mul_ps(xv, w) : _mm256_fmadd_ps(xv, w, a[i & 3]);
      }
    }
    T8 s = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
    tot = _mm256_fmadd_ps(s, _mm256_broadcast_ss(sc + g), tot);
  }
  return tot;
}

// y[0, n] for rows n of the tiles [t0, t1), one row of x, through spread_groups; false when the group size is
// not one it takes (a multiple of the 8C elements of a spread, at most 4 spreads).
template <int F>
static bool gemv_spread(float *y, const float *x, const WeightMat &W, const float *bias, int64_t t0, int64_t t1) {
  constexpr int C = spread_codes<F>();
  if constexpr (C == 0) {
    return false;
  } else {
    const int64_t G = W.groups, K = W.K, P = W.group / (8 * C);
    if (W.group % (8 * C) || P < 1 || P > 4 || P == 3) return false;
    float *mem = (float *)malloc(sizeof(float) * (size_t)(3 * G + K + 8));
    if (!mem) return false;
    float *sc = mem, *bi = mem + G, *xs = mem + 2 * G, *xp = mem + 3 * G;
    RowCtx c{sc, bi, nullptr, __builtin_ctz((unsigned)W.group), xs};
    for (int64_t g = 0; g < G; g++) {
      T8 t = _mm256_setzero_ps();
      for (int64_t i = 0; i < W.group; i += 8) t = _mm256_add_ps(t, _mm256_loadu_ps(x + g * W.group + i));
      xs[g] = hsum8(t);
    }
    for (int64_t b = 0; b < K; b += 8 * C)
      for (int i = 0; i < 8; i++)
        for (int j = 0; j < C; j++) xp[b + 8 * j + i] = x[b + C * i + j];
    for (int64_t n = t0 * kGemvTile; n < W.N && n < t1 * kGemvTile; n++) {
      row_prep<F>(W, n, 0, G, c);
      const uint8_t *row = W.w + n * W.row_bytes;
      T8 t = P == 1 ? spread_groups<F, 1>(row, xp, sc, G)
             : P == 2 ? spread_groups<F, 2>(row, xp, sc, G)
                      : spread_groups<F, 4>(row, xp, sc, G);
      y[n] = hsum8(t) + dot_range(bi, xs, 0, G) + (bias ? bias[n] : 0.f);
    }
    free(mem);
    return true;
  }
}

#include "qkern_x16_impl.h"
#include "qkern_x16_panel_impl.h"
#include "qkern_x8_impl.h"
#include "qkern_fp8_impl.h"

// Tiles [t0, t1) of kGemvTile rows of W, all M rows of x: each tile stays in cache while blocks of x pass.
template <int F>
static void gemv_tiles_f(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias, int64_t t0,
                         int64_t t1, const void *prepared) {
  if constexpr (F == F_FP8) {
    if (prepared && fp8_tiles(y, prepared, x, M, W, bias, t0, t1)) return;
  } else if constexpr (x8_format<F>()) {
    // what was prepared follows from the same test (x8_alloc, else gemv_prepare)
    if (prepared && x8_takes<F>(W, M)) {
      if (x8_tiles<F>(y, *(const X8 *)prepared, M, W, bias, t0, t1)) return;
    } else if (prepared && x16p_takes<F>(W, M)) {
      if (x16p_tiles<F>(y, *(const X16 *)prepared, M, W, bias, t0, t1)) return;
    } else if (prepared && x16_tiles<F>(y, *(const X16 *)prepared, M, W, bias, t0, t1)) {
      return;
    }
  } else {
    if (prepared && x16_tiles<F>(y, *(const X16 *)prepared, M, W, bias, t0, t1)) return;
  }
  if (M == 1 && gemv_spread<F>(y, x, W, bias, t0, t1)) return;
  const int64_t N = W.N, G = W.groups;
  const int64_t xp_len = nibble_pairs<F>() ? M * W.K : 0;
  const float *x_perm = x;
  float *mem = (float *)malloc(sizeof(float) * (size_t)(W.K + 2 * G + M * G + xp_len + 8));
  if (!mem) return;
  float *xs = mem + 2 * G + W.K;
  if (nibble_pairs<F>()) {
    float *xp = xs + M * G;
    permute_x_nibbles(xp, x, M * W.K);  // K is a multiple of the group, so of 2L
    x_perm = xp;
  }
  RowCtx c{mem, mem + G, mem + 2 * G, W.group ? __builtin_ctz((unsigned)W.group) : 0, xs};
  if (is_affine<F>())
    for (int64_t m = 0; m < M; m++)
      for (int64_t g = 0; g < G; g++) {
        const float *xg = x + m * W.K + g * W.group;
        T8 t = _mm256_setzero_ps();
        for (int64_t i = 0; i < W.group; i += 8) t = _mm256_add_ps(t, _mm256_loadu_ps(xg + i));
        xs[m * G + g] = hsum8(t);
      }
  for (int64_t t = t0; t < t1; t++) {
    int64_t n0 = t * kGemvTile, n1 = n0 + kGemvTile < N ? n0 + kGemvTile : N;
    for (int64_t m = 0; m < M;) {
      int64_t left = M - m;
      float *ym = y + m * N;
      const float *xm = x_perm + m * W.K;
      c.xs = xs + m * G;
      if (left >= 8) gemv_block<F, 8, 1>(ym, N, xm, W, n0, n1, bias, c), m += 8;
      else if (left >= 4) gemv_block<F, 4, 2>(ym, N, xm, W, n0, n1, bias, c), m += 4;
      else if (left >= 2) gemv_block<F, 2, 4>(ym, N, xm, W, n0, n1, bias, c), m += 2;
      else gemv_block<F, 1, 4>(ym, N, xm, W, n0, n1, bias, c), m += 1;
    }
  }
  free(mem);
}

// ---- many rows of x ----

static constexpr int KB = 256;               // columns of W per panel (a multiple of every group size)
static constexpr int NB = (int)kPanelRows;   // rows of W per panel
static constexpr int TW = 2 * V::L;          // columns of y per micro-tile

// dst[k * ldd + c] = src[c * lds + k] for c, k < 8.
static inline void transpose8(const float *src, int64_t lds, float *dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; i++) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// 8 rows of n 32-bit values (src, row i at src + i * n) into 8 columns of a sub-panel (dst, TW values a row):
// dst[k * TW + i] = src[i * n + k].
static inline void panel_put8(const float *src, int n, float *dst) {
  int k = 0;
  for (; k + 8 <= n; k += 8) transpose8(src + k, n, dst + (int64_t)k * TW, TW);
  for (; k < n; k++)
    for (int i = 0; i < 8; i++) dst[(int64_t)k * TW + i] = src[(int64_t)i * n + k];
}

// Panel layout: NB/TW sub-panels, each [kl][TW] (row r of W at column r % TW of sub-panel r / TW). Rows are
// decoded 8 at a time into tmp (8 x kl, contiguous) and moved into the panel by 8x8 transposes: storing each
// decoded value on its own to its column (a cache line apart) took about 13% of a bf16 prefill GEMM's time.
template <int F>
static void pack_panel(float *bp, float *tmp, const WeightMat &W, int64_t n0, int nr, int64_t k0, int kl) {
  for (int r0 = 0; r0 < NB; r0 += 8) {
    for (int i = 0; i < 8; i++) {
      float *row = tmp + (int64_t)i * kl;
      if (r0 + i < nr) decode_segment<F>(W, n0 + r0 + i, k0, kl, row);
      else for (int k = 0; k < kl; k++) row[k] = 0.f;
    }
    panel_put8(tmp, kl, bp + (int64_t)(r0 / TW) * kl * TW + r0 % TW);
  }
}

// c[MRR, ncols] += x[MRR, kl] @ bp[kl, TW]
template <int MRR>
static void micro(const float *x, int64_t ldx, const float *bp, int kl, float *c, int64_t ldc, int ncols) {
  using T = typename V::T;
  constexpr int L = V::L;
  T acc[MRR][2];
  for (int i = 0; i < MRR; i++) acc[i][0] = acc[i][1] = V::zero();
  for (int k = 0; k < kl; k++) {
    T b0 = V::loadu(bp + k * TW), b1 = V::loadu(bp + k * TW + L);
    for (int i = 0; i < MRR; i++) {
      T a = V::set1(x[i * ldx + k]);
      acc[i][0] = V::fma(a, b0, acc[i][0]);
      acc[i][1] = V::fma(a, b1, acc[i][1]);
    }
  }
  if (ncols == TW) {
    for (int i = 0; i < MRR; i++) {
      V::storeu(c + i * ldc, V::add(V::loadu(c + i * ldc), acc[i][0]));
      V::storeu(c + i * ldc + L, V::add(V::loadu(c + i * ldc + L), acc[i][1]));
    }
  } else {
    alignas(64) float t[TW];
    for (int i = 0; i < MRR; i++) {
      V::storeu(t, acc[i][0]);
      V::storeu(t + L, acc[i][1]);
      for (int j = 0; j < ncols; j++) c[i * ldc + j] += t[j];
    }
  }
}

template <int MRR = V::MR>
static void micro_any(int mr, const float *x, int64_t ldx, const float *bp, int kl, float *c, int64_t ldc,
                      int ncols) {
  if constexpr (MRR >= 1) {
    if (mr == MRR) return micro<MRR>(x, ldx, bp, kl, c, ldc, ncols);
    micro_any<MRR - 1>(mr, x, ldx, bp, kl, c, ldc, ncols);
  }
}

// ---- many rows of x, bf16 products (RMLX_GEMM=bf16 on AVX512-BF16; instantiated by the AVX-512 variants only) ----
// x and the decoded panel are rounded to bf16 (nearest even) and multiplied by vdpbf16ps, which takes two k per
// lane: 32 products an instruction against an f32 FMA's 16, with f32 sums.

// o[0, n rounded up to even) = x[0, n) as bf16, the odd tail padded with a zero.
template <int = 0>
__attribute__((target("avx512bf16"))) static void to_bf16(uint16_t *o, const float *x, int n) {
  int i = 0;
  for (; i + 32 <= n; i += 32)
    _mm512_storeu_si512((void *)(o + i), (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i)));
  if (i < n) {
    const int r = n - i, re = (r + 1) & ~1;
    const __mmask16 m0 = (__mmask16)(r >= 16 ? 0xffff : (1u << r) - 1);
    const __mmask16 m1 = (__mmask16)(r <= 16 ? 0 : r >= 32 ? 0xffff : (1u << (r - 16)) - 1);
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, x + i + 16), _mm512_maskz_loadu_ps(m0, x + i));
    _mm512_mask_storeu_epi16(o + i, (__mmask32)(re >= 32 ? 0xffffffffu : (1u << re) - 1), h);
  }
}

// Panel for columns [k0, k0 + kl) in bf16 pairs: NB/TW sub-panels, each [kp][TW] dwords (kp = kl / 2 rounded up),
// dword (p, c) holding row s * TW + c's elements k0 + 2p and k0 + 2p + 1.
template <int F>
// Rows go 8 at a time through rows8 (8 x kp dwords) into the panel, as in pack_panel.
__attribute__((target("avx512bf16"))) static void pack_panel_bf16(uint32_t *bp, float *tmp, uint32_t *rows8,
                                                                  const WeightMat &W, int64_t n0, int nr, int64_t k0,
                                                                  int kl) {
  const int kp = (kl + 1) / 2;
  for (int r0 = 0; r0 < NB; r0 += 8) {
    for (int i = 0; i < 8; i++) {
      uint32_t *pairs = rows8 + (int64_t)i * kp;
      if (r0 + i < nr) {
        decode_segment<F>(W, n0 + r0 + i, k0, kl, tmp);
        to_bf16((uint16_t *)pairs, tmp, kl);  // an odd kl's last pair gets a zero
      } else {
        for (int p = 0; p < kp; p++) pairs[p] = 0;
      }
    }
    panel_put8((const float *)rows8, kp, (float *)(bp + (int64_t)(r0 / TW) * kp * TW + r0 % TW));
  }
}

// c[MRR, ncols] += x[MRR, 2 kp] @ bp[2 kp, TW], x as bf16 pairs (row i at xb + i * ldx dwords).
template <int MRR>
__attribute__((target("avx512bf16"))) static void micro_bf16(const uint32_t *xb, int64_t ldx, const uint32_t *bp,
                                                             int kp, float *c, int64_t ldc, int ncols) {
  __m512 acc[MRR][2];
  for (int i = 0; i < MRR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int p = 0; p < kp; p++) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * TW));
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(bp + p * TW + 16));
    for (int i = 0; i < MRR; i++) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32((int)xb[i * ldx + p]);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
    }
  }
  if (ncols == TW) {
    for (int i = 0; i < MRR; i++) {
      _mm512_storeu_ps(c + i * ldc, _mm512_add_ps(_mm512_loadu_ps(c + i * ldc), acc[i][0]));
      _mm512_storeu_ps(c + i * ldc + 16, _mm512_add_ps(_mm512_loadu_ps(c + i * ldc + 16), acc[i][1]));
    }
  } else {
    alignas(64) float t[TW];
    for (int i = 0; i < MRR; i++) {
      _mm512_storeu_ps(t, acc[i][0]);
      _mm512_storeu_ps(t + 16, acc[i][1]);
      for (int j = 0; j < ncols; j++) c[i * ldc + j] += t[j];
    }
  }
}

template <int MRR = V::MR>
__attribute__((target("avx512bf16"))) static void micro_bf16_any(int mr, const uint32_t *xb, int64_t ldx,
                                                                 const uint32_t *bp, int kp, float *c, int64_t ldc,
                                                                 int ncols) {
  if constexpr (MRR >= 1) {
    if (mr == MRR) return micro_bf16<MRR>(xb, ldx, bp, kp, c, ldc, ncols);
    micro_bf16_any<MRR - 1>(mr, xb, ldx, bp, kp, c, ldc, ncols);
  }
}

// gemm_units_f with bf16 products: a unit's rows of x are rounded once for all of K (units of the same rows of
// x, as when every unit takes all of them, share that copy), and each panel once per block of KB columns.
template <int F>
__attribute__((target("avx512bf16"))) static void gemm_units_bf16(float *y, const float *x, int64_t M,
                                                                  const WeightMat &W, const float *bias,
                                                                  int64_t mchunks, int64_t mlen, int64_t u0,
                                                                  int64_t u1) {
  const int64_t N = W.N, K = W.K, ldx = (K + 1) / 2;  // dwords per row of the rounded x
  constexpr int KP = KB / 2;
  uint32_t *bp = (uint32_t *)aligned_alloc(64, sizeof(uint32_t) * NB * KP);
  float *tmp = (float *)aligned_alloc(64, sizeof(float) * (KB + 16) + sizeof(uint32_t) * 8 * KP);
  uint32_t *xb = (uint32_t *)aligned_alloc(64, ((sizeof(uint32_t) * (size_t)(mlen * ldx)) + 63) & ~(size_t)63);
  if (bp && tmp && xb) {
    uint32_t *rows8 = (uint32_t *)(tmp + KB + 16);
    int64_t xb_m0 = -1;  // the first row of x that xb holds
    for (int64_t u = u0; u < u1; u++) {
      int64_t n0 = (u / mchunks) * NB, m0 = (u % mchunks) * mlen;
      int64_t m1 = m0 + mlen < M ? m0 + mlen : M;
      int nr = (int)(N - n0 < NB ? N - n0 : NB);
      if (m0 != xb_m0) {
        for (int64_t m = m0; m < m1; m++) to_bf16((uint16_t *)(xb + (m - m0) * ldx), x + m * K, (int)K);
        xb_m0 = m0;
      }
      for (int64_t m = m0; m < m1; m++)
        for (int j = 0; j < nr; j++) y[m * N + n0 + j] = bias ? bias[n0 + j] : 0.f;
      for (int64_t k0 = 0; k0 < K; k0 += KB) {
        int kl = (int)(K - k0 < KB ? K - k0 : KB), kp = (kl + 1) / 2;
        pack_panel_bf16<F>(bp, tmp, rows8, W, n0, nr, k0, kl);
        for (int64_t m = m0; m < m1; m += V::MR) {
          int mr = (int)(m1 - m < V::MR ? m1 - m : V::MR);
          for (int s = 0; s * TW < nr; s++) {
            int nc = nr - s * TW < TW ? nr - s * TW : TW;
            micro_bf16_any(mr, xb + (m - m0) * ldx + k0 / 2, ldx, bp + (int64_t)s * kp * TW, kp,
                           y + m * N + n0 + s * TW, N, nc);
          }
        }
      }
    }
  }
  free(bp);
  free(tmp);
  free(xb);
}

#include "qkern_gemm_x16_impl.h"

// Units [u0, u1) of work, unit u = (panel u / mchunks, block u % mchunks of mlen rows of x).
template <int F>
static void gemm_units_f(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias, int64_t mchunks,
                         int64_t mlen, int64_t u0, int64_t u1) {
  if constexpr (V::L == 16) {
    // gemm_bf16_enabled() checks the CPU's AVX512-BF16 and that an AVX-512 variant is in use.
    if (gemm_bf16_enabled()) return gemm_units_bf16<F>(y, x, M, W, bias, mchunks, mlen, u0, u1);
  }
  if constexpr (gx16_format<F>()) {
    if (gemm_x16_enabled(W.exact_rows) && gx16_takes(W)) u0 = gemm_units_x16<F>(y, x, M, W, bias, mchunks, mlen, u0, u1);
    if (u0 == u1) return;
  }
  const int64_t N = W.N, K = W.K;
  float *bp = (float *)aligned_alloc(64, sizeof(float) * (NB * KB + 8 * KB));
  if (!bp) return;
  float *tmp = bp + NB * KB;
  for (int64_t u = u0; u < u1; u++) {
    int64_t n0 = (u / mchunks) * NB, m0 = (u % mchunks) * mlen;
    int64_t m1 = m0 + mlen < M ? m0 + mlen : M;
    int nr = (int)(N - n0 < NB ? N - n0 : NB);
    for (int64_t m = m0; m < m1; m++)
      for (int j = 0; j < nr; j++) y[m * N + n0 + j] = bias ? bias[n0 + j] : 0.f;
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
      int kl = (int)(K - k0 < KB ? K - k0 : KB);
      pack_panel<F>(bp, tmp, W, n0, nr, k0, kl);
      for (int64_t m = m0; m < m1; m += V::MR) {
        int mr = (int)(m1 - m < V::MR ? m1 - m : V::MR);
        for (int s = 0; s * TW < nr; s++) {
          int nc = nr - s * TW < TW ? nr - s * TW : TW;
          micro_any(mr, x + m * K + k0, K, bp + (int64_t)s * kl * TW, kl, y + m * N + n0 + s * TW, N, nc);
        }
      }
    }
  }
  free(bp);
}

// ---- entry points of the ISA namespace ----

template <typename Fn>
static void with_format(const WeightMat &W, Fn &&fn) {
  switch (fmt_code(W)) {
    case F_F32: return fn.template operator()<F_F32>();
    case F_F16: return fn.template operator()<F_F16>();
    case F_BF16: return fn.template operator()<F_BF16>();
    case F_A2: return fn.template operator()<F_A2>();
    case F_A3: return fn.template operator()<F_A3>();
    case F_A4: return fn.template operator()<F_A4>();
    case F_A5: return fn.template operator()<F_A5>();
    case F_A6: return fn.template operator()<F_A6>();
    case F_A8: return fn.template operator()<F_A8>();
    case F_FP4: return fn.template operator()<F_FP4>();
    default: return fn.template operator()<F_FP8>();
  }
}

void *gemv_prepare(const float *x, int64_t M, const WeightMat &W) {
  void *out = nullptr;
  with_format(W, [&]<int F>() {
    if constexpr (F == F_FP8) {
      if (M < kGemmMinRows) out = fp8_prepare_all(x, M, W);
    } else if (!x8_takes<F>(W, M)) {  // else x8_alloc's, or nothing
      if (x16p_takes<F>(W, M)) out = x16p_prepare_all<F>(x, M, W);
      else if (M < kGemmMinRows) out = x16_prepare_all<F>(x, M, W);
    }
  });
  return out;
}

void *x8_alloc(int64_t M, const WeightMat &W) {
  void *out = nullptr;
  with_format(W, [&]<int F>() { out = x8_alloc_f<F>(M, W); });
  return out;
}

bool x8_fill(void *prepared, const float *x, int64_t m0, int64_t m1, const WeightMat &W) {
  bool ok = false;
  with_format(W, [&]<int F>() {
    if constexpr (x8_format<F>()) ok = x8_fill_f<F>(*(X8 *)prepared, x, m0, m1, W);
  });
  return ok;
}

void gemv_tiles(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias, int64_t t0, int64_t t1,
                const void *prepared) {
  with_format(W, [&]<int F>() { gemv_tiles_f<F>(y, x, M, W, bias, t0, t1, prepared); });
}

void gemm_units(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias, int64_t mchunks,
                int64_t mlen, int64_t u0, int64_t u1) {
  with_format(W, [&]<int F>() { gemm_units_f<F>(y, x, M, W, bias, mchunks, mlen, u0, u1); });
}

void dequant_rows(float *out, const int32_t *rows, const WeightMat &W, int64_t r0, int64_t r1) {
  with_format(W, [&]<int F>() {
    for (int64_t r = r0; r < r1; r++) decode_segment<F>(W, rows ? rows[r] : r, 0, W.K, out + r * W.K);
  });
}
