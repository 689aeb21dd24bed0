// Batched decode products (a few rows of x at once) of affine 2, 4 and 8-bit weights on AVX512-VNNI, with the
// x16 arithmetic or x8's (included by qkern_impl.h inside an ISA namespace after qkern_x16_impl.h; no include guard on
// purpose).
//
// Why: the x16 row kernels keep W's layout, so each vpdpbusd multiplies the codes of one weight row with one row
// of x and the 16 int32 lanes must be reduced and scaled per unit (16 rows of a 14336x4096 4-bit product cost
// 12x one row there, 8.65x here; see the README's x16 panels). Here each thread copies a tile of 16 weight
// rows into a buffer where one 64-byte vector holds the same 4-byte word of all 16 rows, so that lane i of every
// product belongs to output i: x comes in as a 4-byte broadcast from memory, a group's integer sums are 16
// outputs wide and take one conversion and scale for all of them, and MR rows of x give 2 * MR independent
// accumulator chains.
//
// With --gemv x8 (x in int8 per group, qkern_x8_impl.h) the same tiles take x8's rows (XPanel, X8 = true): one
// vpdpbusd per 64 products instead of two, MR chains. bench kernels, 14336x4096 4-bit g64, 16 rows: 250 -> 142-146
// us a row against x8's row kernels, 5.4-5.6x one row (x16 here: 8.65-9.3x).
//
// Arithmetic: the x16 path's (qkern_x16_impl.h): x in 16-bit fixed point, step = max|x| of the group / 32639,
// rounded to nearest even; each value split into signed bytes x = 256 h + l; a group's dot is
// s * (step * (256 * sum(q * h) + sum(q * l)) + err) + b * sum(x), err the centring term. The sums are exact
// int32, so results equal the x16 row kernels' but for the order of f32 additions.
//
// Layouts. W's word d of a row (4 * CPB codes, CPB = 8 / bits) gives byte b of code plane j = (word >> 8b +
// bits * j) & mask, the code of element 4 * CPB * d + CPB * b + j. x is stored to match: per word d and plane
// j, 8 bytes: h of those 4 elements, then l of them.

template <int F>
static constexpr bool x16p_format() {
  return V::L == 16 && V::kVnni && (F == F_A2 || F == F_A4 || F == F_A8);
}

// Fewer rows take the row kernels, which stream W straight from memory: with weights read from memory (a model's
// step; 3072x1024, 1024x3072 and 2048x2048, 4-bit g64, 2-core Zen 5) the copy into the buffer made 3-6 rows up
// to 27% slower, 7 rows 3-13% faster, 16 rows 1.27-1.32x faster (with weights in cache, 3 rows already gained).
static constexpr int64_t kX16pMinRows = 7;
// Rows of x a pass over a tile's buffer.
static constexpr int kX16pMr = 8;
// From kGemmMinRows rows on, 4 and 8-bit weights whose prefill products are x16 anyway (the x16 GEMM,
// qkern_gemm_x16_impl.h: the same arithmetic but for the order of f32 additions) stay on the panels below this
// many rows: x passes over each tile's buffer in L1 while the GEMM decodes its panels for few rows. 2-core Zen 5,
// 4-bit g64, the products of Qwen3-0.6B and Llama-3.2-1B layers with weights read from memory: 32 rows 1.2-1.7x
// the GEMM's speed, 48 rows 1.0-1.3x, 64 rows 0.9-1.25x, 79 rows 0.85-1.3x (warm weights: 1.2-1.9x at 32-64
// rows, the GEMM ahead from about 112). Short prompts and batches of 32-63 sequences.
static constexpr int64_t kX16pMaxRows = 64;

template <int F>
static bool x16p_takes(const WeightMat &W, int64_t M) {
  if constexpr (!x16p_format<F>()) {
    return false;
  } else {
    // x16_takes leaves groups of 32, 64 and 128 (64 and 128 for 2 bits): whole words; K is a multiple of the group
    if (M < kX16pMinRows || !x16_takes<F>(W)) return false;
    if (M < kGemmMinRows) return true;
    return (F == F_A4 || F == F_A8) && M < kX16pMaxRows && gemm_x16_enabled(W.exact_rows);
  }
}

