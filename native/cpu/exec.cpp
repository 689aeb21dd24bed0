// The lazy executor: runs a step recorded by src/backend/native/program.ts in one call.
//
// A program is a sequence of records of doubles: [op, nwords, fields...], nwords counting the whole record.
// Pointers and integers are exact in a double (x86-64 user addresses fit in 47 bits). Field lists, in order:
//   BINARY        kind out a b ndim shape[ndim] sa[ndim] sb[ndim]
//   UNARY         kind out x n param
//   GLU           kind out gate up n
//   SOFTMAX/SUM   out x outer n inner
//   ARGMAX        out x rows n
//   TOPK          vals idx x rows n k
//   RMSNORM       out x w wdt rows n eps one_plus
//   LAYERNORM     out x w wdt b bdt rows n eps
//   ROPE_TABLE    table pos T half inv_freq scale mscale
//   ROPE          out x table T H D dims traditional
//   KV_WRITE      kpool vpool pool_dt k v slots T row num_slots
//   PAGED_ATTN    out q kpool vpool pool_dt block_size kv_heads head_dim num_blocks tables max_blocks token_seq
//                 positions seq_lens num_seqs T heads scale window softcap
//   SDPA          out q k v B H Hkv L S D scale causal
//   MATMUL        out a b M K N nbd bshape[nbd] sa[nbd] sb[nbd]
//   COPY          dst src esize ndim shape[ndim] ss[ndim] ds[ndim]
//   ASTYPE        dst src n sdt ddt
//   MEMCPY        dst src nbytes
//   LINEAR        y x M K N w wdt bias
//   QLINEAR       y x M K N w scales biases sbdt mode bits group gscale bias bias_dt
//   GATHER_QLINEAR y x P xdiv K N idx E w scales biases sbdt mode bits group gscale
//   GATHER_LINEAR y x P xdiv K N idx E w wdt
//   DEQUANT_ROWS  out rows nrows N K w scales biases sbdt mode bits group gscale
//   TAKE_ROWS     out rows nrows N K w wdt
#include <cstring>

#include "ops.h"

using namespace rmlx;

