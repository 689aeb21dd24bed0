// The lazy executor: runs a step recorded by the native backend in one call. The records and their decoder are
// generated from the op list (oplist_gen.h); here each decoded record is handed to its kernel.
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "quant_formats.h"

#include "oplist_gen.h"

namespace rmlx {

int run_op(const BinaryRecord &r) { return op_binary(r.kind, r.out, r.a, r.b, r.ndim, r.shape, r.sa, r.sb); }
int run_op(const UnaryRecord &r) { return op_unary(r.kind, r.out, r.x, r.n, r.param); }
int run_op(const GluRecord &r) { return op_glu(r.kind, r.out, r.gate, r.up, r.n); }
int run_op(const SoftmaxRecord &r) { return op_softmax(r.out, r.x, r.outer, r.n, r.inner); }
int run_op(const SumRecord &r) { return op_sum(r.out, r.x, r.outer, r.n, r.inner); }
int run_op(const ArgmaxRecord &r) { return op_argmax(r.out, r.x, r.rows, r.n); }
int run_op(const TopkRecord &r) { return op_topk(r.vals, r.idx, r.x, r.rows, r.n, r.k); }

int run_op(const RmsNormRecord &r) { return op_rmsnorm(r.out, r.x, r.w, r.wdt, r.rows, r.n, r.eps, r.one_plus); }

int run_op(const LayerNormRecord &r) {
  return op_layernorm(r.out, r.x, r.w, r.wdt, r.b, r.bdt, r.rows, r.n, r.eps);
}

int run_op(const RopeTableRecord &r) {
  return op_rope_table(r.table, r.pos, r.T, r.half, r.inv_freq, r.scale, r.mscale);
}

int run_op(const RopeRecord &r) { return op_rope(r.out, r.x, r.table, r.T, r.H, r.D, r.dims, r.traditional); }

int run_op(const KvWriteRecord &r) {
  return op_kv_write(r.kpool, r.vpool, r.pool_dt, r.k, r.v, r.slots, r.T, r.row, r.num_slots);
}

int run_op(const PagedAttentionRecord &r) { return op_paged_attention(r); }
int run_op(const PagedAttentionPageRecord &r) { return op_paged_attention_page(r); }
int run_op(const KvWritePageRecord &r) { return op_kv_write_page(r); }

int run_op(const SdpaRecord &r) {
  return op_sdpa(r.out, r.q, r.k, r.v, r.B, r.H, r.Hkv, r.L, r.S, r.D, r.scale, r.causal);
}

int run_op(const MatmulRecord &r) {
  return op_matmul(r.out, r.a, r.b, r.M, r.K, r.N, r.nbd, r.bshape, r.sa, r.sb);
}

int run_op(const CopyRecord &r) { return op_copy(r.dst, r.src, r.esize, r.ndim, r.shape, r.ss, r.ds); }
int run_op(const AstypeRecord &r) { return op_astype(r.dst, r.src, r.n, r.sdt, r.ddt); }

int run_op(const MemcpyRecord &r) {
  std::memmove(r.dst, r.src, (size_t)r.nbytes);
  return RMLX_OK;
}

int run_op(const LinearRecord &r) { return rmlx_linear(r.y, r.x, r.M, r.K, r.N, r.w, r.wdt, r.bias); }

int run_op(const QlinearRecord &r) {
  const QuantWeight &q = r.weight;
  return rmlx_qlinear(r.y, r.x, r.M, r.K, r.N, q.w, q.scales, q.biases, q.sbdt, q.mode, q.bits, q.group, q.gscale,
                      r.bias, r.bias_dt);
}

int run_op(const GatherQlinearRecord &r) {
  const QuantWeight &q = r.weight;
  return rmlx_gather_qlinear(r.y, r.x, r.P, r.xdiv, r.K, r.N, r.idx, r.E, q.w, q.scales, q.biases, q.sbdt, q.mode,
                             q.bits, q.group, q.gscale);
}

int run_op(const GatherLinearRecord &r) {
  return rmlx_gather_linear(r.y, r.x, r.P, r.xdiv, r.K, r.N, r.idx, r.E, r.w, r.wdt);
}

int run_op(const DequantRowsRecord &r) {
  const QuantWeight &q = r.weight;
  return rmlx_dequantize_rows(r.out, r.rows, r.nrows, r.N, r.K, q.w, q.scales, q.biases, q.sbdt, q.mode, q.bits,
                              q.group, q.gscale);
}

int run_op(const TernaryLinearRecord &r) {
  return op_ternary_linear(r.y, r.x, r.M, r.K, r.N, r.w, r.scale, r.divide);
}

int run_op(const Relu2MulRecord &r) { return op_relu2_mul(r.out, r.gate, r.up, r.n); }

int run_op(const TakeRowsRecord &r) { return rmlx_take_rows(r.out, r.rows, r.nrows, r.N, r.K, r.w, r.wdt); }

bool same_format(const QlinearRecord &a, const QlinearRecord &b) {
  const QuantWeight &v = a.weight, &w = b.weight;
  return v.sbdt == w.sbdt && v.mode == w.mode && v.bits == w.bits && v.group == w.group;
}

bool same_format(const LinearRecord &a, const LinearRecord &b) { return a.wdt == b.wdt; }

int weight_of(WeightMat &W, const QlinearRecord &r) {
  const QuantWeight &q = r.weight;
  return make_quant_mat(W, "rmlx_qlinear", q.w, q.scales, q.biases, q.sbdt, q.mode, q.bits, q.group, q.gscale, r.N,
                        r.K);
}

int weight_of(WeightMat &W, const LinearRecord &r) { return make_dense_mat(W, "rmlx_linear", r.w, r.wdt, r.N, r.K); }

// The dtype of a record's bias: its own for quantized weights, the weight's for dense ones.
int bias_dtype(const QlinearRecord &r) { return r.bias_dt; }
int bias_dtype(const LinearRecord &r) { return r.wdt; }

// Consecutive product records of one kind over the same x (a layer's q, k and v projections, with or without
// biases, or gate and up; the native graph puts them next to each other) run as one product of several weights
// when x has few rows: x is prepared once and one dispatch covers the tiles of all of them. Quantized runs share
// the format (about 10% of those products' time at one row on a 2-core Zen 5, 4-5% of a 0.6B 4-bit decode step);
// dense runs share the dtype (bf16 q/k/v of Qwen3-0.6B shapes from memory, one row: 147-169 us as three products
// against 127-149 as one). The results are those of the records run one by one, bit for bit. Returns the number
// of records taken (0: run the record alone).
template <class Rec, int Op, int64_t Words, void (*Decode)(const double *, Rec &)>
int64_t run_many(const double *prog, int64_t at, int64_t nwords, int &status) {
  constexpr int kMost = 8;
  Rec rs[kMost];
  auto take = [&](int64_t rec, Rec &r) {
    if (rec + Words > nwords || (int)prog[rec] != Op || (int64_t)prog[rec + 1] != Words) return false;
    Decode(prog + rec + 2, r);
    return !r.bias || is_float_dtype(bias_dtype(r));
  };
  if (!take(at, rs[0]) || rs[0].M >= kGemmMinRows || rs[0].M <= 0 || !rs[0].x) return 0;
  int n = 1;
  while (n < kMost && take(at + n * Words, rs[n]) && rs[n].x == rs[0].x && rs[n].M == rs[0].M &&
         rs[n].K == rs[0].K && same_format(rs[n], rs[0]))
    n++;
  if (n == 1) return 0;
  float *ys[kMost];
  WeightMat Ws[kMost];
  std::vector<float> bias[kMost];
  const float *biases[kMost];
  for (int i = 0; i < n; i++) {
    const Rec &r = rs[i];
    ys[i] = r.y;
    if (!r.y || r.y == r.x) return 0;
    status = weight_of(Ws[i], r);
    if (status != RMLX_OK) return n;
    bias[i] = bias_f32(r.bias, bias_dtype(r), r.N);
    biases[i] = r.bias ? bias[i].data() : nullptr;
  }
  matmul_many(ys, rs[0].x, rs[0].M, Ws, biases, n);
  return n;
}

// run_many for the record at `at`, whichever product kind it is.
int64_t run_products_many(const double *prog, int64_t at, int64_t nwords, int &status) {
  if ((int)prog[at] == OP_QLINEAR)
    return run_many<QlinearRecord, OP_QLINEAR, kQlinearWords, decode_qlinear>(prog, at, nwords, status);
  if ((int)prog[at] == OP_LINEAR)
    return run_many<LinearRecord, OP_LINEAR, kLinearWords, decode_linear>(prog, at, nwords, status);
  return 0;
}

}  // namespace rmlx