// x prepared for panels is an X16 (x16_filled) whose q holds, per row, 2K bytes in the order above.

#if defined(__AVX512VNNI__)
// 32 values of x as int16 in natural order -> their 64 bytes in the panel order (32 elements are whole words for
// every width taken).
template <int BITS>
static inline __m512i x16p_order32(__m512i v) {
  // per int16 lane: low byte l (signed), high byte h = (v - l) / 256
  const __m512i l = _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8);
  const __m512i h = _mm512_srai_epi16(_mm512_sub_epi16(v, l), 8);
  const __m512i t = _mm512_or_si512(_mm512_slli_epi16(h, 8), _mm512_and_si512(l, _mm512_set1_epi16(0xff)));
  // t: element e's l at byte 2e, h at byte 2e + 1
  if constexpr (BITS == 4) {
    // a 128-bit lane is one word (8 elements): planes of the even and of the odd elements
    const __m512i s = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 5, 9, 13, 0, 4, 8, 12, 3, 7, 11, 15, 2, 6, 10, 14));
    return _mm512_shuffle_epi8(t, s);
  } else if constexpr (BITS == 8) {
    const __m512i s = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 3, 5, 7, 0, 2, 4, 6, 9, 11, 13, 15, 8, 10, 12, 14));
    return _mm512_shuffle_epi8(t, s);
  } else {
    static_assert(BITS == 2);
    // a word is 16 elements over two 128-bit lanes; per lane and plane j, 16-bit units [h(j) h(4+j)] and
    // [l(j) l(4+j)] of the lane's 8 elements, then the units of both lanes side by side
    const __m512i s = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 9, 0, 8, 3, 11, 2, 10, 5, 13, 4, 12, 7, 15, 6, 14));
    const __m512i u = _mm512_shuffle_epi8(t, s);
    alignas(64) static const int16_t idx[32] = {0,  8,  1,  9,  2,  10, 3,  11, 4,  12, 5,  13, 6,  14, 7,  15,
                                                16, 24, 17, 25, 18, 26, 19, 27, 20, 28, 21, 29, 22, 30, 23, 31};
    return _mm512_permutexvar_epi16(_mm512_load_si512((const void *)idx), u);
  }
}

// x of M rows for W's products in the panel order, with each group's step, sum and centring term; false when x
// holds Inf or NaN.
template <int F>
static bool x16p_prepare(const float *x, int64_t M, const WeightMat &W, X16 &o) {
  const int64_t K = W.K, G = W.group, NG = W.groups;
  constexpr float kCentre = (float)((1 << bits_of<F>()) - 1) * 0.5f;
  const __m512i hi = _mm512_set1_epi32((int)kX16Max), lo = _mm512_set1_epi32(-(int)kX16Max);
  __m256i bad = _mm256_setzero_si256();
  for (int64_t m = 0; m < M; m++)
    for (int64_t g = 0; g < NG; g++) {
      const float *xg = x + m * K + g * G;
      __m256 sum;
      const float amax = x_group_scan(xg, G, sum, bad);
      const float step = amax / kX16Max;
      const __m512 inv = _mm512_set1_ps(amax > 0.f ? kX16Max / amax : 0.f), vstep = _mm512_set1_ps(step);
      __m512 err = _mm512_setzero_ps();
      int8_t *q = (int8_t *)o.q + m * 2 * K + 2 * g * G;
      for (int64_t i = 0; i < G; i += 32) {
        __m512i r[2];
        for (int j = 0; j < 2; j++) {
          const __m512 v = _mm512_loadu_ps(xg + i + 16 * j);
          r[j] = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), lo), hi);
          err = _mm512_add_ps(err, _mm512_fmsub_ps(_mm512_cvtepi32_ps(r[j]), vstep, v));
        }
        const __m512i v16 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(r[0])),
                                               _mm512_cvtepi32_epi16(r[1]), 1);
        _mm512_storeu_si512((void *)(q + 2 * i), x16p_order32<(int)bits_of<F>()>(v16));
      }
      o.step[m * NG + g] = step;
      o.fix[m * NG + g] = hsum8(sum);
      o.err[m * NG + g] = -kCentre * _mm512_reduce_add_ps(err);
    }
  return _mm256_testz_si256(bad, bad);
}

