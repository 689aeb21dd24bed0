// Entry points declared in rmlx.h whose kernels have not landed yet. Each answers RMLX_E_UNSUPPORTED so that
// the library always loads; an entry is deleted here when its real implementation is added elsewhere.
#include "common.h"

using namespace rmlx;

extern "C" {

int rmlx_linear(float *, const float *, int64_t, int64_t, int64_t, const void *, int, const void *) {
  return fail(RMLX_E_UNSUPPORTED, "rmlx_linear is not built yet");
}
int rmlx_qlinear(float *, const float *, int64_t, int64_t, int64_t, const uint32_t *, const void *, const void *, int,
                 int, int, int, float, const void *, int) {
  return fail(RMLX_E_UNSUPPORTED, "rmlx_qlinear is not built yet");
}
int rmlx_gather_qlinear(float *, const float *, int64_t, int64_t, int64_t, int64_t, const int32_t *, int64_t,
                        const uint32_t *, const void *, const void *, int, int, int, int, float) {
  return fail(RMLX_E_UNSUPPORTED, "rmlx_gather_qlinear is not built yet");
}
int rmlx_gather_linear(float *, const float *, int64_t, int64_t, int64_t, int64_t, const int32_t *, int64_t,
                       const void *, int) {
  return fail(RMLX_E_UNSUPPORTED, "rmlx_gather_linear is not built yet");
}
int rmlx_dequantize_rows(float *, const int32_t *, int64_t, int64_t, int64_t, const uint32_t *, const void *,
                         const void *, int, int, int, int, float) {
  return fail(RMLX_E_UNSUPPORTED, "rmlx_dequantize_rows is not built yet");
}
int rmlx_take_rows(float *, const int32_t *, int64_t, int64_t, int64_t, const void *, int) {
  return fail(RMLX_E_UNSUPPORTED, "rmlx_take_rows is not built yet");
}
int rmlx_bench_triad(int64_t, int, double *) { return fail(RMLX_E_UNSUPPORTED, "rmlx_bench_triad is not built yet"); }

}  // extern "C"
