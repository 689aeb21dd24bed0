// Ternary (BitNet b1.58) product kernels: weights as 2-bit codes c = t + 1 packed four to a byte along the output
// dimension (transformers' layout: byte (r, k) of a [N/4, K] matrix holds rows r + i*N/4 in bits 2i..2i+1), x as
// int8 per row. Each variant fills dots[m*N + i*R + r] = sum_k c_i(r, k) * xq[m, k] for packed rows [r0, r1);
// the caller subtracts sum_k xq[m, k] (the code offset) and applies the scales.
#pragma once
#include <cstdint>

namespace rmlx {

struct TernaryJob {
  const int8_t *xq;  // [M, K]
  const uint8_t *w;  // [R, K], R = N / 4
  int32_t *dots;     // [M, N]
  int64_t M, K, R;
};

// Rows of x per tile: 32 rows of the widest BitNet input (6912) are 216 KiB.
constexpr int64_t kTernaryTileM = 32;

using TernaryDots = void (*)(const TernaryJob &, int64_t r0, int64_t r1);

namespace avx2_t {
void ternary_dots(const TernaryJob &j, int64_t r0, int64_t r1);
}
namespace avx512vnni_t {
void ternary_dots(const TernaryJob &j, int64_t r0, int64_t r1);
}

// Codes times x for k in [k0, K) of one packed row and one row of x, field by field (the SIMD variants' tails).
static inline void ternary_tail(const uint8_t *w, const int8_t *x, int64_t k0, int64_t K, int32_t s[4]) {
  for (int64_t k = k0; k < K; k++) {
    const int32_t b = w[k], v = x[k];
    s[0] += (b & 3) * v;
    s[1] += ((b >> 2) & 3) * v;
    s[2] += ((b >> 4) & 3) * v;
    s[3] += (b >> 6) * v;
  }
}

}  // namespace rmlx