// x prepared once for W and shared by every thread (one allocation; free() releases it); null when x holds Inf
// or NaN or memory is short (the caller then takes the f32 path).
template <int F>
static X16 *x16p_prepare_all(const float *x, int64_t M, const WeightMat &W) {
  if constexpr (!x16p_format<F>()) {
    return nullptr;
  } else {
    return x16_filled(M, W, [&](X16 &o) { return x16p_prepare<F>(x, M, W, o); });
  }
}

// r[i] <- column i of the 16x16 matrix of 32-bit values whose row i is r[i].
static inline void x16p_transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // u[4a + c]: 128-bit lane k holds elements 4k + c of rows 4a .. 4a + 3
  for (int c = 0; c < 4; c++) {
    const __m512i a01 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), b01 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
    const __m512i a23 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    const __m512i b23 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
    // a01: lanes (k=0 of rows 0-3, k=2 of 0-3, k=0 of 4-7, k=2 of 4-7); b01 the same for k = 1, 3
    r[c] = _mm512_shuffle_i32x4(a01, a23, 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(a01, a23, 0xDD);
    r[4 + c] = _mm512_shuffle_i32x4(b01, b23, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(b01, b23, 0xDD);
  }
}

// Words [0, KW) of nr rows of 32-bit values (row i at src + i * ld) into buf[d][16], rows past nr zero.
static void x16p_repack(uint32_t *buf, const uint32_t *src, int64_t ld, int nr, int64_t KW) {
  for (int64_t d = 0; d < KW; d += 16) {
    const int64_t left = KW - d;
    const __mmask16 k = (__mmask16)(left >= 16 ? 0xffff : (1u << left) - 1);
    __m512i r[16];
    for (int i = 0; i < 16; i++)
      r[i] = i >= nr ? _mm512_setzero_si512()
             : left >= 16 ? _mm512_loadu_si512((const void *)(src + i * ld + d))
                          : _mm512_maskz_loadu_epi32(k, src + i * ld + d);
    x16p_transpose16(r);
    for (int c = 0; c < 16 && c < left; c++) _mm512_store_si512((void *)(buf + (d + c) * 16), r[c]);
  }
}

// acc += the products of the 64 code bytes w (unsigned) and the 4 signed bytes at p, broadcast. Inline assembly
// keeps the accumulators in registers (GCC 12 moves the intrinsic's tied operand through the stack).
static inline void x16p_dp(__m512i &acc, __m512i w, const int8_t *p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const int32_t *)p));
}

// One group of a tile's buffer (nw words from bw) against 8 rows of x (row m at x + m * ldq, the group's bytes
// from x on): ah and al get the group's sums of the h and of the l bytes. One statement with the word loop inside:
// written a product a statement (x16p_group), GCC 12 copied each of the 16 accumulators to another register and
// back on every word, a vector move for every product, and on a 2-core Zen 5 such moves take the vector pipes'
// slots (a loop of 16 vpdpbusd chains with them ran 3.5 G products/s a core, 8 chains without 6.0). bench kernels,
// 14336x4096 4-bit g64, per row of x: 8 rows 279 -> 243 us, 16 rows 247 -> 221 us, the same sums bit for bit.
#define RMLX_X16P_DP(o, r) "vpdpbusd " #o r "%{1to16%}, %[p], "
#define RMLX_X16P_PLANE(o)                                                                                          \
  RMLX_X16P_DP(o, "(%[x])") "%[h0]\n\t" RMLX_X16P_DP(o + 4, "(%[x])") "%[l0]\n\t"                                 \
  RMLX_X16P_DP(o, "(%[x],%[ld],1)") "%[h1]\n\t" RMLX_X16P_DP(o + 4, "(%[x],%[ld],1)") "%[l1]\n\t"                 \
  RMLX_X16P_DP(o, "(%[x],%[ld],2)") "%[h2]\n\t" RMLX_X16P_DP(o + 4, "(%[x],%[ld],2)") "%[l2]\n\t"                 \
  RMLX_X16P_DP(o, "(%[x3])") "%[h3]\n\t" RMLX_X16P_DP(o + 4, "(%[x3])") "%[l3]\n\t"                               \
  RMLX_X16P_DP(o, "(%[x],%[ld],4)") "%[h4]\n\t" RMLX_X16P_DP(o + 4, "(%[x],%[ld],4)") "%[l4]\n\t"                 \
  RMLX_X16P_DP(o, "(%[x3],%[ld],2)") "%[h5]\n\t" RMLX_X16P_DP(o + 4, "(%[x3],%[ld],2)") "%[l5]\n\t"               \
  RMLX_X16P_DP(o, "(%[x6])") "%[h6]\n\t" RMLX_X16P_DP(o + 4, "(%[x6])") "%[l6]\n\t"                               \
  RMLX_X16P_DP(o, "(%[x6],%[ld],1)") "%[h7]\n\t" RMLX_X16P_DP(o + 4, "(%[x6],%[ld],1)") "%[l7]\n\t"
