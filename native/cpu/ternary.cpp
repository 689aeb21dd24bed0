// Ternary Linear (BitNet b1.58): y = (xq . t) scaled, where t in {-1, 0, 1} is stored as 2-bit codes (tkern.h)
// and xq is x quantized to int8 per row as BitNet's linears do it (transformers' BitLinear / AutoBitLinear):
// s = 127 / max(max|x|, 1e-5), xq = clamp(round_half_even(x * s), -128, 127), all in f32.
// divide: y = dot / (scale * s) (BitLinear, whose weight_scale is the inverse of the weights' scale);
// otherwise y = (dot / s) * scale (AutoBitLinear, and online quantization with scale = mean|W|).
#include <cmath>
#include <vector>

#include "common.h"
#include "ops.h"
#include "threadpool.h"
#include "tkern.h"

namespace rmlx {
namespace {

void dots_scalar(const TernaryJob &j, int64_t r0, int64_t r1) {
  const int64_t N = 4 * j.R;
  for (int64_t m = 0; m < j.M; m++)
    for (int64_t r = r0; r < r1; r++) {
      int32_t s[4] = {0, 0, 0, 0};
      ternary_tail(j.w + r * j.K, j.xq + m * j.K, 0, j.K, s);
      for (int i = 0; i < 4; i++) j.dots[m * N + i * j.R + r] = s[i];
    }
}

TernaryDots pick() {
  switch (active_isa()) {
    case Isa::Avx512Vnni: return avx512vnni_t::ternary_dots;
    case Isa::Avx512:
    case Isa::Avx2: return avx2_t::ternary_dots;
    default: return dots_scalar;
  }
}

}  // namespace

int op_ternary_linear(float *y, const float *x, int64_t M, int64_t K, int64_t N, const uint8_t *w, float scale,
                      bool divide) {
  if (M < 0 || K <= 0 || N <= 0 || N % 4) return fail(RMLX_E_INVALID, "ternary_linear: bad shape M=%lld K=%lld N=%lld",
                                                      (long long)M, (long long)K, (long long)N);
  if (M == 0) return RMLX_OK;
  std::vector<int8_t> xq((size_t)(M * K));
  std::vector<float> xs((size_t)M);
  std::vector<int32_t> xsum((size_t)M), dots((size_t)(M * N));
  parallel_for(M, [&](int64_t b, int64_t e, int) {
    for (int64_t m = b; m < e; m++) {
      const float *xr = x + m * K;
      float amax = 0.f;
      for (int64_t k = 0; k < K; k++) amax = std::fmax(amax, std::fabs(xr[k]));
      const float s = 127.f / std::fmax(amax, 1e-5f);
      int32_t sum = 0;
      int8_t *q = xq.data() + m * K;
      for (int64_t k = 0; k < K; k++) {
        // |x * s| <= 127 here, so adding and removing 1.5 * 2^23 rounds half to even (the FPU's mode) in one step
        // that vectorizes, where nearbyint would be a libm call per element.
        const float v = (xr[k] * s + 12582912.f) - 12582912.f;
        q[k] = (int8_t)(v < -128.f ? -128.f : v > 127.f ? 127.f : v);
        sum += q[k];
      }
      xs[(size_t)m] = s;
      xsum[(size_t)m] = sum;
    }
  });
  const TernaryJob job{xq.data(), w, dots.data(), M, K, N / 4};
  const TernaryDots run = pick();
  parallel_for(N / 4, [&](int64_t r0, int64_t r1, int) {
    run(job, r0, r1);
    for (int64_t m = 0; m < M; m++) {
      const float s = xs[(size_t)m];
      const int32_t off = xsum[(size_t)m];
      for (int i = 0; i < 4; i++)
        for (int64_t r = r0; r < r1; r++) {
          const int64_t o = m * N + i * (N / 4) + r;
          const float d = (float)(dots[(size_t)o] - off);
          y[o] = divide ? d / (scale * s) : d / s * scale;
        }
    }
  }, 8);
  return RMLX_OK;
}

int op_relu2_mul(float *out, const float *gate, const float *up, int64_t n) {
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; i++) {
      const float g = gate[i] > 0.f ? gate[i] : 0.f;
      out[i] = g * g * up[i];
    }
  }, 1 << 14);
  return RMLX_OK;
}

}  // namespace rmlx

extern "C" int rmlx_ternary_linear(float *y, const float *x, int64_t M, int64_t K, int64_t N, const uint8_t *w,
                                   float scale, int divide) {
  return rmlx::op_ternary_linear(y, x, M, K, N, w, scale, divide != 0);
}
