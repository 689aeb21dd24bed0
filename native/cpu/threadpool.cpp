#include "threadpool.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <sched.h>
#include <unistd.h>

namespace rmlx {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

// Chunks are claimed, not assigned: `next` packs the job's generation (high 32 bits) with the next chunk index,
// so whichever thread is running takes the next chunk. A worker the OS has descheduled therefore never holds a
// chunk hostage: the caller takes it instead, which matters on a loaded machine where a barrier on a sleeping
// thread would cost a whole scheduler time slice per op.
struct Pool {
  std::vector<std::thread> threads;
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<uint32_t> generation{0};
  std::atomic<int> sleepers{0};
  std::atomic<uint64_t> next{0};
  std::atomic<int64_t> done{0};
  const std::function<void(int64_t, int64_t, int)> *job = nullptr;
  int64_t n = 0, chunk = 0, chunks = 0;
  int nthreads = 1;
};

Pool *g_pool = nullptr;
std::once_flag g_once;

// Claims and runs chunks of job `gen` until none are left. Job fields are read only after a successful claim:
// the caller cannot start another job while a claimed chunk is unfinished.
void drain(Pool &p, uint32_t gen, int t) {
  for (;;) {
    uint64_t cur = p.next.load(std::memory_order_acquire);
    if ((uint32_t)(cur >> 32) != gen) return;
    int64_t idx = (int64_t)(cur & 0xffffffffu);
    if (idx >= p.chunks) return;
    if (!p.next.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel)) continue;
    int64_t b = idx * p.chunk, e = b + p.chunk;
    if (e > p.n) e = p.n;
    (*p.job)(b, e, t);
    p.done.fetch_add(1, std::memory_order_acq_rel);
  }
}

void worker(Pool *p, int t) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t g;
    int spins = 0;
    while ((g = p->generation.load(std::memory_order_acquire)) == seen) {
      if (++spins < 20000) {
        cpu_relax();
        continue;
      }
      std::unique_lock<std::mutex> lk(p->mu);
      p->sleepers.fetch_add(1);
      p->cv.wait(lk, [&] { return p->generation.load() != seen; });
      p->sleepers.fetch_sub(1);
    }
    seen = g;
    drain(*p, g, t);
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
  // Close the last job's claims before its fields change: a worker that loaded the old word and then reads the new
  // chunk count must fail its claim instead of running a chunk of this job early (and counting it twice).
  p.next.store(((uint64_t)p.generation.load(std::memory_order_relaxed) << 32) | 0xffffffffu, std::memory_order_release);
  p.job = &fn;
  p.n = n;
  p.chunk = (n + nt - 1) / nt;
  p.chunks = (n + p.chunk - 1) / p.chunk;
  p.done.store(0, std::memory_order_relaxed);
  uint32_t gen = p.generation.load(std::memory_order_relaxed) + 1;
  p.next.store((uint64_t)gen << 32, std::memory_order_release);
  // Sequentially consistent store then load, against the sleeper's increment then load: either the caller sees
  // the sleeper and wakes it under the lock, or the sleeper sees the new generation and does not wait.
  p.generation.store(gen);
  if (p.sleepers.load() > 0) {
    std::lock_guard<std::mutex> lk(p.mu);
    p.cv.notify_all();
  }
  drain(p, gen, 0);
  for (int spins = 0; p.done.load(std::memory_order_acquire) != p.chunks; spins++) {
    if (spins < 4000) cpu_relax();
    else sched_yield();
  }
}

}  // namespace rmlx