#define RMLX_X16P_ZERO(a) "vpxord %[" #a "], %[" #a "], %[" #a "]\n\t"
#define RMLX_X16P_ZEROS                                                                                              \
  RMLX_X16P_ZERO(h0) RMLX_X16P_ZERO(h1) RMLX_X16P_ZERO(h2) RMLX_X16P_ZERO(h3) RMLX_X16P_ZERO(h4) RMLX_X16P_ZERO(h5)  \
  RMLX_X16P_ZERO(h6) RMLX_X16P_ZERO(h7) RMLX_X16P_ZERO(l0) RMLX_X16P_ZERO(l1) RMLX_X16P_ZERO(l2) RMLX_X16P_ZERO(l3)  \
  RMLX_X16P_ZERO(l4) RMLX_X16P_ZERO(l5) RMLX_X16P_ZERO(l6) RMLX_X16P_ZERO(l7)
#define RMLX_X16P_OPERANDS                                                                                           \
  : [h0] "=&v"(ah[0]), [h1] "=&v"(ah[1]), [h2] "=&v"(ah[2]), [h3] "=&v"(ah[3]), [h4] "=&v"(ah[4]),                \
    [h5] "=&v"(ah[5]), [h6] "=&v"(ah[6]), [h7] "=&v"(ah[7]), [l0] "=&v"(al[0]), [l1] "=&v"(al[1]),                \
    [l2] "=&v"(al[2]), [l3] "=&v"(al[3]), [l4] "=&v"(al[4]), [l5] "=&v"(al[5]), [l6] "=&v"(al[6]),                \
    [l7] "=&v"(al[7]), [t] "=&v"(t), [p] "=&v"(p), [w] "+r"(bw), [x] "+r"(x), [x3] "+r"(x3), [x6] "+r"(x6),       \
    [n] "+r"(nw)                                                                                                     \
  : [m] "v"(mask), [ld] "r"(ldq)                                                                                     \
  : "cc", "memory"

// The word loop of a group as one asm statement (x16p_group8, x8p_group8): per 64-byte word of the buffer, its code
// planes (4, 8 or 2 bits a code) against 8 rows of x; ZEROS, PLANE and OPS name the accumulators, o (o1-o3) the
// offsets of the later planes' x bytes and adv how far x moves a word.
#define RMLX_XP_LOOP4(ZEROS, PLANE, o, adv, OPS)                                                                     \
  asm(ZEROS "1:\n\t"                                                                                                \
            "vmovdqa64 (%[w]), %[t]\n\t"                                                                             \
            "vpandd %[m], %[t], %[p]\n\t" PLANE(0) "vpsrld $4, %[t], %[t]\n\t"                                       \
            "vpandd %[m], %[t], %[p]\n\t" PLANE(o) "add $64, %[w]\n\t"                                               \
            "add $" #adv ", %[x]\n\t"                                                                                \
            "add $" #adv ", %[x3]\n\t"                                                                               \
            "add $" #adv ", %[x6]\n\t"                                                                               \
            "dec %[n]\n\t"                                                                                           \
            "jnz 1b" OPS)
#define RMLX_XP_LOOP8(ZEROS, PLANE, adv, OPS)                                                                        \
  asm(ZEROS "1:\n\t"                                                                                                \
            "vmovdqa64 (%[w]), %[p]\n\t" PLANE(0) "add $64, %[w]\n\t"                                                \
            "add $" #adv ", %[x]\n\t"                                                                                \
            "add $" #adv ", %[x3]\n\t"                                                                               \
            "add $" #adv ", %[x6]\n\t"                                                                               \
            "dec %[n]\n\t"                                                                                           \
            "jnz 1b" OPS)
