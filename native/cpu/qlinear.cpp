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
  if (bias && !is_float_dtype(bias_dtype))
    return fail(RMLX_E_INVALID, "rmlx_qlinear: bias dtype %d is not f32, f16 or bf16", bias_dtype);
  const std::vector<float> b = bias_f32(bias, bias_dtype, N);
  matmul(y, x, M, W, bias ? b.data() : nullptr);
  return RMLX_OK;
}
