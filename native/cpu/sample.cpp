// Token sampling over one row of logits: the per-token work proportional to the vocabulary (the maximum, the
// exponentials, the top_p / min_p / top_k filters, the draw, the top alternatives) for src/engine/sampler.ts,
// which keeps the per-request state (parameters, random stream, penalties over the history) and calls this once
// per token. The filters work as in mlx-lm, on the distribution at temperature 1; the draw is at the temperature.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "oplist_gen.h"
#include "ops.h"
#include "threadpool.h"

namespace rmlx {
namespace {

// Index of the first largest value; -1 when every value is -inf (or NaN).
int64_t argmax(const float *x, int64_t V, float &best) {
  float m = kern().max(x, V);
  best = m;
  if (!(m > -INFINITY)) return -1;
  for (int64_t i = 0; i < V; i++)
    if (x[i] == m) return i;
  return -1;
}

// Keeps the smallest set of most likely tokens whose mass reaches `mass` (top_p times the total): a histogram of
// the mass by the float's top bits (order-preserving for non-negative floats), then only the tokens of the
// bucket where the cumulative mass crosses the target are sorted.
void keep_top_p(const float *probs, int64_t V, double mass, uint8_t *keep) {
  // Buffers kept by the thread: a sampled decode step allocates nothing.
  thread_local std::vector<double> hist;
  thread_local std::vector<int32_t> edge;
  hist.assign(1 << 13, 0.0);
  edge.clear();
  for (int64_t i = 0; i < V; i++) {
    uint32_t b;
    std::memcpy(&b, probs + i, 4);
    hist[b >> 19] += probs[i];
  }
  double cum = 0;
  int b = (int)hist.size() - 1;
  for (; b > 0; b--) {
    if (cum + hist[b] >= mass) break;
    cum += hist[b];
  }
  for (int64_t i = 0; i < V; i++) {
    uint32_t bits;
    std::memcpy(&bits, probs + i, 4);
    int k = (int)(bits >> 19);
    if (k < b) keep[i] = 0;
    else if (k == b) edge.push_back((int32_t)i);
  }
  std::sort(edge.begin(), edge.end(), [&](int32_t i, int32_t j) { return probs[i] != probs[j] ? probs[i] > probs[j] : i < j; });
  for (int32_t i : edge) {
    if (cum >= mass) keep[i] = 0;
    else cum += probs[i];
  }
}

// An unsigned key with the order of the float, negative values included.
inline uint32_t order_key(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b & 0x80000000u ? ~b : b | 0x80000000u;
}

// The k best indices of x among those with mask set (all when mask is null), best first, ties to the lower index.
int64_t select_top(const float *x, int64_t V, const uint8_t *mask, int64_t k, int32_t *out) {
  int64_t n = 0;
  for (int64_t i = 0; i < V; i++) {
    if (mask && !mask[i]) continue;
    float v = x[i];
    if (n == k && !(v > x[out[k - 1]])) continue;
    int64_t j = n < k ? n++ : k - 1;
    while (j > 0 && x[out[j - 1]] < v) {
      out[j] = out[j - 1];
      j--;
    }
    out[j] = (int32_t)i;
  }
  return n;
}

// Keeps the k largest surviving values of x (ties to the lower index).
void keep_top_k(const float *x, int64_t V, int64_t k, uint8_t *keep) {
  int64_t n = 0;
  for (int64_t i = 0; i < V; i++) n += keep[i];
  if (n <= k) return;
  if (k <= 32) {
    int32_t best[32];
    int64_t got = select_top(x, V, keep, k, best);
    std::memset(keep, 0, (size_t)V);
    for (int64_t i = 0; i < got; i++) keep[best[i]] = 1;
    return;
  }
  // Larger k: surviving tokens counted per 16-bit key bucket; whole buckets above the one where the count reaches
  // k stay, and only that bucket is sorted.
  thread_local std::vector<int32_t> hist;
  thread_local std::vector<int32_t> edge;
  hist.assign(1 << 16, 0);
  edge.clear();
  for (int64_t i = 0; i < V; i++)
    if (keep[i]) hist[order_key(x[i]) >> 16]++;
  int64_t above = 0;
  int b = (int)hist.size() - 1;
  for (; b > 0; b--) {
    if (above + hist[b] >= k) break;
    above += hist[b];
  }
  for (int64_t i = 0; i < V; i++) {
    if (!keep[i]) continue;
    int key = (int)(order_key(x[i]) >> 16);
    if (key < b) keep[i] = 0;
    else if (key == b) edge.push_back((int32_t)i);
  }
  std::sort(edge.begin(), edge.end(), [&](int32_t i, int32_t j) { return x[i] != x[j] ? x[i] > x[j] : i < j; });
  for (size_t e = (size_t)(k - above); e < edge.size(); e++) keep[edge[e]] = 0;
}

// Index i with probability w[i] / total, for u uniform in [0, 1).
int64_t pick(const float *w, int64_t V, double total, double u) {
  double left = u * total;
  int64_t last = -1;
  for (int64_t i = 0; i < V; i++) {
    if (w[i] == 0.f) continue;
    last = i;
    left -= w[i];
    if (left < 0) return i;
  }
  return last;
}

// w = exp((x - m) / T) over the kept tokens (all when keep is null), 0 elsewhere; returns the sum.
double weights(float *w, const float *x, int64_t V, float m, double temperature, const uint8_t *keep) {
  const float inv_t = (float)(1.0 / temperature);
  std::memcpy(w, x, sizeof(float) * (size_t)V);
  if (inv_t != 1.f) {
    kern().scal(w, inv_t, V);
    m *= inv_t;
  }
  kern().exp_sum(w, w, m, V);
  // exp clamps its input, so a masked (-inf) or filtered token would still weigh a little: those are zeroed.
  double total = 0;
  for (int64_t i = 0; i < V; i++) {
    if ((keep && !keep[i]) || x[i] == -INFINITY) w[i] = 0.f;
    total += w[i];
  }
  return total;
}

}  // namespace
}  // namespace rmlx