namespace {

struct Reader {
  const double *p;
  int64_t i64() { return (int64_t)*p++; }
  int i32() { return (int)*p++; }
  float f32() { return (float)*p++; }
  template <class T>
  T *ptr() {
    return (T *)(uintptr_t)(int64_t)*p++;
  }
  void ints(int n, int64_t *out) {
    for (int k = 0; k < n; k++) out[k] = i64();
  }
};

int run_record(int op, Reader &r) {
  switch (op) {
    case OP_BINARY: {
      int kind = r.i32();
      float *out = r.ptr<float>();
      const float *a = r.ptr<const float>(), *b = r.ptr<const float>();
      int nd = r.i32();
      if (nd < 1 || nd > kMaxDims) return fail(RMLX_E_INVALID, "binary: bad rank %d", nd);
      int64_t shape[kMaxDims], sa[kMaxDims], sb[kMaxDims];
      r.ints(nd, shape);
      r.ints(nd, sa);
      r.ints(nd, sb);
      return op_binary(kind, out, a, b, nd, shape, sa, sb);
    }
    case OP_UNARY: {
      int kind = r.i32();
      float *out = r.ptr<float>();
      const float *x = r.ptr<const float>();
      int64_t n = r.i64();
      return op_unary(kind, out, x, n, r.f32());
    }
    case OP_GLU: {
      int kind = r.i32();
      float *out = r.ptr<float>();
      const float *g = r.ptr<const float>(), *u = r.ptr<const float>();
      return op_glu(kind, out, g, u, r.i64());
    }
    case OP_SOFTMAX:
    case OP_SUM: {
      float *out = r.ptr<float>();
      const float *x = r.ptr<const float>();
      int64_t outer = r.i64(), n = r.i64(), inner = r.i64();
      return op == OP_SOFTMAX ? op_softmax(out, x, outer, n, inner) : op_sum(out, x, outer, n, inner);
    }
    case OP_ARGMAX: {
      int32_t *out = r.ptr<int32_t>();
      const float *x = r.ptr<const float>();
      int64_t rows = r.i64(), n = r.i64();
      return op_argmax(out, x, rows, n);
    }
    case OP_TOPK: {
      float *vals = r.ptr<float>();
      int32_t *idx = r.ptr<int32_t>();
      const float *x = r.ptr<const float>();
      int64_t rows = r.i64(), n = r.i64(), k = r.i64();
      return op_topk(vals, idx, x, rows, n, k);
    }
    case OP_RMSNORM: {
      float *out = r.ptr<float>();
      const float *x = r.ptr<const float>();
      const void *w = r.ptr<const void>();
      int wdt = r.i32();
      int64_t rows = r.i64(), n = r.i64();
      float eps = r.f32();
      bool one_plus = r.i32() != 0;
      return op_rmsnorm(out, x, w, wdt, rows, n, eps, one_plus);
    }
    case OP_LAYERNORM: {
      float *out = r.ptr<float>();
      const float *x = r.ptr<const float>();
      const void *w = r.ptr<const void>();
      int wdt = r.i32();
      const void *b = r.ptr<const void>();
      int bdt = r.i32();
      int64_t rows = r.i64(), n = r.i64();
      return op_layernorm(out, x, w, wdt, b, bdt, rows, n, r.f32());
    }
    case OP_ROPE_TABLE: {
      float *table = r.ptr<float>();
      const int32_t *pos = r.ptr<const int32_t>();
      int64_t T = r.i64(), half = r.i64();
      const float *freqs = r.ptr<const float>();
      float scale = r.f32(), mscale = r.f32();
      return op_rope_table(table, pos, T, half, freqs, scale, mscale);
    }
    case OP_ROPE: {
      float *out = r.ptr<float>();
      const float *x = r.ptr<const float>(), *table = r.ptr<const float>();
      int64_t T = r.i64(), H = r.i64(), D = r.i64(), dims = r.i64();
      bool trad = r.i32() != 0;
      return op_rope(out, x, table, T, H, D, dims, trad);
    }
    case OP_KV_WRITE: {
      void *kp = r.ptr<void>(), *vp = r.ptr<void>();
      int dt = r.i32();
      const float *k = r.ptr<const float>(), *v = r.ptr<const float>();
      const int32_t *slots = r.ptr<const int32_t>();
      int64_t T = r.i64(), row = r.i64(), ns = r.i64();
      return op_kv_write(kp, vp, dt, k, v, slots, T, row, ns);
    }
    case OP_PAGED_ATTN: {
      PagedAttnArgs a;
      a.out = r.ptr<float>();
      a.q = r.ptr<const float>();
      a.kpool = r.ptr<const void>();
      a.vpool = r.ptr<const void>();
      a.pool_dt = r.i32();
      a.block_size = r.i64();
      a.kv_heads = r.i64();
      a.head_dim = r.i64();
      a.num_blocks = r.i64();
      a.tables = r.ptr<const int32_t>();
      a.max_blocks = r.i64();
      a.token_seq = r.ptr<const int32_t>();
      a.positions = r.ptr<const int32_t>();
      a.seq_lens = r.ptr<const int32_t>();
      a.num_seqs = r.i64();
      a.T = r.i64();
      a.heads = r.i64();
      a.scale = r.f32();
      a.window = r.i64();
      a.softcap = r.f32();
      return op_paged_attention(a);
    }
    case OP_SDPA: {
      float *out = r.ptr<float>();
      const float *q = r.ptr<const float>(), *k = r.ptr<const float>(), *v = r.ptr<const float>();
      int64_t B = r.i64(), H = r.i64(), Hkv = r.i64(), L = r.i64(), S = r.i64(), D = r.i64();
      float scale = r.f32();
      bool causal = r.i32() != 0;
      return op_sdpa(out, q, k, v, B, H, Hkv, L, S, D, scale, causal);
    }
    case OP_MATMUL: {
      float *out = r.ptr<float>();
      const float *a = r.ptr<const float>(), *b = r.ptr<const float>();
      int64_t M = r.i64(), K = r.i64(), N = r.i64();
      int nbd = r.i32();
      if (nbd < 0 || nbd > kMaxDims) return fail(RMLX_E_INVALID, "matmul: bad batch rank %d", nbd);
      int64_t bs[kMaxDims], sa[kMaxDims], sb[kMaxDims];
      r.ints(nbd, bs);
      r.ints(nbd, sa);
      r.ints(nbd, sb);
      return op_matmul(out, a, b, M, K, N, nbd, bs, sa, sb);
    }
    case OP_COPY: {
      void *dst = r.ptr<void>();
      const void *src = r.ptr<const void>();
      int esize = r.i32(), nd = r.i32();
      if (nd < 1 || nd > kMaxDims) return fail(RMLX_E_INVALID, "copy: bad rank %d", nd);
      int64_t shape[kMaxDims], ss[kMaxDims], ds[kMaxDims];
      r.ints(nd, shape);
      r.ints(nd, ss);
      r.ints(nd, ds);
      return op_copy(dst, src, esize, nd, shape, ss, ds);
    }
    case OP_ASTYPE: {
      void *dst = r.ptr<void>();
      const void *src = r.ptr<const void>();
      int64_t n = r.i64();
      int sdt = r.i32(), ddt = r.i32();
      return op_astype(dst, src, n, sdt, ddt);
    }
    case OP_MEMCPY: {
      void *dst = r.ptr<void>();
      const void *src = r.ptr<const void>();
      std::memmove(dst, src, (size_t)r.i64());
      return RMLX_OK;
    }
    case OP_LINEAR: {
      float *y = r.ptr<float>();
      const float *x = r.ptr<const float>();
      int64_t M = r.i64(), K = r.i64(), N = r.i64();
      const void *w = r.ptr<const void>();
      int wdt = r.i32();
      const void *bias = r.ptr<const void>();
      return rmlx_linear(y, x, M, K, N, w, wdt, bias);
    }
    case OP_QLINEAR: {
      float *y = r.ptr<float>();
      const float *x = r.ptr<const float>();
      int64_t M = r.i64(), K = r.i64(), N = r.i64();
      const uint32_t *w = r.ptr<const uint32_t>();
      const void *sc = r.ptr<const void>(), *bi = r.ptr<const void>();
      int sbdt = r.i32(), mode = r.i32(), bits = r.i32(), group = r.i32();
      float gs = r.f32();
      const void *bias = r.ptr<const void>();
      int bias_dt = r.i32();
      return rmlx_qlinear(y, x, M, K, N, w, sc, bi, sbdt, mode, bits, group, gs, bias, bias_dt);
    }
    case OP_GATHER_QLINEAR: {
      float *y = r.ptr<float>();
      const float *x = r.ptr<const float>();
      int64_t P = r.i64(), xdiv = r.i64(), K = r.i64(), N = r.i64();
      const int32_t *idx = r.ptr<const int32_t>();
      int64_t E = r.i64();
      const uint32_t *w = r.ptr<const uint32_t>();
      const void *sc = r.ptr<const void>(), *bi = r.ptr<const void>();
      int sbdt = r.i32(), mode = r.i32(), bits = r.i32(), group = r.i32();
      float gs = r.f32();
      return rmlx_gather_qlinear(y, x, P, xdiv, K, N, idx, E, w, sc, bi, sbdt, mode, bits, group, gs);
    }
    case OP_GATHER_LINEAR: {
      float *y = r.ptr<float>();
      const float *x = r.ptr<const float>();
      int64_t P = r.i64(), xdiv = r.i64(), K = r.i64(), N = r.i64();
      const int32_t *idx = r.ptr<const int32_t>();
      int64_t E = r.i64();
      const void *w = r.ptr<const void>();
      int wdt = r.i32();
      return rmlx_gather_linear(y, x, P, xdiv, K, N, idx, E, w, wdt);
    }
    case OP_DEQUANT_ROWS: {
      float *out = r.ptr<float>();
      const int32_t *rows = r.ptr<const int32_t>();
      int64_t nrows = r.i64(), N = r.i64(), K = r.i64();
      const uint32_t *w = r.ptr<const uint32_t>();
      const void *sc = r.ptr<const void>(), *bi = r.ptr<const void>();
      int sbdt = r.i32(), mode = r.i32(), bits = r.i32(), group = r.i32();
      float gs = r.f32();
      return rmlx_dequantize_rows(out, rows, nrows, N, K, w, sc, bi, sbdt, mode, bits, group, gs);
    }
    case OP_TAKE_ROWS: {
      float *out = r.ptr<float>();
      const int32_t *rows = r.ptr<const int32_t>();
      int64_t nrows = r.i64(), N = r.i64(), K = r.i64();
      const void *w = r.ptr<const void>();
      int wdt = r.i32();
      return rmlx_take_rows(out, rows, nrows, N, K, w, wdt);
    }
    default: return fail(RMLX_E_INVALID, "unknown op code %d", op);
  }
}

}  // namespace

extern "C" int rmlx_exec(const double *prog, int64_t nwords) {
  if (!prog && nwords > 0) return fail(RMLX_E_INVALID, "rmlx_exec: null program");
  int64_t at = 0, index = 0;
  while (at < nwords) {
    if (nwords - at < 2) return fail(RMLX_E_INVALID, "rmlx_exec: truncated record at word %lld", (long long)at);
    int op = (int)prog[at];
    int64_t len = (int64_t)prog[at + 1];
    if (len < 2 || at + len > nwords)
      return fail(RMLX_E_INVALID, "rmlx_exec: bad record length %lld at word %lld", (long long)len, (long long)at);
    Reader r{prog + at + 2};
    int st = run_record(op, r);
    if (st != RMLX_OK) return st;
    if (r.p != prog + at + len)
      return fail(RMLX_E_INTERNAL, "rmlx_exec: record %lld (op %d) has %lld words, read %lld", (long long)index, op,
                  (long long)len, (long long)(r.p - prog - at));
    at += len;
    index++;
  }
  return RMLX_OK;
}
