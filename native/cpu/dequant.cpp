// Weight descriptions with their validation, scalar dequantization, and the row-lookup entry points
// (rmlx_dequantize_rows for quantized tables, rmlx_take_rows for float tables).
#include <cmath>

#include "quant_formats.h"

namespace rmlx {

int make_dense_mat(WeightMat &m, const char *fn, const void *w, int w_dtype, int64_t N, int64_t K) {
  if (!w) return fail(RMLX_E_INVALID, "%s: weight pointer is null", fn);
  if (N <= 0 || K <= 0) return fail(RMLX_E_INVALID, "%s: sizes must be positive (N=%lld, K=%lld)", fn, (long long)N,
                                    (long long)K);
  WKind kind;
  switch (w_dtype) {
    case RMLX_F32: kind = WKind::F32; break;
    case RMLX_F16: kind = WKind::F16; break;
    case RMLX_BF16: kind = WKind::BF16; break;
    default: return fail(RMLX_E_INVALID, "%s: weight dtype %d is not f32, f16 or bf16", fn, w_dtype);
  }
  int bits = kind == WKind::F32 ? 32 : 16;
  m = WeightMat{kind, (const uint8_t *)w, nullptr, nullptr, w_dtype, bits, 0, 1.f, N, K, K * bits / 8, 0};
  return RMLX_OK;
}

int make_quant_mat(WeightMat &m, const char *fn, const uint32_t *w, const void *scales, const void *biases,
                   int sb_dtype, int mode, int bits, int group_size, float global_scale, int64_t N, int64_t K) {
  if (!w || !scales) return fail(RMLX_E_INVALID, "%s: weight or scales pointer is null", fn);
  if (N <= 0 || K <= 0) return fail(RMLX_E_INVALID, "%s: sizes must be positive (N=%lld, K=%lld)", fn, (long long)N,
                                    (long long)K);
  WKind kind;
  float gfactor = 1.f;
  const bool exact_rows = (mode & RMLX_Q_EXACT_ROWS) != 0;
  mode &= ~RMLX_Q_EXACT_ROWS;
  switch (mode) {
    case RMLX_Q_AFFINE:
      if (bits != 2 && bits != 3 && bits != 4 && bits != 5 && bits != 6 && bits != 8)
        return fail(RMLX_E_INVALID, "%s: affine bits must be 2, 3, 4, 5, 6 or 8 (got %d)", fn, bits);
      if (group_size != 32 && group_size != 64 && group_size != 128)
        return fail(RMLX_E_INVALID, "%s: affine group size must be 32, 64 or 128 (got %d)", fn, group_size);
      if (!is_float_dtype(sb_dtype))
        return fail(RMLX_E_INVALID, "%s: scales/biases dtype %d is not f32, f16 or bf16", fn, sb_dtype);
      if (!biases) return fail(RMLX_E_INVALID, "%s: affine mode needs biases", fn);
      kind = WKind::Affine;
      break;
    case RMLX_Q_MXFP4:
    case RMLX_Q_MXFP8:
    case RMLX_Q_NVFP4: {
      const char *name = mode == RMLX_Q_MXFP4 ? "mxfp4" : mode == RMLX_Q_MXFP8 ? "mxfp8" : "nvfp4";
      int want_bits = mode == RMLX_Q_MXFP8 ? 8 : 4, want_group = mode == RMLX_Q_NVFP4 ? 16 : 32;
      if (bits != want_bits) return fail(RMLX_E_INVALID, "%s: %s needs bits %d (got %d)", fn, name, want_bits, bits);
      if (group_size != want_group)
        return fail(RMLX_E_INVALID, "%s: %s needs group size %d (got %d)", fn, name, want_group, group_size);
      kind = mode == RMLX_Q_MXFP4 ? WKind::Mxfp4 : mode == RMLX_Q_MXFP8 ? WKind::Mxfp8 : WKind::Nvfp4;
      if (mode == RMLX_Q_NVFP4 && global_scale != 0.f) {
        if (!std::isfinite(global_scale)) return fail(RMLX_E_INVALID, "%s: nvfp4 global scale is not finite", fn);
        gfactor = global_scale / (448.f * 6.f);
      }
      break;
    }
    default: return fail(RMLX_E_INVALID, "%s: unknown quantization mode %d", fn, mode);
  }
  if (K % group_size != 0)
    return fail(RMLX_E_INVALID, "%s: K=%lld is not a multiple of the group size %d", fn, (long long)K, group_size);
  m = WeightMat{kind, (const uint8_t *)w, scales, biases, sb_dtype, bits, group_size, gfactor, N, K,
                K * bits / 8, K / group_size, exact_rows};
  return RMLX_OK;
}

void dequant_range_scalar(const WeightMat &m, int64_t n, int64_t k0, int64_t len, float *out) {
  const uint8_t *row = m.w + n * m.row_bytes;
  if (m.group == 0) {
    for (int64_t i = 0; i < len; i++) out[i] = raw_value(m, row, k0 + i);
    return;
  }
  int64_t k = k0, end = k0 + len;
  while (k < end) {
    int64_t g = k / m.group, gend = (g + 1) * m.group < end ? (g + 1) * m.group : end;
    float s = group_scale(m, n, g);
    if (m.kind == WKind::Affine) {
      float b = group_bias(m, n, g);
      for (; k < gend; k++) *out++ = s * raw_value(m, row, k) + b;
    } else {
      for (; k < gend; k++) *out++ = s * raw_value(m, row, k);
    }
  }
}

}  // namespace rmlx

using namespace rmlx;

namespace {

int check_rows(const char *fn, float *out, const int32_t *rows, int64_t nrows, int64_t N) {
  if (!out) return fail(RMLX_E_INVALID, "%s: output pointer is null", fn);
  if (rows) {
    if (nrows <= 0) return fail(RMLX_E_INVALID, "%s: nrows must be positive (got %lld)", fn, (long long)nrows);
    for (int64_t r = 0; r < nrows; r++)
      if (rows[r] < 0 || rows[r] >= N)
        return fail(RMLX_E_INVALID, "%s: row index %d at %lld is outside [0, %lld)", fn, rows[r], (long long)r,
                    (long long)N);
  }
  return RMLX_OK;
}

}  // namespace

extern "C" {

int rmlx_dequantize_rows(float *out, const int32_t *rows, int64_t nrows, int64_t N, int64_t K, const uint32_t *w,
                         const void *scales, const void *biases, int sb_dtype, int mode, int bits, int group_size,
                         float global_scale) {
  WeightMat W;
  if (int st = make_quant_mat(W, "rmlx_dequantize_rows", w, scales, biases, sb_dtype, mode, bits, group_size,
                              global_scale, N, K))
    return st;
  if (int st = check_rows("rmlx_dequantize_rows", out, rows, nrows, N)) return st;
  dequant_rows(out, rows, rows ? nrows : N, W);
  return RMLX_OK;
}

int rmlx_take_rows(float *out, const int32_t *rows, int64_t nrows, int64_t N, int64_t K, const void *w, int w_dtype) {
  WeightMat W;
  if (int st = make_dense_mat(W, "rmlx_take_rows", w, w_dtype, N, K)) return st;
  if (int st = check_rows("rmlx_take_rows", out, rows, nrows, N)) return st;
  dequant_rows(out, rows, rows ? nrows : N, W);
  return RMLX_OK;
}

}  // extern "C"
