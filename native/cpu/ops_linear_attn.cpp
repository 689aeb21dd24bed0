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
  for (int64_t t = 0; t < n; t++) {
    const float *qt = q + t * qstride, *kt = k + t * qstride, *vt = v + t * vstride;
    const float decay = std::exp(g[t * gstride]), b = beta[t * gstride];
    float *ot = out + t * vstride;
    for (int64_t j = 0; j < Dv; j++) {
      float *row = S + j * Dk;
      kk.scal(row, decay, Dk);
      const float u = (vt[j] - kk.dot(row, kt, Dk)) * b;
      kk.axpy(row, u, kt, Dk);
      ot[j] = kk.dot(row, qt, Dk);
    }
  }
}

// The same over chunks of up to C tokens: within a chunk the delta-rule writes u_i solve the unit lower-triangular
// system u_i = b_i (v_i - e^{G_i} S k_i) - sum_{j<i} b_i e^{G_i - G_j} (k_i . k_j) u_j (G the cumulative log-decay),
// the outputs are o_i = e^{G_i} S q_i + sum_{j<=i} e^{G_i - G_j} (q_i . k_j) u_j, and the state moves once per
// chunk: S <- e^{G_n} S + sum_j e^{G_n - G_j} u_j k_j^T. Every exponent is <= 0.
void delta_chunked(float *S, const float *q, const float *k, const float *v, const float *g, const float *beta,
                   float *out, int64_t n, int64_t qstride, int64_t vstride, int64_t gstride, int64_t Dk, int64_t Dv,
                   int64_t C, std::vector<float> &buf) {
  const Kern &kk = kern();
  buf.resize((size_t)(C + 2 * C * C + C * Dv));
  float *G = buf.data();       // [C]
  float *KK = G + C;           // [C, C] k_i . k_j
  float *QK = KK + C * C;      // [C, C] q_i . k_j
  float *U = QK + C * C;       // [C, Dv]
  for (int64_t c0 = 0; c0 < n; c0 += C) {
    const int64_t m = std::min(C, n - c0);
    const float *qc = q + c0 * qstride, *kc = k + c0 * qstride, *vc = v + c0 * vstride;
    float acc = 0.f;
    for (int64_t i = 0; i < m; i++) G[i] = acc += g[(c0 + i) * gstride];
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j <= i; j++) {
        KK[i * C + j] = kk.dot(kc + i * qstride, kc + j * qstride, Dk);
        QK[i * C + j] = kk.dot(qc + i * qstride, kc + j * qstride, Dk);
      }
    // u_i, in token order (each needs the earlier ones)
    for (int64_t i = 0; i < m; i++) {
      const float b = beta[(c0 + i) * gstride], eg = std::exp(G[i]);
      const float *ki = kc + i * qstride;
      float *ui = U + i * Dv;
      for (int64_t jv = 0; jv < Dv; jv++) ui[jv] = vc[i * vstride + jv] - eg * kk.dot(S + jv * Dk, ki, Dk);
      for (int64_t j = 0; j < i; j++) kk.axpy(ui, -std::exp(G[i] - G[j]) * KK[i * C + j], U + j * Dv, Dv);
      kk.scal(ui, b, Dv);
    }
    for (int64_t i = 0; i < m; i++) {
      float *oi = out + (c0 + i) * vstride;
      const float eg = std::exp(G[i]);
      const float *qi = qc + i * qstride;
      for (int64_t jv = 0; jv < Dv; jv++) oi[jv] = eg * kk.dot(S + jv * Dk, qi, Dk);
      for (int64_t j = 0; j <= i; j++) kk.axpy(oi, std::exp(G[i] - G[j]) * QK[i * C + j], U + j * Dv, Dv);
    }
    const float gl = G[m - 1], el = std::exp(gl);
    for (int64_t jv = 0; jv < Dv; jv++) {
      float *row = S + jv * Dk;
      kk.scal(row, el, Dk);
      for (int64_t j = 0; j < m; j++) kk.axpy(row, std::exp(gl - G[j]) * U[j * Dv + jv], kc + j * qstride, Dk);
    }
  }
}

}  // namespace

int run_op(const CausalConv1dRecord &r) {
  int st = check_seqs("causal_conv1d", r.seq_start, r.slots, r.num_seqs, r.num_slots);
  if (st != RMLX_OK) return st;
  const int64_t C = r.C, K = r.K, P = K - 1;
  if (K < 1) return fail(RMLX_E_INVALID, "causal_conv1d: kernel %lld", (long long)K);
  // Channels are independent: split them across threads, each walking every sequence.
  parallel_for(C, [&](int64_t c0, int64_t c1, int) {
    std::vector<float> win;
    for (int64_t s = 0; s < r.num_seqs; s++) {
      const int64_t t0 = r.seq_start[s], n = r.seq_start[s + 1] - t0;
      if (n == 0) continue;
      float *state = r.state + (int64_t)r.slots[s] * P * C;  // [P, C]: the last P inputs, oldest first
      if (r.fresh[s])
        for (int64_t p = 0; p < P; p++) std::fill(state + p * C + c0, state + p * C + c1, 0.f);
      win.resize((size_t)(P + n));
      for (int64_t c = c0; c < c1; c++) {
        for (int64_t p = 0; p < P; p++) win[p] = state[p * C + c];
        for (int64_t t = 0; t < n; t++) win[P + t] = r.x[(t0 + t) * C + c];
        const float *w = r.w + c * K;
        for (int64_t t = 0; t < n; t++) {
          float a = 0.f;
          for (int64_t j = 0; j < K; j++) a += w[j] * win[t + j];
          r.out[(t0 + t) * C + c] = a;
        }
        for (int64_t p = 0; p < P; p++) state[p * C + c] = win[n + p];
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
    std::vector<float> buf;
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