#define RMLX_XP_LOOP2(ZEROS, PLANE, o1, o2, o3, adv, OPS)                                                            \
  asm(ZEROS "1:\n\t"                                                                                                \
            "vmovdqa64 (%[w]), %[t]\n\t"                                                                             \
            "vpandd %[m], %[t], %[p]\n\t" PLANE(0) "vpsrld $2, %[t], %[t]\n\t"                                       \
            "vpandd %[m], %[t], %[p]\n\t" PLANE(o1) "vpsrld $2, %[t], %[t]\n\t"                                      \
            "vpandd %[m], %[t], %[p]\n\t" PLANE(o2) "vpsrld $2, %[t], %[t]\n\t"                                      \
            "vpandd %[m], %[t], %[p]\n\t" PLANE(o3) "add $64, %[w]\n\t"                                              \
            "add $" #adv ", %[x]\n\t"                                                                                \
            "add $" #adv ", %[x3]\n\t"                                                                               \
            "add $" #adv ", %[x6]\n\t"                                                                               \
            "dec %[n]\n\t"                                                                                           \
            "jnz 1b" OPS)

template <int BITS>
static inline void x16p_group8(__m512i (&ah)[8], __m512i (&al)[8], const uint32_t *bw, const int8_t *x, int64_t ldq,
                               int64_t nw, __m512i mask) {
  const int8_t *x3 = x + 3 * ldq, *x6 = x + 6 * ldq;
  __m512i t, p;
  if constexpr (BITS == 4) {
    RMLX_XP_LOOP4(RMLX_X16P_ZEROS, RMLX_X16P_PLANE, 8, 16, RMLX_X16P_OPERANDS);
  } else if constexpr (BITS == 8) {
    RMLX_XP_LOOP8(RMLX_X16P_ZEROS, RMLX_X16P_PLANE, 8, RMLX_X16P_OPERANDS);
  } else {
    static_assert(BITS == 2);
    RMLX_XP_LOOP2(RMLX_X16P_ZEROS, RMLX_X16P_PLANE, 8, 16, 24, 32, RMLX_X16P_OPERANDS);
  }
}

// x16p_group8 with x in 8 bits: one sum a row, 4 bytes of x a word and code plane.
#define RMLX_X8P_PLANE(o)                                                                                           \
  RMLX_X16P_DP(o, "(%[x])") "%[a0]\n\t" RMLX_X16P_DP(o, "(%[x],%[ld],1)") "%[a1]\n\t"                              \
  RMLX_X16P_DP(o, "(%[x],%[ld],2)") "%[a2]\n\t" RMLX_X16P_DP(o, "(%[x3])") "%[a3]\n\t"                             \
  RMLX_X16P_DP(o, "(%[x],%[ld],4)") "%[a4]\n\t" RMLX_X16P_DP(o, "(%[x3],%[ld],2)") "%[a5]\n\t"                     \
  RMLX_X16P_DP(o, "(%[x6])") "%[a6]\n\t" RMLX_X16P_DP(o, "(%[x6],%[ld],1)") "%[a7]\n\t"
#define RMLX_X8P_ZEROS                                                                                               \
  RMLX_X16P_ZERO(a0) RMLX_X16P_ZERO(a1) RMLX_X16P_ZERO(a2) RMLX_X16P_ZERO(a3) RMLX_X16P_ZERO(a4) RMLX_X16P_ZERO(a5)  \
  RMLX_X16P_ZERO(a6) RMLX_X16P_ZERO(a7)
#define RMLX_X8P_OPERANDS                                                                                            \
  : [a0] "=&v"(a[0]), [a1] "=&v"(a[1]), [a2] "=&v"(a[2]), [a3] "=&v"(a[3]), [a4] "=&v"(a[4]), [a5] "=&v"(a[5]),  \
    [a6] "=&v"(a[6]), [a7] "=&v"(a[7]), [t] "=&v"(t), [p] "=&v"(p), [w] "+r"(bw), [x] "+r"(x), [x3] "+r"(x3),    \
    [x6] "+r"(x6), [n] "+r"(nw)                                                                                      \
  : [m] "v"(mask), [ld] "r"(ldq)                                                                                     \
  : "cc", "memory"

