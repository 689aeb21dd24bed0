// Weight formats read by the product kernels: dense f32/f16/bf16 and MLX's quantized layouts (affine 2-8 bit,
// mxfp4, mxfp8, nvfp4). A WeightMat describes one [N, K] matrix; every kernel variant (scalar, AVX2, AVX-512)
// reads it through the same description, so validation and layout arithmetic live here once.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace rmlx {

enum class WKind : int { F32, F16, BF16, Affine, Mxfp4, Mxfp8, Nvfp4 };

struct WeightMat {
  WKind kind;
  const uint8_t *w;     // row n starts at w + n * row_bytes
  const void *scales;   // [N, groups]: sb_dtype for affine, uint8 for fp modes
  const void *biases;   // affine only
  int sb_dtype;
  int bits;             // element bits (dense: 32 or 16)
  int group;            // values per scale (dense: 0)
  float gfactor;        // nvfp4: global_scale / (448 * 6), or 1
  int64_t N, K;
  int64_t row_bytes;    // bytes of one packed row
  int64_t groups;       // groups per row (dense: 0)
  bool exact_rows = false;  // RMLX_Q_EXACT_ROWS: many-row products stay f32 in the auto gemm mode
};

// E2M1 magnitudes by the low three bits of a nibble; bit 3 is the sign.
static constexpr float kFp4Mag[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};

static inline float fp4_value(uint32_t nib) {
  float m = kFp4Mag[nib & 7];
  return (nib & 8) ? -m : m;
}

// OCP E4M3 (the "fn" variant: bias 7, no infinities, 448 at 0x7e, S.1111.111 is NaN).
static inline float e4m3_value(uint32_t b) {
  uint32_t e = (b >> 3) & 15, m = b & 7;
  float v;
  if ((b & 0x7f) == 0x7f) v = __builtin_nanf("");
  else if (e == 0) v = (float)m * (1.f / 512.f);
  else {
    uint32_t u = ((e + 120) << 23) | (m << 20);
    std::memcpy(&v, &u, 4);
  }
  return (b & 0x80) ? -v : v;
}

// All 256 E4M3 values, for decoding scales by lookup.
struct E4M3Table {
  float v[256];
  constexpr E4M3Table() : v() {
    for (int b = 0; b < 256; b++) {
      int e = (b >> 3) & 15, m = b & 7;
      float x;
      if ((b & 0x7f) == 0x7f) x = __builtin_nanf("");
      else if (e == 0) x = (float)m / 512.f;
      else {
        x = 1.f + (float)m / 8.f;
        for (int i = 7; i < e; i++) x *= 2.f;
        for (int i = e; i < 7; i++) x /= 2.f;
      }
      v[b] = (b & 0x80) ? -x : x;
    }
  }
  constexpr float operator[](int i) const { return v[i]; }
};
inline constexpr E4M3Table kE4M3{};

