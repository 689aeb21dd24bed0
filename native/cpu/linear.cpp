// Dense and quantized products: the ISA dispatcher, the scalar kernel (the plain reference the SIMD variants
// must agree with), and rmlx_linear for f32/f16/bf16 weights.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <vector>

#include "quant_formats.h"
#include "threadpool.h"

namespace rmlx {

namespace scalar_k {

// One weight row is dequantized once into a thread-local buffer, then dotted with every row of x.
void matmul(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias) {
  const int64_t K = W.K, N = W.N;
  parallel_for(
      N,
      [&](int64_t nb, int64_t ne, int) {
        std::vector<float> row((size_t)K);
        for (int64_t n = nb; n < ne; n++) {
          dequant_range_scalar(W, n, 0, K, row.data());
          for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            float acc = 0.f;
            for (int64_t k = 0; k < K; k++) acc += xm[k] * row[(size_t)k];
            y[m * N + n] = acc + (bias ? bias[n] : 0.f);
          }
        }
      },
      4);
}

}  // namespace scalar_k

namespace {

// The SIMD variant's entry points for an ISA other than scalar, picked in one place.
struct SimdKernels {
  decltype(&avx2_k::gemv_prepare) gemv_prepare;
  decltype(&avx2_k::x8_alloc) x8_alloc;
  decltype(&avx2_k::x8_fill) x8_fill;
  decltype(&avx2_k::gemv_tiles) gemv_tiles;
  decltype(&avx2_k::gemm_units) gemm_units;
  decltype(&avx2_k::dequant_rows) dequant_rows;
};

#define RMLX_SIMD_KERNELS(ns) SimdKernels{ns::gemv_prepare, ns::x8_alloc, ns::x8_fill, ns::gemv_tiles, ns::gemm_units, ns::dequant_rows}
const SimdKernels kAvx2 = RMLX_SIMD_KERNELS(avx2_k), kAvx512 = RMLX_SIMD_KERNELS(avx512_k),
                  kAvx512Vnni = RMLX_SIMD_KERNELS(avx512vnni_k);
#undef RMLX_SIMD_KERNELS

const SimdKernels &simd(Isa isa) { return isa == Isa::Avx512Vnni ? kAvx512Vnni : isa == Isa::Avx512 ? kAvx512 : kAvx2; }

}  // namespace

// x prepared once for W's products (the x8, x16 and mxfp8 kernels), not by each thread; the x8 kernels take
// prefill shapes too. What x becomes depends on W's format, K and group, and on M (the x16 panels take some M
// from kGemmMinRows on). Null: the kernels read x as it is (the GEMM from kGemmMinRows rows on).
static void *prepare_x(const SimdKernels &k, const float *x, int64_t M, const WeightMat &W) {
  void *prepared = k.x8_alloc(M, W);
  if (!prepared) return k.gemv_prepare(x, M, W);
  std::atomic<bool> ok{true};
  parallel_for(M, [&](int64_t b, int64_t e, int) {
    if (!k.x8_fill(prepared, x, b, e, W)) ok = false;
  }, 8);
  if (ok) return prepared;
  free(prepared);
  return nullptr;
}

void matmul(float *y, const float *x, int64_t M, const WeightMat &W, const float *bias) {
  Isa isa = active_isa();
  if (isa == Isa::Scalar) return scalar_k::matmul(y, x, M, W, bias);
  const SimdKernels &k = simd(isa);
  void *prepared = prepare_x(k, x, M, W);
  if (prepared || M < kGemmMinRows) {
    parallel_for((W.N + kGemvTile - 1) / kGemvTile,
                 [&](int64_t b, int64_t e, int) { k.gemv_tiles(y, x, M, W, bias, b, e, prepared); });
    free(prepared);
    return;
  }
  // Rows of W are the first split; when they are too few to occupy every thread, rows of x are split as well
  // (each such unit decodes its panels again, a small cost next to its products).
  int64_t panels = (W.N + kPanelRows - 1) / kPanelRows;
  int64_t mchunks = panels >= 4 * pool_size() ? 1 : (M + kMChunk - 1) / kMChunk;
  int64_t mlen = (M + mchunks - 1) / mchunks;
  mchunks = (M + mlen - 1) / mlen;
  parallel_for(panels * mchunks, [&](int64_t b, int64_t e, int) { k.gemm_units(y, x, M, W, bias, mchunks, mlen, b, e); });
}

void matmul_many(float *const *ys, const float *x, int64_t M, const WeightMat *Ws, const float *const *biases,
                 int n) {
  Isa isa = active_isa();
  if (isa == Isa::Scalar || n == 1) {
    for (int i = 0; i < n; i++) matmul(ys[i], x, M, Ws[i], biases[i]);
    return;
  }
  const SimdKernels &k = simd(isa);
  void *prepared = prepare_x(k, x, M, Ws[0]);  // the weights share the format, K and group
  // tile t of the whole is tile t - first[i] of the weight i whose tiles [first[i], first[i + 1]) hold it
  std::vector<int64_t> first((size_t)n + 1, 0);
  for (int i = 0; i < n; i++) first[i + 1] = first[i] + (Ws[i].N + kGemvTile - 1) / kGemvTile;
  parallel_for(first[n], [&](int64_t b, int64_t e, int) {
    for (int i = 0; i < n; i++) {
      const int64_t t0 = std::max(b, first[i]), t1 = std::min(e, first[i + 1]);
      if (t0 < t1) k.gemv_tiles(ys[i], x, M, Ws[i], biases[i], t0 - first[i], t1 - first[i], prepared);
    }
  });
  free(prepared);
}

std::vector<float> bias_f32(const void *bias, int dt, int64_t N) {
  std::vector<float> b;
  if (!bias) return b;
  b.resize((size_t)N);
  for (int64_t n = 0; n < N; n++) b[(size_t)n] = load_scalar(bias, dt, n);
  return b;
}

void dequant_rows(float *out, const int32_t *rows, int64_t nrows, const WeightMat &W) {
  Isa isa = active_isa();
  if (isa == Isa::Scalar) {
    parallel_for(
        nrows,
        [&](int64_t b, int64_t e, int) {
          for (int64_t r = b; r < e; r++) dequant_range_scalar(W, rows ? rows[r] : r, 0, W.K, out + r * W.K);
        },
        8);
    return;
  }
  auto fn = simd(isa).dequant_rows;
  parallel_for(nrows, [&](int64_t b, int64_t e, int) { fn(out, rows, W, b, e); }, 8);
}

}  // namespace rmlx

using namespace rmlx;

extern "C" int rmlx_linear(float *y, const float *x, int64_t M, int64_t K, int64_t N, const void *w, int w_dtype,
                           const void *bias) {
  WeightMat W;
  if (int st = make_dense_mat(W, "rmlx_linear", w, w_dtype, N, K)) return st;
  if (!y || !x) return fail(RMLX_E_INVALID, "rmlx_linear: x or y pointer is null");
  if (M <= 0) return fail(RMLX_E_INVALID, "rmlx_linear: M must be positive (got %lld)", (long long)M);
  const std::vector<float> b = bias_f32(bias, w_dtype, N);
  matmul(y, x, M, W, bias ? b.data() : nullptr);
  return RMLX_OK;
}
