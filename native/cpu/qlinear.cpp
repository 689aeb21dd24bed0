// rmlx_qlinear: a Linear over an MLX-quantized weight (affine, mxfp4, mxfp8, nvfp4).
#include <vector>

#include "quant_formats.h"

using namespace rmlx;

extern "C" int rmlx_qlinear(float *y, const float *x, int64_t M, int64_t K, int64_t N, const uint32_t *w,
                            const void *scales, const void *biases, int sb_dtype, int mode, int bits, int group_size,
                            float global_scale, const void *bias, int bias_dtype) {
  WeightMat W;
  if (int st = make_quant_mat(W, "rmlx_qlinear", w, scales, biases, sb_dtype, mode, bits, group_size, global_scale,
                              N, K))
    return st;
  if (!y || !x) return fail(RMLX_E_INVALID, "rmlx_qlinear: x or y pointer is null");
  if (M <= 0) return fail(RMLX_E_INVALID, "rmlx_qlinear: M must be positive (got %lld)", (long long)M);
  std::vector<float> b;
  if (bias) {
    if (!is_float_dtype(bias_dtype))
      return fail(RMLX_E_INVALID, "rmlx_qlinear: bias dtype %d is not f32, f16 or bf16", bias_dtype);
    b.resize((size_t)N);
    for (int64_t n = 0; n < N; n++) b[(size_t)n] = load_scalar(bias, bias_dtype, n);
  }
  matmul(y, x, M, W, bias ? b.data() : nullptr);
  return RMLX_OK;
}
