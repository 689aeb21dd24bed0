// Shared helpers for the CPU kernels: error reporting, ISA selection, scalar dtype conversions.
#pragma once
#include <cstdint>
#include <cstring>

#include "../include/rmlx.h"

namespace rmlx {

// Ordered: each level has everything of the ones below it.
enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Vnni = 3 };

Isa active_isa();
bool cpu_has(Isa isa);

// rmlx_free's release of p, now (exec.cpp defers rmlx_free while launched programs are queued).
void free_now(void *p);
// Whether launched programs are still queued; then p is kept and freed after them.
bool defer_free(void *p);
// Whether few-row products of affine, mxfp4 and nvfp4 weights put x in 16-bit fixed point (qkern_x16_impl.h).
bool gemv_x16_enabled();
// Whether products of affine 2, 4 and 8-bit weights with several rows of x (batched decode, prefill) put x in
// 8 bits per group instead (qkern_x8_impl.h); one row keeps x16.
bool gemv_x8_enabled();
// Whether prefill-shaped products (many rows of x) round x and the decoded weights to bf16 for AVX512-BF16 dot
// products (rmlx_set_gemm_mode, RMLX_GEMM=bf16), twice the f32 FMA rate.
bool gemm_bf16_enabled();
// Whether prefill-shaped products of affine 4 and 8-bit weights put x in 16-bit fixed point per group for integer
// dot products (qkern_gemm_x16_impl.h; rmlx_set_gemm_mode, RMLX_GEMM=x16, and the default "auto" for a weight
// without RMLX_Q_EXACT_ROWS while the gemv mode is not f32); f32 keeps them exact.
bool gemm_x16_enabled(bool exact_rows);

// Records a message for rmlx_last_error() and returns the code, so that kernels can `return fail(...)`.
int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as MLX and PyTorch do; NaN stays NaN.
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        exp--;
      }
      man &= 0x3ff;
      u = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000 | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t f32_to_f16(float f) { return (uint16_t)__builtin_bit_cast(uint16_t, (_Float16)f); }

static inline float load_scalar(const void *p, int dtype, int64_t i) {
  switch (dtype) {
    case RMLX_F32: return ((const float *)p)[i];
    case RMLX_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    case RMLX_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    default: return 0.f;
  }
}

static inline bool is_float_dtype(int dtype) { return dtype == RMLX_F32 || dtype == RMLX_F16 || dtype == RMLX_BF16; }

}  // namespace rmlx

// Note for *_avx2.cpp / *_avx512.cpp files: keep every function there static or inside an ISA-named namespace,
// and use only the static helpers above, so that no ISA-specific copy of a shared inline function can be
// picked by the linker for code that runs on a CPU without that ISA.
