// The kernels the executor (exec.cpp) calls for the records of a step; the records themselves are declared in the
// op list (src/backend/native/oplist.ts) and generated into oplist_gen.h.
#pragma once
#include <cstdint>

#include "common.h"

namespace rmlx {

// Element offsets under two sets of strides (sa, sb) of row r of a tensor whose row dimensions are shape[0..nd):
// the row index is taken apart from the innermost of those dimensions out.
static inline void row_offsets(int64_t r, int nd, const int64_t *shape, const int64_t *sa, const int64_t *sb,
                               int64_t &oa, int64_t &ob) {
  oa = ob = 0;
  for (int d = nd - 1; d >= 0; d--) {
    int64_t i = r % shape[d];
    r /= shape[d];
    oa += i * sa[d];
    ob += i * sb[d];
  }
}

constexpr int kMaxDims = 8;

// Elementwise, f32. Strides are in elements; a stride of 0 broadcasts.
int op_binary(int kind, float *out, const float *a, const float *b, int ndim, const int64_t *shape,
              const int64_t *sa, const int64_t *sb);
int op_unary(int kind, float *out, const float *x, int64_t n, float param);
int op_glu(int kind, float *out, const float *gate, const float *up, int64_t n);
// relu(gate)^2 * up (BitNet's MLP).
int op_relu2_mul(float *out, const float *gate, const float *up, int64_t n);
// Ternary Linear (rmlx_ternary_linear).
int op_ternary_linear(float *y, const float *x, int64_t M, int64_t K, int64_t N, const uint8_t *w, float scale,
                      bool divide);

// Reductions over the middle axis of [outer, n, inner].
int op_softmax(float *out, const float *x, int64_t outer, int64_t n, int64_t inner);
int op_sum(float *out, const float *x, int64_t outer, int64_t n, int64_t inner);
int op_argmax(int32_t *out, const float *x, int64_t rows, int64_t n);
int op_topk(float *vals, int32_t *idx, const float *x, int64_t rows, int64_t n, int64_t k);

int op_rmsnorm(float *out, const float *x, const void *w, int wdt, int64_t rows, int64_t n, float eps, bool one_plus);
int op_layernorm(float *out, const float *x, const void *w, int wdt, const void *b, int bdt, int64_t rows, int64_t n,
                 float eps);
// table: cos [T, dims/2] then sin [T, dims/2], both times mscale (op_rope_table); shared by every rope of a step.
int op_rope_table(float *table, const int32_t *pos, int64_t T, int64_t half, const float *inv_freq, float scale,
                  float mscale);
int op_rope(float *out, const float *x, const float *table, int64_t T, int64_t H, int64_t D, int64_t dims,
            bool traditional);

// Paged attention takes its record (oplist_gen.h) whole: twenty fields are clearer by name than by position.
struct PagedAttentionRecord;
int op_kv_write(void *kpool, void *vpool, int pool_dt, const float *k, const float *v, const int32_t *slots,
                int64_t T, int64_t row, int64_t num_slots);
int op_paged_attention(const PagedAttentionRecord &a);
// The same over pools of any KV page format (float or packed codes, see KvPage in the op list).
struct PagedAttentionPageRecord;
struct KvWritePageRecord;
int op_paged_attention_page(const PagedAttentionPageRecord &a);
int op_kv_write_page(const KvWritePageRecord &a);
int op_sdpa(float *out, const float *q, const float *k, const float *v, int64_t B, int64_t H, int64_t Hkv, int64_t L,
            int64_t S, int64_t D, float scale, bool causal);

// out[b] = A[b] @ B[b]; batch offsets given per batch dim as strides (elements) over the broadcast batch shape.
int op_matmul(float *out, const float *a, const float *b, int64_t M, int64_t K, int64_t N, int nbd,
              const int64_t *bshape, const int64_t *sa, const int64_t *sb);

// Strided copy of elements of esize bytes: dst[i...] = src[i...] with separate strides (elements).
int op_copy(void *dst, const void *src, int esize, int ndim, const int64_t *shape, const int64_t *ss,
            const int64_t *ds);
int op_astype(void *dst, const void *src, int64_t n, int sdt, int ddt);

// Packed KV rows as the fused attention kernels read them: key j's codes, f16 group scales and (affine) f16 group
// biases. mode: PK_AFFINE (bits 8 or 4: value = scale * code + bias), PK_FP8 (E4M3 code * scale) or PK_TURBO
// (bits 4 or 3: Lloyd-Max level of the code * the row's scale, one group of D; see KV_TURBO in ops_attention).
enum : int { PK_AFFINE = 1, PK_FP8 = 2, PK_TURBO = 3 };

// Lloyd-Max levels of a unit Gaussian for the turbo codes (from scripts/turbo_codebook.ts).
inline constexpr float kTurbo3[8] = {-2.151945705f, -1.343909279f, -0.756005281f, -0.245094179f,
                                     0.245094179f,  0.756005281f,  1.343909279f,  2.151945705f};
inline constexpr float kTurbo4[16] = {-2.732589579f, -2.069017236f, -1.618046395f, -1.256231206f,
                                      -0.942340464f, -0.656759124f, -0.388048303f, -0.128395031f,
                                      0.128395031f,  0.388048303f,  0.656759124f,  0.942340464f,
                                      1.256231206f,  1.618046395f,  2.069017236f,  2.732589579f};
struct PkRows {
  const uint8_t *const *codes;
  const uint16_t *const *scales;
  const uint16_t *const *biases;
  int mode, bits;
  int64_t group;
};

// Nibble order of a 4-bit row, the order in which 16 bytes (32 values) unpack into four vectors of 8 without a
// shuffle: position p of each block of 32 holds the value in byte (p / 8 % 2) * 8 + p % 8 of the block, low nibble
// (the even value) for p < 16, high nibble (the odd value) after. Returns the element index of position p.
inline int64_t pk_nibble_pos(int64_t p) {
  const int64_t b = p & ~(int64_t)31, i = (p >> 3) & 3, k = p & 7;
  return b + 2 * ((i & 1) * 8 + k) + (i >> 1);
}

// Row primitives behind the hot kernels, one table per ISA (ops_kern.cpp: portable; ops_kern_avx2.cpp: AVX2+FMA+F16C;
// ops_kern_avx512.cpp: the AVX2 table with AVX-512 packed-KV kernels), chosen by kern() from the active ISA. n is any length; pointers need no alignment.
struct Kern {
  float (*dot)(const float *a, const float *b, int64_t n);
  // y += a * x
  void (*axpy)(float *y, float a, const float *x, int64_t n);
  // y *= a
  void (*scal)(float *y, float a, int64_t n);
  // y = exp(x - m); returns the sum of y
  float (*exp_sum)(float *y, const float *x, float m, int64_t n);
  float (*max)(const float *x, int64_t n);
  float (*sumsq)(const float *x, int64_t n);
  // y = x * s * w (w may be null: y = x * s)
  void (*scale_mul)(float *y, const float *x, float s, const float *w, int64_t n);
  void (*silu)(float *y, const float *x, int64_t n);
  void (*sigmoid)(float *y, const float *x, int64_t n);
  void (*gelu_tanh)(float *y, const float *x, int64_t n);
  // y = act(g) * u
  void (*swiglu)(float *y, const float *g, const float *u, int64_t n);
  void (*geglu)(float *y, const float *g, const float *u, int64_t n);
  void (*add)(float *y, const float *a, const float *b, int64_t n);
  void (*sub)(float *y, const float *a, const float *b, int64_t n);
  void (*mul)(float *y, const float *a, const float *b, int64_t n);
  void (*f16_to_f32)(float *y, const uint16_t *x, int64_t n);
  void (*bf16_to_f32)(float *y, const uint16_t *x, int64_t n);
  void (*f32_to_f16)(uint16_t *y, const float *x, int64_t n);
  void (*f32_to_bf16)(uint16_t *y, const float *x, int64_t n);
  // Attention: s[j] = dot(q, k[j]) * scale for j < nj; acc += sum_j p[j] * v[j] (rows of length D).
  void (*dots)(float *s, const float *q, const float *const *k, int64_t nj, int64_t D, float scale);
  void (*pv)(float *acc, const float *p, const float *const *v, int64_t nj, int64_t D);
  // The same for R query rows at once (row r: s + r * lds, q + r * ldq, p + r * ldp, acc + r * D), so that each
  // key and value row is loaded once for all of them.
  void (*dots_rows)(float *s, int64_t lds, const float *q, int64_t ldq, int64_t R, const float *const *k, int64_t nj,
                    int64_t D, float scale);
  void (*pv_rows)(float *acc, const float *p, int64_t ldp, int64_t R, const float *const *v, int64_t nj, int64_t D);
  // dots and pv for R query rows (q and acc rows D apart, s and p rows lds / ldp apart) reading 16-bit rows (dt:
  // RMLX_F16 or RMLX_BF16) straight from a KV pool, each widened once for all R rows (a KV head's GQA rows).
  void (*dots16)(float *s, int64_t lds, const float *q, int64_t R, const uint16_t *const *k, int64_t nj, int64_t D,
                 float scale, int dt);
  void (*pv16)(float *acc, const float *p, int64_t ldp, int64_t R, const uint16_t *const *v, int64_t nj, int64_t D,
               int dt);
  // Attention read straight from packed KV rows (PkRows), for R query rows (row r: q + r * D, s + r * lds,
  // p + r * ldp, acc + r * D). pk_dots: s = q . k, where q already carries the softmax scale and qsum[r * ngroups + g]
  // is the sum of q row r over group g (affine: q . (s c + b) = s (q . c) + b sum(q)). pk_pv: acc += sum_j p[j] v[j].
  // 4-bit rows are taken in nibble order (pk_nibble_pos): q and acc must be in that order too. Group a multiple of 32.
  void (*pk_dots)(float *s, int64_t lds, const float *q, const float *qsum, int64_t R, const PkRows &k, int64_t nj,
                  int64_t D);
  void (*pk_pv)(float *acc, const float *p, int64_t ldp, int64_t R, const PkRows &v, int64_t nj, int64_t D);
  // dst[0..D) = one packed row as f32, in element order (any group that divides D).
  void (*pk_decode)(float *dst, const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, int mode,
                    int bits, int64_t group, int64_t D);
  // One gated delta-rule token over a state S [Dv, Dk] (row j: value dim j), each row read once from memory:
  // u_j = beta (v_j - decay S_j . k); S_j = decay S_j + u_j k; out_j = S_j . q.
  void (*delta_step)(float *S, const float *k, const float *q, const float *v, float decay, float beta, float *out,
                     int64_t Dv, int64_t Dk);
  // Whether pk_dots and pk_pv take PK_TURBO rows; otherwise attention decodes turbo rows into scratch first.
  bool pk_turbo;
  // dots_rows and pv_rows reading 16-bit rows (dt: RMLX_F16 or RMLX_BF16) straight from a KV pool; null where the
  // ISA has none (prefill tiles then convert their rows into scratch first).
  void (*dots_rows16)(float *s, int64_t lds, const float *q, int64_t ldq, int64_t R, const uint16_t *const *k,
                      int64_t nj, int64_t D, float scale, int dt);
  void (*pv_rows16)(float *acc, const float *p, int64_t ldp, int64_t R, const uint16_t *const *v, int64_t nj,
                    int64_t D, int dt);
};

const Kern &kern();
const Kern &kern_portable();
namespace avx2 {
const Kern &kern();
}
namespace avx512 {
const Kern &kern();
}

}  // namespace rmlx