namespace rmlx {

int exec_program(const double *prog, int64_t nwords);

namespace {

// Programs launched with rmlx_exec_async run in order on one executor thread, so that the host can record the next
// step while this one computes. Everything else that runs kernels or frees memory first waits for them (rmlx_exec,
// rmlx_exec_wait) or is deferred until they are done (rmlx_free): one program computes at a time, and the thread
// pool keeps a single caller.
struct Executor {
  std::mutex mu;
  std::condition_variable work, done;
  std::deque<std::pair<const double *, int64_t>> queue;
  int64_t issued = 0, finished = 0;
  // The first failure not yet reported, and the ticket of its program.
  int status = RMLX_OK;
  int64_t failed_ticket = 0;
  std::string message;
  std::vector<void *> frees;  // rmlx_free calls while programs were queued
  double busy_seconds = 0;
  bool started = false;
};

// Never destroyed: the executor thread waits on it until the process ends.
Executor &g_exec = *new Executor;

// Runs a program on the calling thread and counts its time in busy_seconds.
int run_counted(const double *prog, int64_t nwords) {
  const auto t0 = std::chrono::steady_clock::now();
  const int st = exec_program(prog, nwords);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lk(g_exec.mu);
  g_exec.busy_seconds += s;
  return st;
}

void executor_loop() {
  Executor &x = g_exec;
  for (;;) {
    std::pair<const double *, int64_t> job;
    {
      std::unique_lock<std::mutex> lk(x.mu);
      x.work.wait(lk, [&] { return !x.queue.empty(); });
      job = x.queue.front();
    }
    const int st = run_counted(job.first, job.second);
    std::vector<void *> frees;
    {
      std::lock_guard<std::mutex> lk(x.mu);
      x.queue.pop_front();
      x.finished++;
      if (st != RMLX_OK && x.status == RMLX_OK) {
        x.status = st;
        x.failed_ticket = x.finished;
        x.message = rmlx_last_error();
      }
      if (x.queue.empty()) frees.swap(x.frees);
    }
    for (void *p : frees) free_now(p);
    x.done.notify_all();
  }
}

// Waits until the programs up to ticket (every one launched so far when negative) have run; the first failure among
// them, with its message, if any.
int wait_for(int64_t ticket) {
  Executor &x = g_exec;
  std::unique_lock<std::mutex> lk(x.mu);
  if (ticket < 0) ticket = x.issued;
  x.done.wait(lk, [&] { return x.finished >= ticket; });
  if (x.status != RMLX_OK && x.failed_ticket <= ticket) {
    const int st = x.status;
    const std::string msg = x.message;
    x.status = RMLX_OK;
    lk.unlock();
    return fail(st, "%s", msg.c_str());
  }
  return RMLX_OK;
}

}  // namespace

bool defer_free(void *p) {
  Executor &x = g_exec;
  std::lock_guard<std::mutex> lk(x.mu);
  if (x.finished == x.issued) return false;
  x.frees.push_back(p);
  return true;
}

}  // namespace rmlx