// E8M0: 2^(s-127). MLX reads 0 as 2^-127 (a subnormal float) and 255 as infinity.
static inline float e8m0_value(uint32_t s) {
  uint32_t u = s == 0 ? 0x00400000u : (s << 23);
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// The multiplier of group g of row n (affine: scale; fp modes: the decoded scale times the global factor).
static inline float group_scale(const WeightMat &m, int64_t n, int64_t g) {
  int64_t i = n * m.groups + g;
  switch (m.kind) {
    case WKind::Affine: return load_scalar(m.scales, m.sb_dtype, i);
    case WKind::Mxfp4:
    case WKind::Mxfp8: return e8m0_value(((const uint8_t *)m.scales)[i]);
    case WKind::Nvfp4: return kE4M3[((const uint8_t *)m.scales)[i]] * m.gfactor;
    default: return 1.f;
  }
}

static inline float group_bias(const WeightMat &m, int64_t n, int64_t g) {
  return m.kind == WKind::Affine ? load_scalar(m.biases, m.sb_dtype, n * m.groups + g) : 0.f;
}

// Quantized code of element k of a row (bit stream, least significant bits first). Reads only bytes that hold
// part of the value, so it never touches memory past the row.
static inline uint32_t packed_code(const uint8_t *row, int64_t k, int bits) {
  int64_t bit = k * bits;
  const uint8_t *p = row + (bit >> 3);
  int sh = (int)(bit & 7);
  uint32_t v = p[0];
  if (sh + bits > 8) v |= (uint32_t)p[1] << 8;
  return (v >> sh) & ((1u << bits) - 1);
}

// Raw element k of row n before its group's scale and bias (dense: the value itself).
static inline float raw_value(const WeightMat &m, const uint8_t *row, int64_t k) {
  switch (m.kind) {
    case WKind::F32: return ((const float *)row)[k];
    case WKind::F16: return f16_to_f32(((const uint16_t *)row)[k]);
    case WKind::BF16: return bf16_to_f32(((const uint16_t *)row)[k]);
    case WKind::Affine: return (float)packed_code(row, k, m.bits);
    case WKind::Mxfp4:
    case WKind::Nvfp4: return fp4_value(packed_code(row, k, 4));
    case WKind::Mxfp8: return e4m3_value(row[k]);
  }
  return 0.f;
}

// Validation shared by every entry point; each returns RMLX_OK or an RMLX_E_INVALID status with a message.
int make_dense_mat(WeightMat &m, const char *fn, const void *w, int w_dtype, int64_t N, int64_t K);
int make_quant_mat(WeightMat &m, const char *fn, const uint32_t *w, const void *scales, const void *biases,
                   int sb_dtype, int mode, int bits, int group_size, float global_scale, int64_t N, int64_t K);

// Dequantizes elements [k0, k0 + len) of row n to f32 (scalar; any range).
void dequant_range_scalar(const WeightMat &m, int64_t n, int64_t k0, int64_t len, float *out);

// A product's bias[0..N) of dtype dt (f32, f16 or bf16) as f32, the kernels' bias; empty when bias is null.
std::vector<float> bias_f32(const void *bias, int dt, int64_t N);
// y[M, N] = x[M, K] @ W^T (+ bias, f32, may be null), using the active ISA and all threads.
void matmul(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias);
// ys[i] = x @ Ws[i]^T (+ biases[i], f32, each may be null) for n weights of one format, K and group (a layer's
// q/k/v or gate/up projections): x is prepared once and the tiles of all of them share one dispatch. Few rows of x
// only (M < kGemmMinRows).
void matmul_many(float *const *ys, const float *x, int64_t M, const WeightMat *Ws, const float *const *biases, int n);
// out[r, :] = dequant(W)[rows ? rows[r] : r, :] for r < nrows, using the active ISA and all threads.
void dequant_rows(float *out, const int32_t *rows, int64_t nrows, const WeightMat &W);

// Work split shared by the dispatcher (which owns the thread pool) and the SIMD variants (which do the work).
constexpr int64_t kGemvTile = 16;     // rows of W per unit when x has few rows
constexpr int64_t kPanelRows = 64;    // rows of W per panel when x has many rows
constexpr int64_t kGemmMinRows = 32;  // from this many rows of x on, panels are decoded once and reused (the x16
                                      // panels keep some 4 and 8-bit weights further: kX16pMaxRows)
constexpr int64_t kMChunk = 96;       // rows of x per unit when W has too few panels to keep every thread busy

// The SIMD variants (qkern_avx2.cpp, qkern_avx512.cpp, qkern_avx512vnni.cpp): each function does a range of the
// work units above.
#define RMLX_DECLARE_QKERN(ns)                                                                                    \
  namespace ns {                                                                                                  \
  /* x prepared once for the x16 or mxfp8 decode kernels, or null (the f32 path, or the GEMM from            \
     kGemmMinRows rows on: only the x16 panels take some such M); release with free() */                       \
  void *gemv_prepare(const float *x, int64_t M, const WeightMat &W);                                              \
  /* x8 products (qkern_x8_impl.h): room for M rows of x prepared for W, or null where W or M does not take   \
     them; x8_fill quantizes rows [m0, m1) into it, false when they hold Inf or NaN */                         \
  void *x8_alloc(int64_t M, const WeightMat &W);                                                                  \
  bool x8_fill(void *prepared, const float *x, int64_t m0, int64_t m1, const WeightMat &W);                      \
  void gemv_tiles(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias, int64_t t0,          \
                  int64_t t1, const void *prepared);                                                              \
  void gemm_units(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias, int64_t mchunks,     \
                  int64_t mlen, int64_t u0, int64_t u1);                                                          \
  void dequant_rows(float *out, const int32_t *rows, const WeightMat &W, int64_t r0, int64_t r1);                 \
  }
RMLX_DECLARE_QKERN(avx2_k)
RMLX_DECLARE_QKERN(avx512_k)
RMLX_DECLARE_QKERN(avx512vnni_k)
#undef RMLX_DECLARE_QKERN

}  // namespace rmlx
