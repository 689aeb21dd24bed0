#include "threadpool.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace rmlx {
namespace {

struct Pool {
  std::vector<std::thread> threads;
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<uint64_t> generation{0};
  std::atomic<int> remaining{0};
  const std::function<void(int64_t, int64_t, int)> *job = nullptr;
  int64_t n = 0, chunk = 0;
  int nthreads = 1;
};

Pool *g_pool = nullptr;
std::once_flag g_once;

void run_chunk(Pool &p, int t) {
  int64_t b = t * p.chunk, e = b + p.chunk;
  if (e > p.n) e = p.n;
  if (b < e) (*p.job)(b, e, t);
}

void worker(Pool *p, int t) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g;
    int spins = 0;
    while ((g = p->generation.load(std::memory_order_acquire)) == seen) {
      if (++spins < 20000) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        continue;
      }
      std::unique_lock<std::mutex> lk(p->mu);
      p->cv.wait(lk, [&] { return p->generation.load(std::memory_order_acquire) != seen; });
    }
    seen = g;
    run_chunk(*p, t);
    p->remaining.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace

void pool_start(int nthreads) {
  std::call_once(g_once, [&] {
    int n = nthreads > 0 ? nthreads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    g_pool = new Pool();
    g_pool->nthreads = n;
    for (int t = 1; t < n; t++) {
      g_pool->threads.emplace_back(worker, g_pool, t);
      g_pool->threads.back().detach();
    }
  });
}

int pool_size() {
  pool_start(0);
  return g_pool->nthreads;
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)> &fn, int64_t min_chunk) {
  pool_start(0);
  Pool &p = *g_pool;
  if (n <= 0) return;
  if (min_chunk < 1) min_chunk = 1;
  int64_t nt = p.nthreads;
  if (nt > (n + min_chunk - 1) / min_chunk) nt = (n + min_chunk - 1) / min_chunk;
  if (nt <= 1) {
    fn(0, n, 0);
    return;
  }
  // One job at a time: callers are the executor's single thread.
  p.job = &fn;
  p.n = n;
  p.chunk = (n + nt - 1) / nt;
  p.remaining.store(p.nthreads - 1, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lk(p.mu);
    p.generation.fetch_add(1, std::memory_order_acq_rel);
  }
  p.cv.notify_all();
  run_chunk(p, 0);
  while (p.remaining.load(std::memory_order_acquire) != 0) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
}

}  // namespace rmlx
