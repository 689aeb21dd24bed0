// Data movement (strided copy, dtype conversion) and the batched f32 matmul.
#include <algorithm>
#include <cstring>

#include "ops.h"
#include "threadpool.h"

namespace rmlx {
namespace {

template <class T>
void copy_rows(T *dst, const T *src, int ndim, const int64_t *shape, const int64_t *ss, const int64_t *ds, int64_t r0,
               int64_t r1) {
  int64_t n = shape[ndim - 1], si = ss[ndim - 1], di = ds[ndim - 1];
  for (int64_t r = r0; r < r1; r++) {
    int64_t so, dof;
    row_offsets(r, ndim - 1, shape, ss, ds, so, dof);
    const T *s = src + so;
    T *o = dst + dof;
    if (si == 1 && di == 1) std::memcpy(o, s, n * sizeof(T));
    else
      for (int64_t i = 0; i < n; i++) o[i * di] = s[i * si];
  }
}

}  // namespace

int op_copy(void *dst, const void *src, int esize, int ndim, const int64_t *shape, const int64_t *ss,
            const int64_t *ds) {
  int64_t rows = 1;
  for (int d = 0; d < ndim - 1; d++) rows *= shape[d];
  int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(shape[ndim - 1] * esize, 1));
  switch (esize) {
    case 1:
      parallel_for(rows, [&](int64_t b, int64_t e, int) { copy_rows((uint8_t *)dst, (const uint8_t *)src, ndim, shape, ss, ds, b, e); }, grain);
      break;
    case 2:
      parallel_for(rows, [&](int64_t b, int64_t e, int) { copy_rows((uint16_t *)dst, (const uint16_t *)src, ndim, shape, ss, ds, b, e); }, grain);
      break;
    case 4:
      parallel_for(rows, [&](int64_t b, int64_t e, int) { copy_rows((uint32_t *)dst, (const uint32_t *)src, ndim, shape, ss, ds, b, e); }, grain);
      break;
    default: return fail(RMLX_E_INVALID, "copy: element size %d", esize);
  }
  return RMLX_OK;
}

int op_astype(void *dst, const void *src, int64_t n, int sdt, int ddt) {
  auto get = [&](int64_t i) -> float {
    switch (sdt) {
      case RMLX_I32: return (float)((const int32_t *)src)[i];
      case RMLX_U32: return (float)((const uint32_t *)src)[i];
      case RMLX_U8: return (float)((const uint8_t *)src)[i];
      default: return load_scalar(src, sdt, i);
    }
  };
  if (sdt < RMLX_F32 || sdt > RMLX_I32 || ddt < RMLX_F32 || ddt > RMLX_I32)
    return fail(RMLX_E_INVALID, "astype: dtype %d -> %d", sdt, ddt);
  if (ddt == RMLX_U32 || ddt == RMLX_U8) return fail(RMLX_E_UNSUPPORTED, "astype to unsigned dtype %d", ddt);
  if (sdt == RMLX_I32 && ddt == RMLX_I32) {
    std::memcpy(dst, src, n * 4);
    return RMLX_OK;
  }
  const Kern &k = kern();
  if (ddt == RMLX_F32 && (sdt == RMLX_F16 || sdt == RMLX_BF16)) {
    parallel_for(n, [&](int64_t b, int64_t e, int) {
      (sdt == RMLX_F16 ? k.f16_to_f32 : k.bf16_to_f32)((float *)dst + b, (const uint16_t *)src + b, e - b);
    }, 16384);
    return RMLX_OK;
  }
  if (sdt == RMLX_F32 && (ddt == RMLX_F16 || ddt == RMLX_BF16)) {
    parallel_for(n, [&](int64_t b, int64_t e, int) {
      (ddt == RMLX_F16 ? k.f32_to_f16 : k.f32_to_bf16)((uint16_t *)dst + b, (const float *)src + b, e - b);
    }, 16384);
    return RMLX_OK;
  }
  parallel_for(n, [&](int64_t b, int64_t e, int) {
    switch (ddt) {
      case RMLX_F32:
        for (int64_t i = b; i < e; i++) ((float *)dst)[i] = get(i);
        break;
      case RMLX_F16:
        for (int64_t i = b; i < e; i++) ((uint16_t *)dst)[i] = f32_to_f16(get(i));
        break;
      case RMLX_BF16:
        for (int64_t i = b; i < e; i++) ((uint16_t *)dst)[i] = f32_to_bf16(get(i));
        break;
      default:
        // Truncation toward zero, as a C cast and MLX's astype do.
        for (int64_t i = b; i < e; i++) ((int32_t *)dst)[i] = (int32_t)get(i);
    }
  }, 16384);
  return RMLX_OK;
}

int op_matmul(float *out, const float *a, const float *b, int64_t M, int64_t K, int64_t N, int nbd,
              const int64_t *bshape, const int64_t *sa, const int64_t *sb) {
  int64_t nb = 1;
  for (int d = 0; d < nbd; d++) nb *= bshape[d];
  parallel_for(nb * M, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; r++) {
      int64_t bi = r / M, i = r % M, rem = bi, oa = 0, ob = 0;
      for (int d = nbd - 1; d >= 0; d--) {
        int64_t x = rem % bshape[d];
        rem /= bshape[d];
        oa += x * sa[d];
        ob += x * sb[d];
      }
      const float *ar = a + oa + i * K;
      const float *bm = b + ob;
      float *o = out + r * N;
      for (int64_t j = 0; j < N; j++) o[j] = 0.f;
      for (int64_t k = 0; k < K; k++) {
        float x = ar[k];
        const float *br = bm + k * N;
        for (int64_t j = 0; j < N; j++) o[j] += x * br[j];
      }
    }
  }, std::max<int64_t>(1, 16384 / std::max<int64_t>(K * N, 1)));
  return RMLX_OK;
}

}  // namespace rmlx
