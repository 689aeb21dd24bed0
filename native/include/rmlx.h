/* rmlx native kernel library: the flat C ABI loaded through bun:ffi.
 *
 * Conventions (see DESIGN.md):
 *  - plain pointers, integers and floats only; no structs by value;
 *  - every function returns an int status: 0 = ok, otherwise an RMLX_E_* code,
 *    with a message available from rmlx_last_error() (thread-local);
 *  - activations and outputs are f32; weights may be f32 / f16 / bf16 or an MLX quantized format;
 *  - buffers need no particular alignment; kernels use unaligned loads.
 */
#ifndef RMLX_H
#define RMLX_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#pragma GCC visibility push(default)

#define RMLX_ABI_VERSION 4

/* status codes */
#define RMLX_OK 0
#define RMLX_E_INVALID 1     /* bad argument: shape, bits, group size, null pointer */
#define RMLX_E_UNSUPPORTED 2 /* valid but not implemented (e.g. dtype combination) */
#define RMLX_E_NOMEM 3
#define RMLX_E_INTERNAL 4

/* dtypes (numbering shared with src/backend/native/lib.ts) */
#define RMLX_F32 0
#define RMLX_F16 1
#define RMLX_BF16 2
#define RMLX_U32 3
#define RMLX_U8 4
#define RMLX_I32 5

/* quantization modes */
#define RMLX_Q_AFFINE 0
#define RMLX_Q_MXFP4 1
#define RMLX_Q_MXFP8 2
#define RMLX_Q_NVFP4 3
/* OR'ed into a mode: products of many rows of x over this weight stay exact f32 in the "auto" gemm mode (the
   weights of models that route tokens to experts, where a near-tie between two experts turns a rounding of x
   into another expert's output). */
#define RMLX_Q_EXACT_ROWS 0x100

/* ---- runtime ---- */
int rmlx_abi_version(void);
/* Starts the thread pool with n threads (0 = one per online core). Idempotent. RMLX_ISA in the environment, if
   set, forces an ISA variant as rmlx_set_isa does: RMLX_E_INVALID when it names none, RMLX_E_UNSUPPORTED when
   the CPU lacks it (the library is then not started). Without it, the best variant the CPU has. */
int rmlx_init(int nthreads);
int rmlx_num_threads(void);
/* Name of the ISA variant in use: "avx512vnni", "avx512", "avx2" or "scalar". */
const char *rmlx_isa(void);
/* Forces an ISA variant ("avx512vnni", "avx512", "avx2", "scalar"); fails if the CPU lacks it. For tests and
   benchmarks. */
int rmlx_set_isa(const char *name);
/* Arithmetic of few-row (decode) products of quantized weights: "x16" (default) puts each weight group's slice
   of x in 16-bit fixed point and sums exact integer products (affine, mxfp4, nvfp4); mxfp8 codes become exact
   bf16 weights dotted with x split in two bf16 parts (x off by at most 2^-18 of |x|) where the CPU has
   AVX512-BF16 and VBMI, else f16-converted weights in exact f32 sums; "x8" is x16 except that products of affine
   2 and 4-bit weights (8-bit where the CPU has AVX512-VNNI) with 2 or more rows of x, prefill included, put x in
   int8 per weight group (step max|x| / 127) and sum integer products (vpdpbusd / vpmaddubsw), about 1/254 of
   max|x| per weight off, except weights with RMLX_Q_EXACT_ROWS (they keep x16 rows); "f32" keeps the plain f32
   kernels for every format.
   RMLX_GEMV=f32 (or x8, x16) in the environment sets the default. */
int rmlx_set_gemv_mode(const char *name);
const char *rmlx_gemv_mode(void);
/* Arithmetic of prefill-shaped products (many rows of x) that the x8 kernels do not take: "auto" (the default)
   is "x16" for weights without RMLX_Q_EXACT_ROWS while the gemv mode is x16 or x8, else "f32"; "f32": exact;
   "x16": affine 4 and 8-bit weights on the AVX-512 variants take 16-bit integer dot products, x in 16-bit fixed
   point per weight group (step max|x| / 32639) as the one-row x16 kernels put it, exact int32 sums (other formats,
   and other variants, f32); "bf16": x and the decoded weights rounded to bf16 (nearest even) for AVX512-BF16 dot
   products with f32 sums, twice the f32 FMA rate (x16 where the CPU has no AVX512-BF16).
   RMLX_GEMM sets the default; rmlx_gemm_mode() names the mode in effect (f32 where the ISA variant in use has
   none of them, or where "auto" keeps f32 because the gemv mode is f32). */
int rmlx_set_gemm_mode(const char *name);
const char *rmlx_gemm_mode(void);
const char *rmlx_last_error(void);

/* ---- memory (64-byte aligned, zero-filled) ---- */
int rmlx_alloc(int64_t nbytes, void **out);
int rmlx_free(void *p);
/* Makes [addr, addr + nbytes) of an allocation resident now, contents unchanged (MADV_POPULATE_WRITE): large
 * allocations are mapped lazily, and the page faults of first writes, dear on virtual machines, would otherwise come
 * inside the steps that write them. A no-op for small allocations (resident already) and where the kernel cannot
 * (before Linux 5.14, or short of memory: the pages are then faulted in as written). */
int rmlx_populate(void *addr, int64_t nbytes);

/* ---- dense and quantized products (native/cpu/linear.cpp, qlinear.cpp, gather.cpp, dequant.cpp; SIMD kernels in
 * qkern_*) ----
 * y[M,N] = x[M,K] @ W^T, W stored row-major [N,K] (a Linear's weight); optional bias[N] (same dtype as W).
 * w_dtype: RMLX_F32 / RMLX_F16 / RMLX_BF16. */