template <int BITS>
static inline void x8p_group8(__m512i (&a)[8], const uint32_t *bw, const int8_t *x, int64_t ldq, int64_t nw,
                              __m512i mask) {
  const int8_t *x3 = x + 3 * ldq, *x6 = x + 6 * ldq;
  __m512i t, p;
  if constexpr (BITS == 4) {
    RMLX_XP_LOOP4(RMLX_X8P_ZEROS, RMLX_X8P_PLANE, 4, 8, RMLX_X8P_OPERANDS);
  } else if constexpr (BITS == 8) {
    RMLX_XP_LOOP8(RMLX_X8P_ZEROS, RMLX_X8P_PLANE, 4, RMLX_X8P_OPERANDS);
  } else {
    static_assert(BITS == 2);
    RMLX_XP_LOOP2(RMLX_X8P_ZEROS, RMLX_X8P_PLANE, 4, 8, 12, 16, RMLX_X8P_OPERANDS);
  }
}
#undef RMLX_X8P_OPERANDS
#undef RMLX_X8P_ZEROS
#undef RMLX_X8P_PLANE
#undef RMLX_XP_LOOP4
#undef RMLX_XP_LOOP8
#undef RMLX_XP_LOOP2
#undef RMLX_X16P_OPERANDS
#undef RMLX_X16P_ZEROS
#undef RMLX_X16P_ZERO
#undef RMLX_X16P_PLANE
#undef RMLX_X16P_DP

// The next tile's weights, brought towards the cache a few lines a group while this tile computes: read only
// when its copy begins, they stalled that copy on memory (a copy of loads alone has no products to overlap the
// misses with, and a burst of prefetches there filled the miss buffers), as much time as the products took.
struct X16pAhead {
  const char *p, *end;
  int64_t per_group;
  void step() {
    for (int64_t i = 0; i < per_group && p < end; i++, p += 64) _mm_prefetch(p, _MM_HINT_T0);
  }
};

// x16p_group8 and x8p_group8 for any MR rows, a product a statement (X8: x in 8 bits, 4 bytes a word and code
// plane and one sum a row, al left untouched).
template <int BITS, int WPG, int MR, bool X8>
static inline void x16p_group(__m512i (&ah)[MR], __m512i (&al)[MR], const uint32_t *bw, const int8_t *xg, int64_t ldq,
                              __m512i mask) {
  constexpr int CPB = 8 / BITS;
  for (int m = 0; m < MR; m++) ah[m] = al[m] = _mm512_setzero_si512();
#pragma GCC unroll 4
  for (int d = 0; d < WPG; d++) {
    const __m512i wv = _mm512_load_si512((const void *)(bw + d * 16));
    for (int j = 0; j < CPB; j++) {
      const __m512i p = BITS == 8 ? wv : _mm512_and_si512(j == 0 ? wv : _mm512_srli_epi32(wv, BITS * j), mask);
      const int8_t *xp = xg + (d * CPB + j) * (X8 ? 4 : 8);
      for (int m = 0; m < MR; m++) {
        x16p_dp(ah[m], p, xp + m * ldq);
        if constexpr (!X8) x16p_dp(al[m], p, xp + m * ldq + 4);
      }
    }
  }
}

