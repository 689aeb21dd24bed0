// Normalisation (RMSNorm, LayerNorm) and rotary position embedding.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"
#include "threadpool.h"

namespace rmlx {
namespace {

// Weight rows are read once per row of x; converting them up front keeps the inner loop in f32. The buffer is
// the calling thread's and grows once, so that a decode step's norms allocate nothing; 16-bit weights convert
// with the ISA's kernels (these norms run a few times a layer on rows of 128-4096, where a scalar conversion and a
// heap allocation a call were most of their time).
const float *weights_f32(const void *w, int dt, int64_t n, float add, std::vector<float> &buf) {
  if (!w) return nullptr;
  if (dt == RMLX_F32 && add == 0.f) return (const float *)w;
  if ((int64_t)buf.size() < n) buf.resize((size_t)n);
  float *o = buf.data();
  const Kern &k = kern();
  if (dt == RMLX_BF16) k.bf16_to_f32(o, (const uint16_t *)w, n);
  else if (dt == RMLX_F16) k.f16_to_f32(o, (const uint16_t *)w, n);
  else
    for (int64_t i = 0; i < n; i++) o[i] = load_scalar(w, dt, i);
  if (add != 0.f)
    for (int64_t i = 0; i < n; i++) o[i] += add;
  return o;
}

}  // namespace

int op_rmsnorm(float *out, const float *x, const void *w, int wdt, int64_t rows, int64_t n, float eps, bool one_plus) {
  if (w && !is_float_dtype(wdt)) return fail(RMLX_E_UNSUPPORTED, "rms_norm: weight dtype %d", wdt);
  thread_local std::vector<float> wbuf;
  const float *wp = weights_f32(w, wdt, n, one_plus ? 1.f : 0.f, wbuf);
  const Kern &k = kern();
  parallel_for(rows, [&](int64_t b, int64_t e, int) {
    for (int64_t r = b; r < e; r++) {
      const float *xr = x + r * n;
      float inv = 1.f / std::sqrt(k.sumsq(xr, n) / (float)n + eps);
      k.scale_mul(out + r * n, xr, inv, wp, n);
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)));
  return RMLX_OK;
}

int op_layernorm(float *out, const float *x, const void *w, int wdt, const void *b, int bdt, int64_t rows, int64_t n,
                 float eps) {
  if ((w && !is_float_dtype(wdt)) || (b && !is_float_dtype(bdt)))
    return fail(RMLX_E_UNSUPPORTED, "layer_norm: weight/bias dtype");
  thread_local std::vector<float> wbuf, bbuf;
  const float *wf = weights_f32(w, wdt, n, 0.f, wbuf), *bf = weights_f32(b, bdt, n, 0.f, bbuf);
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; r++) {
      const float *xr = x + r * n;
      float *yr = out + r * n;
      float s = 0.f;
      for (int64_t i = 0; i < n; i++) s += xr[i];
      float mean = s / (float)n, v = 0.f;
      for (int64_t i = 0; i < n; i++) v += (xr[i] - mean) * (xr[i] - mean);
      float inv = 1.f / std::sqrt(v / (float)n + eps);
      for (int64_t i = 0; i < n; i++) {
        float y = (xr[i] - mean) * inv;
        if (w) y *= wf[i];
        if (b) y += bf[i];
        yr[i] = y;
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)));
  return RMLX_OK;
}

int op_rope_table(float *table, const int32_t *pos, int64_t T, int64_t half, const float *inv_freq, float scale,
                  float mscale) {
  float *cs = table, *sn = table + T * half;
  parallel_for(T, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; t++) {
      // Angles in f32, as transformers and MLX compute them.
      float p = (float)pos[t] * scale;
      for (int64_t i = 0; i < half; i++) {
        float th = p * inv_freq[i];
        cs[t * half + i] = std::cos(th) * mscale;
        sn[t * half + i] = std::sin(th) * mscale;
      }
    }
  }, std::max<int64_t>(1, 256 / std::max<int64_t>(half, 1)));
  return RMLX_OK;
}

int op_rope(float *out, const float *x, const float *table, int64_t T, int64_t H, int64_t D, int64_t dims,
            bool traditional) {
  if (dims < 2 || dims > D || dims % 2) return fail(RMLX_E_INVALID, "rope: dims %lld for head dim %lld", (long long)dims, (long long)D);
  const int64_t half = dims / 2;
  parallel_for(T, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; t++) {
      const float *cs = table + t * half, *sn = table + (T + t) * half;
      for (int64_t h = 0; h < H; h++) {
        const float *xr = x + (t * H + h) * D;
        float *yr = out + (t * H + h) * D;
        if (traditional) {
          for (int64_t i = 0; i < half; i++) {
            float a = xr[2 * i], b = xr[2 * i + 1];
            yr[2 * i] = a * cs[i] - b * sn[i];
            yr[2 * i + 1] = a * sn[i] + b * cs[i];
          }
        } else {
          for (int64_t i = 0; i < half; i++) {
            float a = xr[i], b = xr[i + half];
            yr[i] = a * cs[i] - b * sn[i];
            yr[i + half] = b * cs[i] + a * sn[i];
          }
        }
        if (yr != xr)
          for (int64_t i = dims; i < D; i++) yr[i] = xr[i];
      }
    }
  }, std::max<int64_t>(1, 8192 / std::max<int64_t>(H * D, 1)));
  return RMLX_OK;
}

}  // namespace rmlx