int rmlx_linear(float *y, const float *x, int64_t M, int64_t K, int64_t N,
                const void *w, int w_dtype, const void *bias);

/* Quantized Linear, MLX layout: w uint32 [N, K*bits/32]; scales [N, K/group]; biases [N, K/group] (affine only).
 * sb_dtype: dtype of scales and biases for affine (F32/F16/BF16); ignored for fp modes (scales are uint8).
 * global_scale: nvfp4 only (0 = absent). bias: optional Linear bias [N] in bias_dtype. */
int rmlx_qlinear(float *y, const float *x, int64_t M, int64_t K, int64_t N,
                 const uint32_t *w, const void *scales, const void *biases, int sb_dtype,
                 int mode, int bits, int group_size, float global_scale,
                 const void *bias, int bias_dtype);

/* MoE: for each of T*topk (token, expert) pairs p, y[p, :] = x[p / x_div, :] @ W[idx[p]]^T.
 * w: stacked experts [E, N, K*bits/32]; scales/biases [E, N, K/group]. x_div is topk when x holds one row per
 * token, 1 when it holds one row per pair. Rows sharing an expert are batched. */
int rmlx_gather_qlinear(float *y, const float *x, int64_t P, int64_t x_div, int64_t K, int64_t N,
                        const int32_t *idx, int64_t E,
                        const uint32_t *w, const void *scales, const void *biases, int sb_dtype,
                        int mode, int bits, int group_size, float global_scale);

/* Dense stacked experts (bf16/f16/f32), same indexing as rmlx_gather_qlinear: w [E, N, K]. */
int rmlx_gather_linear(float *y, const float *x, int64_t P, int64_t x_div, int64_t K, int64_t N,
                       const int32_t *idx, int64_t E, const void *w, int w_dtype);

/* out[r, :] = dequant(W)[rows[r], :] as f32, for r < nrows (rows == NULL: all N rows in order).
 * Quantized embedding lookup and full dequantization. */
int rmlx_dequantize_rows(float *out, const int32_t *rows, int64_t nrows, int64_t N, int64_t K,
                         const uint32_t *w, const void *scales, const void *biases, int sb_dtype,
                         int mode, int bits, int group_size, float global_scale);

/* out[r, :] = W[rows[r], :] as f32 for a float table W [N, K] in w_dtype (embedding lookup). */
int rmlx_take_rows(float *out, const int32_t *rows, int64_t nrows, int64_t N, int64_t K,
                   const void *w, int w_dtype);

/* ---- sampling (native/cpu/sample.cpp) ----
 * Picks the next token from one row x[V] of processed logits (bias and penalties already applied).
 * params: [temperature, top_p, top_k, min_p, u, n_top, want_logprobs]; u is uniform in [0, 1), used only when
 * temperature > 0. probs (V floats) and keep (V bytes) are scratch owned by the caller. out: [token, logprob,
 * logZ] (logprob and logZ NaN unless want_logprobs or n_top > 0); top: the n_top most likely ids, best first.
 * RMLX_E_INVALID when every logit is -inf. */
int rmlx_sample(const float *x, int64_t V, const double *params, float *probs, uint8_t *keep, int32_t *top,
                double *out);

/* Ternary Linear (BitNet b1.58, native/cpu/ternary.cpp): w uint8 [N/4, K], byte (r, k) holding the codes t + 1 of
 * rows r + i*N/4 in bits 2i..2i+1 (transformers' packing; N % 4 == 0). Each row of x is quantized to int8 with
 * s = 127 / max(max|x|, 1e-5); y = dot / (scale * s) when divide, else dot / s * scale. */
int rmlx_ternary_linear(float *y, const float *x, int64_t M, int64_t K, int64_t N, const uint8_t *w, float scale,
                        int divide);

/* ---- the lazy executor (native/cpu/exec.cpp) ----
 * Runs a recorded step in one call. prog is nwords doubles: a sequence of records [op, nwords of the record,
 * fields...] (pointers and integers are exact in a double on x86-64 user space), run in order; the first record
 * that fails stops the program and its status is returned.
 * This program format is part of the ABI, as much as the functions here: each op's code and fields, in order, are
 * declared once in the op list, src/backend/native/oplist.ts, from which scripts/gen_oplist.ts generates the
 * TypeScript encoders and the C++ decoder (native/cpu/oplist_gen.h). A change to an op's code or fields changes
 * the ABI and RMLX_ABI_VERSION with it. */
int rmlx_exec(const double *prog, int64_t nwords);

/* rmlx_exec without waiting: the program (and every pointer in it) must stay valid until it has run. Programs run
 * in order on one executor thread; *ticket names this one. rmlx_exec and rmlx_exec_wait wait for them first, and
 * rmlx_free defers its release until they have run. */
int rmlx_exec_async(const double *prog, int64_t nwords, int64_t *ticket);
/* Waits for the programs up to ticket (a negative one: every program launched so far); the first failure among them
 * not yet reported (its message through rmlx_last_error), or RMLX_OK. */
int rmlx_exec_wait(int64_t ticket);
/* Seconds spent running programs so far (rmlx_exec and launched ones). */
double rmlx_exec_seconds(void);

/* ---- benchmarks ---- */
/* STREAM-like triad a = b + s*c over n floats on all threads, repeated reps times; returns seconds of the best rep. */
int rmlx_bench_triad(int64_t n, int reps, double *best_seconds);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif
#endif