// MR rows of x (from xq, rows ldq bytes apart; their steps, sums and terms ldg apart) against groups [g0, g1)
// of a tile, whose buffer holds those groups' words: tot[m] += those groups' part of the 16 outputs of row m.
// X8: x in 8 bits (one sum a group) instead of 16 (the h and l bytes' sums).
template <int BITS, int GS, int MR, bool X8>
static void x16p_rows(const uint32_t *buf, const float *scT, const float *biT, const int8_t *xq, int64_t ldq,
                      const float *step, const float *fix, const float *err, int64_t ldg, int64_t g0, int64_t g1,
                      __m512 tot[], X16pAhead &ahead) {
  constexpr int CPB = 8 / BITS, WPG = GS * BITS / 32;
  const __m512i mask = _mm512_set1_epi8((char)((1 << BITS) - 1));
  for (int64_t g = g0; g < g1; g++) {
    __m512i ah[MR], al[MR];
    const uint32_t *bw = buf + (g - g0) * WPG * 16;
    const int8_t *xg = xq + g * WPG * CPB * (X8 ? 4 : 8);
    if constexpr (X8 && MR == 8) x8p_group8<BITS>(ah, bw, xg, ldq, WPG, mask);
    else if constexpr (MR == 8) x16p_group8<BITS>(ah, al, bw, xg, ldq, WPG, mask);
    else x16p_group<BITS, WPG, MR, X8>(ah, al, bw, xg, ldq, mask);
    ahead.step();
    const __m512 sc = _mm512_load_ps(scT + g * 16), bi = _mm512_load_ps(biT + g * 16);
    for (int m = 0; m < MR; m++) {
      const __m512i a = X8 ? ah[m] : _mm512_add_epi32(_mm512_slli_epi32(ah[m], 8), al[m]);
      const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(step[m * ldg + g]),
                                       _mm512_set1_ps(err[m * ldg + g]));
      tot[m] = _mm512_fmadd_ps(bi, _mm512_set1_ps(fix[m * ldg + g]), _mm512_fmadd_ps(f, sc, tot[m]));
    }
  }
}

// The fewest rows a pass takes.
static constexpr int kX16pMinPass = 4;
static_assert(kX16pMinRows >= kX16pMinPass && kX16pMr < 2 * kX16pMinPass + 1, "passes of 4 to 8 rows");

// Rows of the next pass when `left` rows remain: whole passes of kX16pMr (those run x16p_group8), and a rest of
// fewer than kX16pMinPass rows shared with the pass before it.
static inline int64_t x16p_pass_rows(int64_t left) {
  if (left == kX16pMr || left >= kX16pMr + kX16pMinPass) return kX16pMr;
  return left > kX16pMr ? (left + 1) / 2 : left;
}

// The same for any mr in [kX16pMinPass, MR].
template <int BITS, int GS, bool X8, int MR = kX16pMr>
static void x16p_rows_any(int mr, const uint32_t *buf, const float *scT, const float *biT, const int8_t *xq,
                          int64_t ldq, const float *step, const float *fix, const float *err, int64_t ldg, int64_t g0,
                          int64_t g1, __m512 tot[], X16pAhead &ahead) {
  if constexpr (MR >= kX16pMinPass) {
    if (mr == MR) return x16p_rows<BITS, GS, MR, X8>(buf, scT, biT, xq, ldq, step, fix, err, ldg, g0, g1, tot, ahead);
    x16p_rows_any<BITS, GS, X8, MR - 1>(mr, buf, scT, biT, xq, ldq, step, fix, err, ldg, g0, g1, tot, ahead);
  }
}

// Elements of a block of K: its words of the tile and its bytes of 8 rows of x stay in L1 (at K = 4096 the
// whole rows did not, and a pass ran from L2 about 1.3x slower).
static constexpr int64_t kX16pBlock = 1024;

// x prepared for the panels, 16 or 8 bits (qkern_x8_impl.h's x8p): q's rows are 2K or K bytes in the panel order,
// each group's step, sum and centring term as in X16.
struct XPanel {
  const int8_t *q;
  const float *step, *fix, *err;
};

