// Linear-attention layers (Gated DeltaNet): the depthwise causal conv1d with its carried inputs, and the gated
// delta rule over an f32 state per sequence and value head, in a chunked form for prefill runs and a recurrent
// one for single tokens. Both read and update their sequence's slot of a state pool in place.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "oplist_gen.h"
#include "threadpool.h"

namespace rmlx {
namespace {

int check_seqs(const char *op, const int32_t *seq_start, const int32_t *slots, int64_t num_seqs, int64_t num_slots) {
  for (int64_t s = 0; s < num_seqs; s++) {
    if (slots[s] < 0 || slots[s] >= num_slots)
      return fail(RMLX_E_INVALID, "%s: state slot %d of sequence %lld outside the pool's %lld slots", op, slots[s],
                  (long long)s, (long long)num_slots);
    if (seq_start[s + 1] < seq_start[s])
      return fail(RMLX_E_INVALID, "%s: sequence %lld has a negative token count", op, (long long)s);
  }
  return RMLX_OK;
}

// One value head of one sequence, token by token: S [Dv, Dk] (row j holds the keys' weights of value dim j).
void delta_recurrent(float *S, const float *q, const float *k, const float *v, const float *g, const float *beta,
                     float *out, int64_t n, int64_t qstride, int64_t vstride, int64_t gstride, int64_t Dk,
                     int64_t Dv) {
  const Kern &kk = kern();
  for (int64_t t = 0; t < n; t++)
    kk.delta_step(S, k + t * qstride, q + t * qstride, v + t * vstride, std::exp(g[t * gstride]), beta[t * gstride],
                  out + t * vstride, Dv, Dk);
}

// The same over chunks of up to C tokens: within a chunk the delta-rule writes u_i solve the unit lower-triangular
// system u_i = b_i (v_i - e^{G_i} S k_i) - sum_{j<i} b_i e^{G_i - G_j} (k_i . k_j) u_j (G the cumulative log-decay),
// the outputs are o_i = e^{G_i} S q_i + sum_{j<=i} e^{G_i - G_j} (q_i . k_j) u_j, and the state moves once per
// chunk: S <- e^{G_n} S + sum_j e^{G_n - G_j} u_j k_j^T. Every exponent is <= 0. The products with S and among
// the chunk's rows go through the blocked attention primitives (each S row and key row loaded once per block).
struct ChunkBuf {
  std::vector<float> f;
  std::vector<const float *> p;
};

void delta_chunked(float *S, const float *q, const float *k, const float *v, const float *g, const float *beta,
                   float *out, int64_t n, int64_t qstride, int64_t vstride, int64_t gstride, int64_t Dk, int64_t Dv,
                   int64_t C, ChunkBuf &buf) {
  const Kern &kk = kern();
  buf.f.resize((size_t)(2 * C + 2 * C * C + 4 * C * Dv));
  buf.p.resize((size_t)(3 * C));
  float *G = buf.f.data();     // [C]
  float *coef = G + C;         // [C]
  float *KK = coef + C;        // [C, C] k_i . k_j
  float *QK = KK + C * C;      // [C, C] q_i . k_j
  float *SK = QK + C * C;      // [Dv, C] S_jv . k_i
  float *SQ = SK + Dv * C;     // [Dv, C] S_jv . q_i
  float *U = SQ + Dv * C;      // [C, Dv]
  float *W = U + C * Dv;       // [Dv, C] e^{G_n - G_j} u_j, transposed
  const float **kp = buf.p.data(), **qp = kp + C, **up = qp + C;
  for (int64_t c0 = 0; c0 < n; c0 += C) {
    const int64_t m = std::min(C, n - c0);
    const float *qc = q + c0 * qstride, *kc = k + c0 * qstride, *vc = v + c0 * vstride;
    float acc = 0.f;
    for (int64_t i = 0; i < m; i++) {
      G[i] = acc += g[(c0 + i) * gstride];
      kp[i] = kc + i * qstride;
      qp[i] = qc + i * qstride;
      up[i] = U + i * Dv;
    }
    kk.dots_rows(SK, C, S, Dk, Dv, kp, m, Dk, 1.f);
    kk.dots_rows(SQ, C, S, Dk, Dv, qp, m, Dk, 1.f);
    kk.dots_rows(KK, C, kc, qstride, m, kp, m, Dk, 1.f);
    kk.dots_rows(QK, C, qc, qstride, m, kp, m, Dk, 1.f);
    // u_i, in token order (each needs the earlier ones)
    for (int64_t i = 0; i < m; i++) {
      const float eg = std::exp(G[i]);
      float *ui = U + i * Dv;
      for (int64_t jv = 0; jv < Dv; jv++) ui[jv] = vc[i * vstride + jv] - eg * SK[jv * C + i];
      for (int64_t j = 0; j < i; j++) coef[j] = -std::exp(G[i] - G[j]) * KK[i * C + j];
      kk.pv(ui, coef, up, i, Dv);
      kk.scal(ui, beta[(c0 + i) * gstride], Dv);
    }
    for (int64_t i = 0; i < m; i++) {
      float *oi = out + (c0 + i) * vstride;
      const float eg = std::exp(G[i]);
      for (int64_t jv = 0; jv < Dv; jv++) oi[jv] = eg * SQ[jv * C + i];
      for (int64_t j = 0; j <= i; j++) coef[j] = std::exp(G[i] - G[j]) * QK[i * C + j];
      kk.pv(oi, coef, up, i + 1, Dv);
    }
    const float gl = G[m - 1];
    for (int64_t j = 0; j < m; j++) {
      const float e = std::exp(gl - G[j]);
      for (int64_t jv = 0; jv < Dv; jv++) W[jv * C + j] = e * U[j * Dv + jv];
    }
    const float el = std::exp(gl);
    for (int64_t jv = 0; jv < Dv; jv++) kk.scal(S + jv * Dk, el, Dk);
    kk.pv_rows(S, W, C, Dv, kp, m, Dk);
  }
}

// o[c] = sum_j w[4c + j] x_j[c] over n channels (four taps per channel, stored together).
void conv4(float *__restrict o, const float *__restrict w, const float *const *x, int64_t n) {
  const float *__restrict x0 = x[0], *__restrict x1 = x[1], *__restrict x2 = x[2], *__restrict x3 = x[3];
  for (int64_t c = 0; c < n; c++) o[c] = w[4 * c] * x0[c] + w[4 * c + 1] * x1[c] + w[4 * c + 2] * x2[c] + w[4 * c + 3] * x3[c];
}

}  // namespace

int run_op(const CausalConv1dRecord &r) {
  int st = check_seqs("causal_conv1d", r.seq_start, r.slots, r.num_seqs, r.num_slots);
  if (st != RMLX_OK) return st;
  const int64_t C = r.C, K = r.K, P = K - 1;
  if (K < 1) return fail(RMLX_E_INVALID, "causal_conv1d: kernel %lld", (long long)K);
  // Channels are independent: split them across threads, each walking every sequence over its channel range, a
  // token row at a time (contiguous channels). Kernel size 4 (every released checkpoint) reads the taps in place;
  // others have them transposed to [K, channels] once per call.
  parallel_for(C, [&](int64_t c0, int64_t c1, int) {
    const int64_t w_ = c1 - c0;
    std::vector<float> wt(K == 4 ? 0 : (size_t)(K * w_));
    if (K != 4)
      for (int64_t c = c0; c < c1; c++)
        for (int64_t j = 0; j < K; j++) wt[j * w_ + c - c0] = r.w[c * K + j];
    std::vector<const float *> rows((size_t)K);
    for (int64_t s = 0; s < r.num_seqs; s++) {
      const int64_t t0 = r.seq_start[s], n = r.seq_start[s + 1] - t0;
      float *state = r.state + (int64_t)r.slots[s] * P * C;  // [P, C]: the last P inputs, oldest first
      if (r.fresh[s])
        for (int64_t p = 0; p < P; p++) std::fill(state + p * C + c0, state + p * C + c1, 0.f);
      if (n == 0) continue;
      // input row i of the window: the carried ones, then the tokens
      auto in = [&](int64_t i) { return i < P ? state + i * C : r.x + (t0 + i - P) * C; };
      for (int64_t t = 0; t < n; t++) {
        float *o = r.out + (t0 + t) * C + c0;
        for (int64_t j = 0; j < K; j++) rows[j] = in(t + j) + c0;
        if (K == 4) {
          conv4(o, r.w + c0 * 4, rows.data(), w_);
          continue;
        }
        const float *w0 = wt.data();
        for (int64_t c = 0; c < w_; c++) o[c] = w0[c] * rows[0][c];
        for (int64_t j = 1; j < K; j++) {
          const float *wj = wt.data() + j * w_, *xj = rows[j];
          for (int64_t c = 0; c < w_; c++) o[c] += wj[c] * xj[c];
        }
      }
      // Ascending p reads only rows not yet overwritten (p + n > p).
      for (int64_t p = 0; p < P; p++) {
        const float *src = in(p + n) + c0;
        std::copy(src, src + w_, state + p * C + c0);
      }
    }
  }, std::max<int64_t>(1, 256 / std::max<int64_t>(1, r.num_seqs)));
  return RMLX_OK;
}

int run_op(const GatedDeltaRecord &r) {
  int st = check_seqs("gated_delta", r.seq_start, r.slots, r.num_seqs, r.num_slots);
  if (st != RMLX_OK) return st;
  if (r.Hk < 1 || r.Hv % r.Hk != 0)
    return fail(RMLX_E_INVALID, "gated_delta: %lld value heads over %lld key heads", (long long)r.Hv, (long long)r.Hk);
  const int64_t Hk = r.Hk, Hv = r.Hv, Dk = r.Dk, Dv = r.Dv, rep = Hv / Hk;
  const int64_t slot_size = Hv * Dv * Dk;
  parallel_for(r.num_seqs * Hv, [&](int64_t b, int64_t e, int) {
    ChunkBuf buf;
    for (int64_t i = b; i < e; i++) {
      const int64_t s = i / Hv, h = i % Hv, kh = h / rep;
      const int64_t t0 = r.seq_start[s], n = r.seq_start[s + 1] - t0;
      float *S = r.state + (int64_t)r.slots[s] * slot_size + h * Dv * Dk;
      if (r.fresh[s]) std::memset(S, 0, sizeof(float) * Dv * Dk);
      if (n == 0) continue;
      const float *q = r.q + (t0 * Hk + kh) * Dk, *k = r.k + (t0 * Hk + kh) * Dk;
      const float *v = r.v + (t0 * Hv + h) * Dv, *g = r.g + t0 * Hv + h, *beta = r.beta + t0 * Hv + h;
      float *out = r.out + (t0 * Hv + h) * Dv;
      if (r.chunk > 0 && n > 1)
        delta_chunked(S, q, k, v, g, beta, out, n, Hk * Dk, Hv * Dv, Hv, Dk, Dv, r.chunk, buf);
      else
        delta_recurrent(S, q, k, v, g, beta, out, n, Hk * Dk, Hv * Dv, Hv, Dk, Dv);
    }
  });
  return RMLX_OK;
}

int run_op(const StateCopyRecord &r) {
  if (r.src < 0 || r.src >= r.num_slots || r.dst < 0 || r.dst >= r.num_slots)
    return fail(RMLX_E_INVALID, "state_copy: slots %lld -> %lld outside %lld", (long long)r.src, (long long)r.dst,
                (long long)r.num_slots);
  if (r.src != r.dst) std::memcpy(r.state + r.dst * r.slot_size, r.state + r.src * r.slot_size, sizeof(float) * r.slot_size);
  return RMLX_OK;
}

}  // namespace rmlx
