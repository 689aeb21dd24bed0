// Elementwise ops, softmax and reductions (f32).
#include <algorithm>
#include <cmath>
#include <vector>

#include "oplist_gen.h"
#include "threadpool.h"

namespace rmlx {
namespace {

constexpr int64_t kGrain = 16384;  // elements per task below which threads cost more than they save

template <int K>
void bin_row(float *o, const float *a, const float *b, int64_t n, int64_t sa, int64_t sb) {
  auto f = [](float x, float y) { return K == BINARY_ADD ? x + y : K == BINARY_SUB ? x - y : x * y; };
  if (sa == 1 && sb == 1) {
    const Kern &k = kern();
    (K == BINARY_ADD ? k.add : K == BINARY_SUB ? k.sub : k.mul)(o, a, b, n);
  } else if (sa == 1 && sb == 0) {
    float y = b[0];
    for (int64_t i = 0; i < n; i++) o[i] = f(a[i], y);
  } else if (sa == 0 && sb == 1) {
    float x = a[0];
    for (int64_t i = 0; i < n; i++) o[i] = f(x, b[i]);
  } else {
    for (int64_t i = 0; i < n; i++) o[i] = f(a[i * sa], b[i * sb]);
  }
}

void bin_row_any(int kind, float *o, const float *a, const float *b, int64_t n, int64_t sa, int64_t sb) {
  if (kind == BINARY_ADD) bin_row<BINARY_ADD>(o, a, b, n, sa, sb);
  else if (kind == BINARY_SUB) bin_row<BINARY_SUB>(o, a, b, n, sa, sb);
  else bin_row<BINARY_MUL>(o, a, b, n, sa, sb);
}

}  // namespace

int op_binary(int kind, float *out, const float *a, const float *b, int ndim, const int64_t *shape, const int64_t *sa,
              const int64_t *sb) {
  if (kind < BINARY_ADD || kind > BINARY_MUL) return fail(RMLX_E_INVALID, "binary: bad kind %d", kind);
  int64_t inner = shape[ndim - 1], isa = sa[ndim - 1], isb = sb[ndim - 1];
  if (ndim == 1) {
    parallel_for(inner, [&](int64_t b0, int64_t e0, int) {
      bin_row_any(kind, out + b0, a + b0 * isa, b + b0 * isb, e0 - b0, isa, isb);
    }, kGrain);
    return RMLX_OK;
  }
  int64_t rows = 1;
  for (int d = 0; d < ndim - 1; d++) rows *= shape[d];
  parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; r++) {
      int64_t oa, ob;
      row_offsets(r, ndim - 1, shape, sa, sb, oa, ob);
      bin_row_any(kind, out + r * inner, a + oa, b + ob, inner, isa, isb);
    }
  }, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1)));
  return RMLX_OK;
}

int op_unary(int kind, float *out, const float *x, int64_t n, float param) {
  if (kind < UNARY_SCALE || kind > UNARY_SOFTPLUS) return fail(RMLX_E_INVALID, "unary: bad kind %d", kind);
  const Kern &k = kern();
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    switch (kind) {
      case UNARY_SCALE: k.scale_mul(out + b, x + b, param, nullptr, e - b); break;
      case UNARY_SIGMOID: k.sigmoid(out + b, x + b, e - b); break;
      case UNARY_SILU: k.silu(out + b, x + b, e - b); break;
      case UNARY_GELU_TANH: k.gelu_tanh(out + b, x + b, e - b); break;
      case UNARY_SOFTPLUS:
        // log(1 + e^x), exact for large x where e^x overflows
        for (int64_t i = b; i < e; i++) out[i] = x[i] > 20.f ? x[i] : std::log1p(std::exp(x[i]));
        break;
      default: {
        float inv = 1.f / param;
        for (int64_t i = b; i < e; i++) out[i] = param * std::tanh(x[i] * inv);
      }
    }
  }, kGrain);
  return RMLX_OK;
}