// y for rows of the tiles [t0, t1) (kGemvTile = 16 rows of W each), all M rows of x; false when memory is short.
template <int F, int GS, bool X8>
static bool x16p_tiles_g(float *y, const XPanel &xq, int64_t M, const WeightMat &W, const float *bias, int64_t t0,
                         int64_t t1) {
  static_assert(kGemvTile == 16, "a tile is one vector of outputs");
  constexpr int BITS = (int)bits_of<F>();
  constexpr int64_t WPG = GS * BITS / 32;
  const int64_t N = W.N, K = W.K, NG = W.groups, NGp = (NG + 15) & ~(int64_t)15;
  const int64_t GB = kX16pBlock / GS;  // groups a block
  const size_t bufbytes = sizeof(uint32_t) * (size_t)(16 * ((GB * WPG + 15) & ~(int64_t)15));
  char *mem = (char *)aligned_alloc(64, bufbytes + sizeof(float) * (size_t)(4 * 16 * NGp));
  if (!mem) return false;
  uint32_t *buf = (uint32_t *)mem;
  float *rs = (float *)(mem + bufbytes);
  float *rb = rs + 16 * NGp, *scT = rb + 16 * NGp, *biT = scT + 16 * NGp;
  int64_t passes = 0;
  for (int64_t m = 0; m < M; passes++) m += x16p_pass_rows(M - m);
  const int64_t ldq = X8 ? K : 2 * K;  // bytes of a row of x
  __m512 tot[kX16pMaxRows];
  for (int64_t t = t0; t < t1; t++) {
    const int64_t n0 = t * 16;
    const int nr = (int)(N - n0 < 16 ? N - n0 : 16);
    const uint32_t *rows = (const uint32_t *)(W.w + n0 * W.row_bytes);
    X16pAhead ahead{nullptr, nullptr, 0};
    if (t + 1 < t1) {
      const int64_t bytes = (N - n0 - 16 < 16 ? N - n0 - 16 : 16) * W.row_bytes;
      ahead.p = (const char *)W.w + (n0 + 16) * W.row_bytes;
      ahead.end = ahead.p + bytes;
      ahead.per_group = (bytes / 64 + NG * passes - 1) / (NG * passes);
    }
    for (int r = 0; r < nr; r++) {
      RowCtx rc{rs + r * NGp, rb + r * NGp, nullptr, 0, nullptr};
      row_prep<F>(W, n0 + r, 0, NG, rc);
    }
    x16p_repack((uint32_t *)scT, (const uint32_t *)rs, NGp, nr, NG);
    x16p_repack((uint32_t *)biT, (const uint32_t *)rb, NGp, nr, NG);
    for (int64_t m = 0; m < M; m++) tot[m] = _mm512_setzero_ps();
    for (int64_t g0 = 0; g0 < NG; g0 += GB) {
      const int64_t g1 = g0 + GB < NG ? g0 + GB : NG;
      x16p_repack(buf, rows + g0 * WPG, W.row_bytes / 4, nr, (g1 - g0) * WPG);
      for (int64_t m = 0; m < M;) {
        const int mr = (int)x16p_pass_rows(M - m);
        x16p_rows_any<BITS, GS, X8>(mr, buf, scT, biT, xq.q + m * ldq, ldq, xq.step + m * NG, xq.fix + m * NG,
                                    xq.err + m * NG, NG, g0, g1, tot + m, ahead);
        m += mr;
      }
    }
    const __mmask16 keep = (__mmask16)(nr >= 16 ? 0xffff : (1u << nr) - 1);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(keep, bias + n0) : _mm512_setzero_ps();
    for (int64_t m = 0; m < M; m++) _mm512_mask_storeu_ps(y + m * N + n0, keep, _mm512_add_ps(tot[m], b));
  }
  free(mem);
  return true;
}

template <int F, bool X8>
static bool xpanel_tiles(float *y, const XPanel &xq, int64_t M, const WeightMat &W, const float *bias, int64_t t0,
                         int64_t t1) {
  switch (W.group) {
    case 32:
      if constexpr (F != F_A2) return x16p_tiles_g<F, 32, X8>(y, xq, M, W, bias, t0, t1);
      return false;
    case 64: return x16p_tiles_g<F, 64, X8>(y, xq, M, W, bias, t0, t1);
    default: return x16p_tiles_g<F, 128, X8>(y, xq, M, W, bias, t0, t1);
  }
}

template <int F>
static bool x16p_tiles(float *y, const X16 &xq, int64_t M, const WeightMat &W, const float *bias, int64_t t0,
                       int64_t t1) {
  if constexpr (!x16p_format<F>()) {
    return false;
  } else {
    return xpanel_tiles<F, false>(y, XPanel{(const int8_t *)xq.q, xq.step, xq.fix, xq.err}, M, W, bias, t0, t1);
  }
}
#else
template <int F>
static X16 *x16p_prepare_all(const float *, int64_t, const WeightMat &) {
  return nullptr;
}
template <int F>
static bool x16p_tiles(float *, const X16 &, int64_t, const WeightMat &, const float *, int64_t, int64_t) {
  return false;
}
#endif
