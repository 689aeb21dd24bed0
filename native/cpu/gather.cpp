// MoE products over stacked experts: the (token, expert) pairs are grouped by expert, and each expert's rows
// run as one batched product, so every expert's weights are streamed once per call.
#include <algorithm>
#include <vector>

#include "quant_formats.h"

using namespace rmlx;

namespace {

int64_t dtype_size(int dtype) { return dtype == RMLX_F32 ? 4 : 2; }

// The weight of expert e within a stack of E experts described by `all` (with N rows each).
WeightMat expert_mat(const WeightMat &all, int64_t e) {
  WeightMat m = all;
  m.w = all.w + e * all.N * all.row_bytes;
  if (all.group) {
    int64_t off = e * all.N * all.groups;
    int64_t sb = all.kind == WKind::Affine ? dtype_size(all.sb_dtype) : 1;
    m.scales = (const uint8_t *)all.scales + off * sb;
    if (all.biases) m.biases = (const uint8_t *)all.biases + off * sb;
  }
  return m;
}

int check_gather(const char *fn, float *y, const float *x, int64_t P, int64_t x_div, const int32_t *idx, int64_t E) {
  if (!y || !x || !idx) return fail(RMLX_E_INVALID, "%s: y, x or idx pointer is null", fn);
  if (P <= 0) return fail(RMLX_E_INVALID, "%s: P must be positive (got %lld)", fn, (long long)P);
  if (x_div <= 0) return fail(RMLX_E_INVALID, "%s: x_div must be positive (got %lld)", fn, (long long)x_div);
  if (E <= 0) return fail(RMLX_E_INVALID, "%s: E must be positive (got %lld)", fn, (long long)E);
  for (int64_t p = 0; p < P; p++)
    if (idx[p] < 0 || idx[p] >= E)
      return fail(RMLX_E_INVALID, "%s: expert index %d at %lld is outside [0, %lld)", fn, idx[p], (long long)p,
                  (long long)E);
  return RMLX_OK;
}

void run_gather(float *y, const float *x, int64_t P, int64_t x_div, const int32_t *idx, int64_t E,
                const WeightMat &all) {
  const int64_t K = all.K, N = all.N;
  std::vector<int64_t> start((size_t)E + 1, 0), order((size_t)P);
  for (int64_t p = 0; p < P; p++) start[(size_t)idx[p] + 1]++;
  for (int64_t e = 0; e < E; e++) start[(size_t)e + 1] += start[(size_t)e];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t p = 0; p < P; p++) order[(size_t)fill[(size_t)idx[p]]++] = p;

  std::vector<float> xg, yg;
  for (int64_t e = 0; e < E; e++) {
    int64_t b = start[(size_t)e], c = start[(size_t)e + 1] - b;
    if (c == 0) continue;
    xg.resize((size_t)(c * K));
    yg.resize((size_t)(c * N));
    for (int64_t r = 0; r < c; r++) {
      const float *src = x + (order[(size_t)(b + r)] / x_div) * K;
      std::copy(src, src + K, xg.begin() + r * K);
    }
    matmul(yg.data(), xg.data(), c, expert_mat(all, e), nullptr);
    for (int64_t r = 0; r < c; r++)
      std::copy(yg.begin() + r * N, yg.begin() + (r + 1) * N, y + order[(size_t)(b + r)] * N);
  }
}

}  // namespace

extern "C" {

int rmlx_gather_qlinear(float *y, const float *x, int64_t P, int64_t x_div, int64_t K, int64_t N, const int32_t *idx,
                        int64_t E, const uint32_t *w, const void *scales, const void *biases, int sb_dtype, int mode,
                        int bits, int group_size, float global_scale) {
  const char *fn = "rmlx_gather_qlinear";
  WeightMat W;
  if (int st = make_quant_mat(W, fn, w, scales, biases, sb_dtype, mode, bits, group_size, global_scale, N, K))
    return st;
  if (int st = check_gather(fn, y, x, P, x_div, idx, E)) return st;
  run_gather(y, x, P, x_div, idx, E, W);
  return RMLX_OK;
}

int rmlx_gather_linear(float *y, const float *x, int64_t P, int64_t x_div, int64_t K, int64_t N, const int32_t *idx,
                       int64_t E, const void *w, int w_dtype) {
  const char *fn = "rmlx_gather_linear";
  WeightMat W;
  if (int st = make_dense_mat(W, fn, w, w_dtype, N, K)) return st;
  if (int st = check_gather(fn, y, x, P, x_div, idx, E)) return st;
  run_gather(y, x, P, x_div, idx, E, W);
  return RMLX_OK;
}

}  // extern "C"
