// A persistent pool of worker threads. parallel_for splits [0, n) into contiguous chunks, one per thread,
// and returns when all are done. Workers spin briefly between jobs so that the many small jobs of a
// decode step do not pay a sleep/wake each.
#pragma once
#include <cstdint>
#include <functional>

namespace rmlx {

void pool_start(int nthreads);  // 0 = one per online core; idempotent
int pool_size();

// fn(begin, end, thread_index). Runs inline when n is small or the pool has one thread.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)> &fn, int64_t min_chunk = 1);

}  // namespace rmlx
