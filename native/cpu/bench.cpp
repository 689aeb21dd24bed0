// rmlx_bench_triad: a STREAM-like triad on all threads, the bandwidth yardstick of the kernels benchmark.
#include <chrono>
#include <cstdlib>

#include "common.h"
#include "threadpool.h"

using namespace rmlx;

extern "C" int rmlx_bench_triad(int64_t n, int reps, double *best_seconds) {
  if (n <= 0 || reps <= 0 || !best_seconds) return fail(RMLX_E_INVALID, "rmlx_bench_triad: bad arguments");
  size_t bytes = (((size_t)n * sizeof(float)) + 63) & ~(size_t)63;
  float *a = (float *)aligned_alloc(64, bytes), *b = (float *)aligned_alloc(64, bytes),
        *c = (float *)aligned_alloc(64, bytes);
  if (!a || !b || !c) {
    free(a), free(b), free(c);
    return fail(RMLX_E_NOMEM, "rmlx_bench_triad: out of memory for %lld floats", (long long)n);
  }
  // Each thread first touches the part it later streams, so pages sit near it.
  parallel_for(n, [&](int64_t s, int64_t e, int) {
    for (int64_t i = s; i < e; i++) a[i] = 0.f, b[i] = 1.f, c[i] = 2.f;
  });
  double best = 1e30;
  const float q = 3.f;
  for (int r = 0; r < reps; r++) {
    auto t0 = std::chrono::steady_clock::now();
    parallel_for(n, [&](int64_t s, int64_t e, int) {
      for (int64_t i = s; i < e; i++) a[i] = b[i] + q * c[i];
    });
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt < best) best = dt;
  }
  free(a), free(b), free(c);
  *best_seconds = best;
  return RMLX_OK;
}
