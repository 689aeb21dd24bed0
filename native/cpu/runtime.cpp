// Runtime services behind the C ABI: thread pool start, ISA choice, errors, aligned memory.
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include <sys/mman.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#include "common.h"
#include "threadpool.h"

namespace rmlx {
namespace {
thread_local char g_err[512] = "";
Isa g_isa = Isa::Scalar;
bool g_isa_set = false;

// Indexed by Isa.
constexpr const char *kIsaNames[] = {"scalar", "avx2", "avx512", "avx512vnni"};
constexpr int kIsaCount = sizeof kIsaNames / sizeof kIsaNames[0];

// Large allocations (KV pools, big arenas) are anonymous mappings: the kernel hands out zero pages on first touch,
// so a pool sized for the whole --kv-memory budget is resident only as far as blocks have been written.
constexpr size_t kMapMin = (size_t)1 << 20;
std::mutex g_map_mu;
std::unordered_map<void *, size_t> g_mapped;

// Mappings are whole 2 MiB pieces on 2 MiB boundaries and ask for transparent huge pages (where the system allows
// them). A decode step first-touches a page of every layer's K and V pools every 4 KiB of tokens, and page faults
// are dear on virtual machines: on a 2-core Zen 5 VM, per-op timing of 100 decode steps of the 0.6B 4-bit shape
// (a 512-token prompt, pools sized for the request) put 0.6-0.8 ms a step, 24 faults, in the KV writes. A pool is
// then resident in 2 MiB pieces as far as written. Returns the mapping and its length in *len.
constexpr size_t kHuge = (size_t)2 << 20;

void *map_anon(size_t n, size_t *len) {
  const size_t np = (n + kHuge - 1) / kHuge * kHuge;
  void *m = mmap(nullptr, np + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return m;
  char *b = (char *)m, *a = (char *)(((uintptr_t)b + kHuge - 1) & ~(uintptr_t)(kHuge - 1));
  if (a > b) munmap(b, (size_t)(a - b));
  if (b + np + kHuge > a + np) munmap(a + np, (size_t)(b + np + kHuge - (a + np)));
  madvise(a, np, MADV_HUGEPAGE);
  *len = np;
  return a;
}

Isa best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return __builtin_cpu_supports("avx512vnni") ? Isa::Avx512Vnni : Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::Avx2;
  return Isa::Scalar;
}
}  // namespace

bool cpu_has(Isa isa) { return (int)isa <= (int)best_isa(); }

namespace {
constexpr int kModeUnread = -1;

// A mode knob's value: on first use, the index of the environment variable's value among names, or dflt when it
// is unset or names none of them.
template <int N>
int env_mode(int &slot, const char *var, const char *const (&names)[N], int dflt) {
  if (slot == kModeUnread) {
    const char *env = getenv(var);
    slot = dflt;
    for (int i = 0; env && i < N; i++)
      if (!strcmp(env, names[i])) slot = i;
  }
  return slot;
}

enum GemvMode : int { kGemvF32, kGemvX16, kGemvX8 };
constexpr const char *kGemvNames[] = {"f32", "x16", "x8"};
int g_gemv = kModeUnread;

int gemv_mode() { return env_mode(g_gemv, "RMLX_GEMV", kGemvNames, kGemvX16); }
}  // namespace

bool gemv_x16_enabled() { return gemv_mode() != kGemvF32; }

namespace {
enum GemmMode : int { kGemmF32, kGemmBf16, kGemmX16, kGemmAuto };
constexpr const char *kGemmNames[] = {"f32", "bf16", "x16", "auto"};
int g_gemm = kModeUnread;

int gemm_mode() { return env_mode(g_gemm, "RMLX_GEMM", kGemmNames, kGemmAuto); }

bool cpu_bf16() {
  static const bool cpu = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
  }();
  return cpu;
}
}  // namespace

// bf16 needs AVX512-BF16 and x16 an AVX-512 variant in use; bf16 elsewhere reads x16, x16 elsewhere f32. auto
// follows the decode products' choice (x16 unless the gemv mode is exact f32) on weights that allow it.
bool gemm_bf16_enabled() { return gemm_mode() == kGemmBf16 && cpu_bf16() && (int)active_isa() >= (int)Isa::Avx512; }
namespace {
bool gemm_x16_possible() {
  int m = gemm_mode();
  if (m == kGemmF32 || gemm_bf16_enabled() || (int)active_isa() < (int)Isa::Avx512) return false;
  return m != kGemmAuto || gemv_mode() != kGemvF32;
}
}  // namespace
bool gemm_x16_enabled(bool exact_rows) { return gemm_x16_possible() && !(exact_rows && gemm_mode() == kGemmAuto); }
bool gemv_x8_enabled() { return gemv_mode() == kGemvX8; }

Isa active_isa() {
  if (!g_isa_set) {
    g_isa = best_isa();
    g_isa_set = true;
  }
  return g_isa;
}

namespace {
// Makes the variant `name` the one in use; `source` says where the name came from, for the messages.
int select_isa(const char *name, const char *source) {
  for (int i = 0; i < kIsaCount; i++) {
    if (strcmp(name, kIsaNames[i])) continue;
    if (!cpu_has((Isa)i)) return fail(RMLX_E_UNSUPPORTED, "%s%s: this CPU does not support %s", source, name, name);
    g_isa = (Isa)i;
    g_isa_set = true;
    return RMLX_OK;
  }
  std::string names;
  for (int i = kIsaCount - 1; i >= 0; i--) names += std::string(kIsaNames[i]) + (i ? ", " : "");
  return fail(RMLX_E_INVALID, "%s%s is not one of %s", source, name, names.c_str());
}
}  // namespace

int fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_err, sizeof g_err, fmt, ap);
  va_end(ap);
  return code;
}

}  // namespace rmlx

using namespace rmlx;

namespace {
// slot = the index of name among names, or a clear error naming the knob and its choices.
int set_mode(const char *name, const char *const *names, int count, int &slot, const char *what, const char *choices) {
  if (!name) return fail(RMLX_E_INVALID, "%s mode is null", what);
  for (int i = 0; i < count; i++)
    if (!strcmp(name, names[i])) {
      slot = i;
      return RMLX_OK;
    }
  return fail(RMLX_E_INVALID, "unknown %s mode '%s' (%s)", what, name, choices);
}
}  // namespace

extern "C" {

int rmlx_abi_version(void) { return RMLX_ABI_VERSION; }

int rmlx_init(int nthreads) {
  // A name that fell back silently would mislabel every figure measured under it.
  const char *env = getenv("RMLX_ISA");
  if (env && *env) {
    int st = select_isa(env, "RMLX_ISA=");
    if (st != RMLX_OK) return st;
  }
  active_isa();  // decided here, before kernels on pool threads ask
  pool_start(nthreads);
  return RMLX_OK;
}

int rmlx_num_threads(void) { return pool_size(); }

const char *rmlx_isa(void) { return kIsaNames[(int)active_isa()]; }

int rmlx_set_isa(const char *name) {
  if (!name) return fail(RMLX_E_INVALID, "isa name is null");
  return select_isa(name, "isa ");
}

int rmlx_set_gemv_mode(const char *name) { return set_mode(name, kGemvNames, 3, g_gemv, "gemv", "x8, x16 or f32"); }

const char *rmlx_gemv_mode(void) { return kGemvNames[gemv_mode()]; }

int rmlx_set_gemm_mode(const char *name) {
  return set_mode(name, kGemmNames, 4, g_gemm, "gemm", "auto, f32, x16 or bf16");
}

const char *rmlx_gemm_mode(void) {
  if (gemm_bf16_enabled()) return kGemmNames[kGemmBf16];
  if (!gemm_x16_possible()) return kGemmNames[kGemmF32];
  return kGemmNames[gemm_mode() == kGemmAuto ? kGemmAuto : kGemmX16];
}

const char *rmlx_last_error(void) { return g_err; }

int rmlx_alloc(int64_t nbytes, void **out) {
  if (!out || nbytes < 0) return fail(RMLX_E_INVALID, "rmlx_alloc: bad arguments");
  // 64 bytes past the end are always readable: kernels may load a whole vector where a row ends short of one
  // (a turbo3 KV row of 48 bytes is read 16 bytes at a time from byte 36).
  size_t n = (((size_t)(nbytes > 0 ? nbytes : 1) + 63) & ~(size_t)63) + 64;
  if (n >= kMapMin) {
    size_t len = 0;
    void *m = map_anon(n, &len);
    if (m == MAP_FAILED) return fail(RMLX_E_NOMEM, "out of memory mapping %lld bytes", (long long)nbytes);
    std::lock_guard<std::mutex> lock(g_map_mu);
    g_mapped[m] = len;
    *out = m;
    return RMLX_OK;
  }
  void *p = aligned_alloc(64, n);
  if (!p) return fail(RMLX_E_NOMEM, "out of memory allocating %lld bytes", (long long)nbytes);
  memset(p, 0, n);
  *out = p;
  return RMLX_OK;
}

int rmlx_populate(void *addr, int64_t nbytes) {
  if (!addr || nbytes < 0) return fail(RMLX_E_INVALID, "rmlx_populate: bad arguments");
  // Whole pages around the range: a mapping is whole 2 MiB pieces on 2 MiB boundaries, so they stay inside it.
  const uintptr_t lo = (uintptr_t)addr, hi = lo + (uintptr_t)nbytes, page = 4096;
  bool mapped = false;
  {
    std::lock_guard<std::mutex> lock(g_map_mu);
    for (const auto &[base, len] : g_mapped) mapped = mapped || (lo >= (uintptr_t)base && hi <= (uintptr_t)base + len);
  }
  // Small allocations are resident already (zero-filled by rmlx_alloc). Population only saves later faults: where
  // it fails (a kernel before Linux 5.14, or memory short now) the pages are faulted in as they are written.
  if (mapped && hi > lo) {
    const uintptr_t at = lo & ~(page - 1), end = (hi + page - 1) & ~(page - 1);
    madvise((void *)at, end - at, MADV_POPULATE_WRITE);
  }
  return RMLX_OK;
}

int rmlx_free(void *p) {
  if (!p) return RMLX_OK;
  // A launched program may still read or write it: freed once the programs queued now have run.
  if (rmlx::defer_free(p)) return RMLX_OK;
  rmlx::free_now(p);
  return RMLX_OK;
}

}  // extern "C"

void rmlx::free_now(void *p) {
  {
    std::lock_guard<std::mutex> lock(g_map_mu);
    auto it = g_mapped.find(p);
    if (it != g_mapped.end()) {
      munmap(p, it->second);
      g_mapped.erase(it);
      return;
    }
  }
  free(p);
}