extern "C" int rmlx_exec_async(const double *prog, int64_t nwords, int64_t *ticket) {
  if ((!prog && nwords > 0) || !ticket) return rmlx::fail(RMLX_E_INVALID, "rmlx_exec_async: bad arguments");
  rmlx::Executor &x = rmlx::g_exec;
  std::lock_guard<std::mutex> lk(x.mu);
  if (!x.started) {
    std::thread(rmlx::executor_loop).detach();
    x.started = true;
  }
  x.queue.emplace_back(prog, nwords);
  *ticket = ++x.issued;
  x.work.notify_one();
  return RMLX_OK;
}

extern "C" int rmlx_exec_wait(int64_t ticket) { return rmlx::wait_for(ticket); }

extern "C" double rmlx_exec_seconds(void) {
  std::lock_guard<std::mutex> lk(rmlx::g_exec.mu);
  return rmlx::g_exec.busy_seconds;
}

extern "C" int rmlx_exec(const double *prog, int64_t nwords) {
  if (int st = rmlx::wait_for(-1)) return st;
  return rmlx::run_counted(prog, nwords);
}

int rmlx::exec_program(const double *prog, int64_t nwords) {
  if (!prog && nwords > 0) return rmlx::fail(RMLX_E_INVALID, "rmlx_exec: null program");
  int64_t at = 0;
  while (at < nwords) {
    if (nwords - at < 2) return rmlx::fail(RMLX_E_INVALID, "rmlx_exec: truncated record at word %lld", (long long)at);
    int64_t len = (int64_t)prog[at + 1];
    if (len < 2 || at + len > nwords)
      return rmlx::fail(RMLX_E_INVALID, "rmlx_exec: bad record length %lld at word %lld", (long long)len, (long long)at);
    int st = RMLX_OK;
    if (int64_t taken = rmlx::run_products_many(prog, at, nwords, st)) {
      if (st != RMLX_OK) return st;
      at += taken * len;
      continue;
    }
    st = rmlx::exec_record(prog + at, len);
    if (st != RMLX_OK) return st;
    at += len;
  }
  return RMLX_OK;
}