using namespace rmlx;

extern "C" int rmlx_sample(const float *x, int64_t V, const double *params, float *probs, uint8_t *keep,
                           int32_t *top, double *out) {
  if (!x || !params || !probs || !keep || !out || V <= 0) return fail(RMLX_E_INVALID, "rmlx_sample: bad arguments");
  const double temperature = params[0], top_p = params[1], min_p = params[3], u = params[4];
  const int64_t top_k = (int64_t)params[2], n_top = (int64_t)params[5];
  const bool want_logprobs = params[6] != 0 || n_top > 0;
  if (n_top > 0 && !top) return fail(RMLX_E_INVALID, "rmlx_sample: top alternatives need an output array");
  float max;
  const int64_t best = argmax(x, V, max);
  if (best < 0) return fail(RMLX_E_INVALID, "every token is masked (all logits are -inf)");
  const bool filters = top_p < 1 || min_p > 0 || top_k > 0;
  out[1] = NAN;
  out[2] = NAN;
  if (!want_logprobs && (temperature == 0 || !filters)) {
    // Nothing needs the distribution at temperature 1.
    int64_t token = best;
    if (temperature > 0) token = pick(probs, V, weights(probs, x, V, max, temperature, nullptr), u);
    out[0] = (double)token;
    return RMLX_OK;
  }
  // exp(x - max): the most likely token has 1, the total is the partition sum.
  const double sum = kern().exp_sum(probs, x, max, V);
  const double log_z = (double)max + std::log(sum);
  int64_t token = best;
  if (temperature > 0) {
    std::memset(keep, 1, (size_t)V);
    if (top_p < 1) keep_top_p(probs, V, top_p * sum, keep);
    if (min_p > 0)  // relative to the most likely token, whose unnormalised probability is 1
      for (int64_t i = 0; i < V; i++)
        if (probs[i] < min_p) keep[i] = 0;
    if (top_k > 0 && top_k < V) keep_top_k(x, V, top_k, keep);
    float kmax = -INFINITY;
    for (int64_t i = 0; i < V; i++)
      if (keep[i] && x[i] > kmax) kmax = x[i];
    token = pick(probs, V, weights(probs, x, V, kmax, temperature, keep), u);
  }
  out[0] = (double)token;
  out[1] = (double)x[token] - log_z;
  out[2] = log_z;
  if (n_top > 0) select_top(x, V, nullptr, std::min(n_top, V), top);
  return RMLX_OK;
}

namespace rmlx {

// A step's tokens drawn where its logits are: each row through rmlx_sample as the host sampler calls it for a row
// without penalties or bias, its mask applied first (tokens not allowed at -inf). The vocabulary-sized scratch is
// kept per thread from step to step: a decode step allocates nothing.
int run_op(const DrawRecord &r) {
  const int64_t V = r.n;
  if (r.rows < 0 || V <= 0) return fail(RMLX_E_INVALID, "draw: %lld rows of %lld logits", (long long)r.rows, (long long)V);
  std::vector<int> status((size_t)r.rows, RMLX_OK);
  std::vector<std::string> why((size_t)r.rows);
  parallel_for(r.rows, [&](int64_t b, int64_t e, int) {
    thread_local std::vector<float> masked, probs;
    thread_local std::vector<uint8_t> keep;
    if ((int64_t)probs.size() < V) probs.resize((size_t)V), keep.resize((size_t)V);
    for (int64_t i = b; i < e; i++) {
      const double *p = r.params + 6 * i;
      const float *x = r.x + i * V;
      if (p[5] >= 0) {
        const uint8_t *m = r.masks + (int64_t)p[5];
        if ((int64_t)masked.size() < V) masked.resize((size_t)V);
        for (int64_t t = 0; t < V; t++) masked[(size_t)t] = m[t] ? x[t] : -INFINITY;
        x = masked.data();
      }
      const double sp[7] = {p[0], p[1], p[2], p[3], p[4], 0, 0};
      double out[3];
      status[(size_t)i] = rmlx_sample(x, V, sp, probs.data(), keep.data(), nullptr, out);
      if (status[(size_t)i] != RMLX_OK) why[(size_t)i] = rmlx_last_error();
      else r.out[i] = (int32_t)out[0];
    }
  }, 1);
  for (int64_t i = 0; i < r.rows; i++)
    if (status[(size_t)i] != RMLX_OK) return fail(status[(size_t)i], "draw, row %lld: %s", (long long)i, why[(size_t)i].c_str());
  return RMLX_OK;
}

}  // namespace rmlx
