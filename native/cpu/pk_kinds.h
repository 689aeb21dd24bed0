// The packed-KV row formats as the fused attention kernels (ops_kern_avx2.cpp, ops_kern_avx512.cpp) take them:
// which decoder a row needs, its byte size, and the prefetch of code rows ahead of the loops.
#pragma once

#include <cstdint>

#include "ops.h"

namespace rmlx {

// What a fused kernel decodes: affine 8 or 4-bit codes, E4M3, turbo 4 or 3-bit codes.
enum { PK_U8 = 0, PK_U4 = 1, PK_E4M3 = 2, PK_T4 = 3, PK_T3 = 4 };

inline int pk_kind(const PkRows &x) {
  if (x.mode == PK_TURBO) return x.bits == 4 ? PK_T4 : PK_T3;
  return x.mode == PK_FP8 ? PK_E4M3 : x.bits == 8 ? PK_U8 : PK_U4;
}

// fn.template operator()<Kind>() for x's kind: each kernel template instantiated once per kind.
template <class Fn>
inline void with_pk_kind(const PkRows &x, Fn &&fn) {
  switch (pk_kind(x)) {
    case PK_U8: return fn.template operator()<PK_U8>();
    case PK_U4: return fn.template operator()<PK_U4>();
    case PK_T4: return fn.template operator()<PK_T4>();
    case PK_T3: return fn.template operator()<PK_T3>();
    default: return fn.template operator()<PK_E4M3>();
  }
}

// Affine codes carry a bias per group (value = scale * code + bias); E4M3 and turbo codes a scale only.
constexpr bool has_bias(int Kind) { return Kind == PK_U8 || Kind == PK_U4; }

constexpr int64_t row_bytes(int Kind, int64_t D) {
  return Kind == PK_U4 || Kind == PK_T4 ? D / 2 : Kind == PK_T3 ? D * 3 / 8 : D;
}

// E4M3 codes decode through f16 to 2^-8 their value; the scales the kernels apply carry the 256.
constexpr float kE4M3Mul = 256.f;

// How many keys ahead the loops pull code rows into L1. The chunk-ahead prefetch of attend_rows reaches L2 only in
// part, and the loads then waited on memory (at 16k keys a 4-key distance left q8 decode 1.4x f16's time, 16 about
// 1.1x; 8 and 24 measured between).
constexpr int64_t kAhead = 16;

// Code rows [j, j + n) of x into L1, every line a row touches (a 3-bit row of 48 bytes may span two).
inline void prefetch_codes(const PkRows &x, int64_t j, int64_t n, int64_t rb) {
  for (int64_t u = j; u < j + n; u++)
    for (uintptr_t a = (uintptr_t)x.codes[u] & ~(uintptr_t)63; a < (uintptr_t)x.codes[u] + rb; a += 64)
      __builtin_prefetch((const void *)a, 0, 3);
}

}  // namespace rmlx