int op_glu(int kind, float *out, const float *gate, const float *up, int64_t n) {
  if (kind != GLU_SWIGLU && kind != GLU_GEGLU) return fail(RMLX_E_INVALID, "glu: bad kind %d", kind);
  const Kern &k = kern();
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    (kind == GLU_SWIGLU ? k.swiglu : k.geglu)(out + b, gate + b, up + b, e - b);
  }, kGrain);
  return RMLX_OK;
}

int op_softmax(float *out, const float *x, int64_t outer, int64_t n, int64_t inner) {
  if (n <= 0) return RMLX_OK;
  const Kern &k = kern();
  parallel_for(outer * inner, [&](int64_t b, int64_t e, int) {
    std::vector<float> tmp(inner == 1 ? 0 : n);
    for (int64_t r = b; r < e; r++) {
      int64_t o = r / inner, i = r % inner;
      const float *xr = x + o * n * inner + i;
      float *yr = out + o * n * inner + i;
      if (inner == 1) {
        float s = k.exp_sum(yr, xr, k.max(xr, n), n);
        k.scal(yr, 1.f / s, n);
        continue;
      }
      for (int64_t j = 0; j < n; j++) tmp[j] = xr[j * inner];
      float s = k.exp_sum(tmp.data(), tmp.data(), k.max(tmp.data(), n), n);
      for (int64_t j = 0; j < n; j++) yr[j * inner] = tmp[j] / s;
    }
  }, std::max<int64_t>(1, kGrain / n));
  return RMLX_OK;
}

int op_sum(float *out, const float *x, int64_t outer, int64_t n, int64_t inner) {
  parallel_for(outer, [&](int64_t b, int64_t e, int) {
    for (int64_t o = b; o < e; o++) {
      float *yr = out + o * inner;
      for (int64_t i = 0; i < inner; i++) yr[i] = 0.f;
      for (int64_t j = 0; j < n; j++) {
        const float *xr = x + (o * n + j) * inner;
        for (int64_t i = 0; i < inner; i++) yr[i] += xr[i];
      }
    }
  }, std::max<int64_t>(1, kGrain / std::max<int64_t>(n * inner, 1)));
  return RMLX_OK;
}

int op_argmax(int32_t *out, const float *x, int64_t rows, int64_t n) {
  if (n <= 0) return fail(RMLX_E_INVALID, "argmax over an empty axis");
  parallel_for(rows, [&](int64_t b, int64_t e, int) {
    for (int64_t r = b; r < e; r++) {
      const float *xr = x + r * n;
      int64_t best = 0;
      for (int64_t j = 1; j < n; j++)
        if (xr[j] > xr[best]) best = j;
      out[r] = (int32_t)best;
    }
  }, std::max<int64_t>(1, kGrain / n));
  return RMLX_OK;
}

int op_topk(float *vals, int32_t *idx, const float *x, int64_t rows, int64_t n, int64_t k) {
  if (k < 1 || k > n) return fail(RMLX_E_INVALID, "topk: k=%lld out of range for axis %lld", (long long)k, (long long)n);
  parallel_for(rows, [&](int64_t b, int64_t e, int) {
    std::vector<int32_t> ord(n);
    for (int64_t r = b; r < e; r++) {
      const float *xr = x + r * n;
      for (int64_t j = 0; j < n; j++) ord[j] = (int32_t)j;
      std::partial_sort(ord.begin(), ord.begin() + k, ord.end(), [&](int32_t i, int32_t j) {
        return xr[i] > xr[j] || (xr[i] == xr[j] && i < j);
      });
      for (int64_t j = 0; j < k; j++) {
        idx[r * k + j] = ord[j];
        vals[r * k + j] = xr[ord[j]];
      }
    }
  }, std::max<int64_t>(1, kGrain / n));
  return RMLX_OK;
}

}  // namespace rmlx

namespace rmlx {

// x * Phi(x) with the exact normal CDF (BERT's "gelu"): 0.5 x (1 + erf(x / sqrt 2)).
int run_op(const GeluErfRecord &r) {
  parallel_for(r.n, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; i++) r.out[i] = 0.5f * r.x[i] * (1.f + std::erf(r.x[i] * 0.70710678118654752f));
  }, 4096);
  return RMLX_OK;
}

}  // namespace rmlx
