// KV pool writes, paged attention and dense scaled-dot-product attention, with an f32 online softmax.
#include <algorithm>
#include <cstring>
#include <cmath>
#include <vector>

#include "ops.h"
#include "threadpool.h"

namespace rmlx {
namespace {

constexpr int64_t kChunk = 64;  // keys scored per softmax update

inline void load_row(const Kern &k, float *dst, const void *base, int dt, int64_t off, int64_t n) {
  if (dt == RMLX_F16) k.f16_to_f32(dst, (const uint16_t *)base + off, n);
  else k.bf16_to_f32(dst, (const uint16_t *)base + off, n);
}

inline void store_row(const Kern &k, void *base, int dt, int64_t off, const float *src, int64_t n) {
  if (dt == RMLX_F32) std::memcpy((float *)base + off, src, n * sizeof(float));
  else if (dt == RMLX_F16) k.f32_to_f16((uint16_t *)base + off, src, n);
  else k.f32_to_bf16((uint16_t *)base + off, src, n);
}

// Attends a group of G query heads (sharing one KV head) over nkeys keys; key j's element offset in the K and V
// buffers comes from successive calls rows() (keys in order). Scratch must hold (G * (D + kChunk + 2) + 2 * kChunk * D) floats.
template <class Rows>
void attend_group(float *out, int64_t out_stride, const float *q, int64_t q_stride, int64_t G, int64_t D,
                  const void *kb, const void *vb, int dt, int64_t nkeys, Rows rows, float scale, float softcap,
                  float *scratch) {
  float *acc = scratch;               // [G, D]
  float *m = acc + G * D;             // [G]
  float *l = m + G;                   // [G]
  float *sc = l + G;                  // [G, kChunk]
  float *kbuf = sc + G * kChunk;      // [kChunk, D]
  float *vbuf = kbuf + kChunk * D;    // [kChunk, D]
  const Kern &k = kern();
  for (int64_t g = 0; g < G; g++) {
    m[g] = -INFINITY;
    l[g] = 0.f;
  }
  std::memset(acc, 0, sizeof(float) * G * D);
  for (int64_t j0 = 0; j0 < nkeys; j0 += kChunk) {
    int64_t nj = std::min(kChunk, nkeys - j0);
    const float *krows[kChunk], *vrows[kChunk];
    for (int64_t j = 0; j < nj; j++) {
      int64_t off = rows();
      if (dt == RMLX_F32) {
        krows[j] = (const float *)kb + off;
        vrows[j] = (const float *)vb + off;
      } else {
        load_row(k, kbuf + j * D, kb, dt, off, D);
        load_row(k, vbuf + j * D, vb, dt, off, D);
        krows[j] = kbuf + j * D;
        vrows[j] = vbuf + j * D;
      }
    }
    for (int64_t g = 0; g < G; g++) {
      const float *qg = q + g * q_stride;
      float *s = sc + g * kChunk;
      k.dots(s, qg, krows, nj, D, scale);
      if (softcap > 0.f)
        for (int64_t j = 0; j < nj; j++) s[j] = softcap * std::tanh(s[j] / softcap);
      float mx = std::max(m[g], k.max(s, nj));
      float sum = k.exp_sum(s, s, mx, nj);
      float *ag = acc + g * D;
      if (m[g] != mx && l[g] > 0.f) k.scal(ag, std::exp(m[g] - mx), D), l[g] *= std::exp(m[g] - mx);
      k.pv(ag, s, vrows, nj, D);
      l[g] += sum;
      m[g] = mx;
    }
  }
  for (int64_t g = 0; g < G; g++) {
    float inv = l[g] > 0.f ? 1.f / l[g] : 0.f;
    k.scale_mul(out + g * out_stride, acc + g * D, inv, nullptr, D);
  }
}

int64_t scratch_floats(int64_t G, int64_t D) { return G * (D + kChunk + 2) + 2 * kChunk * D; }

bool pool_dtype_ok(int dt) { return dt == RMLX_F32 || dt == RMLX_F16 || dt == RMLX_BF16; }

}  // namespace

int op_kv_write(void *kpool, void *vpool, int dt, const float *k, const float *v, const int32_t *slots, int64_t T,
                int64_t row, int64_t num_slots) {
  if (!pool_dtype_ok(dt)) return fail(RMLX_E_UNSUPPORTED, "kv_write: pool dtype %d", dt);
  for (int64_t t = 0; t < T; t++)
    if (slots[t] < 0 || slots[t] >= num_slots)
      return fail(RMLX_E_INVALID, "kv_write: slot %d of token %lld outside the pool's %lld slots", slots[t],
                  (long long)t, (long long)num_slots);
  const Kern &kk = kern();
  parallel_for(T, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; t++) {
      store_row(kk, kpool, dt, (int64_t)slots[t] * row, k + t * row, row);
      store_row(kk, vpool, dt, (int64_t)slots[t] * row, v + t * row, row);
    }
  }, std::max<int64_t>(1, 8192 / std::max<int64_t>(row, 1)));
  return RMLX_OK;
}

int op_paged_attention(const PagedAttnArgs &a) {
  if (!pool_dtype_ok(a.pool_dt)) return fail(RMLX_E_UNSUPPORTED, "paged_attention: pool dtype %d", a.pool_dt);
  if (a.kv_heads < 1 || a.heads % a.kv_heads)
    return fail(RMLX_E_INVALID, "paged_attention: %lld heads not a multiple of %lld kv heads", (long long)a.heads,
                (long long)a.kv_heads);
  const int64_t G = a.heads / a.kv_heads, D = a.head_dim, bs = a.block_size;
  for (int64_t t = 0; t < a.T; t++) {
    int32_t s = a.token_seq[t], p = a.positions[t];
    if (s < 0 || s >= a.num_seqs)
      return fail(RMLX_E_INVALID, "paged_attention: token %lld names sequence %d of %lld", (long long)t, s,
                  (long long)a.num_seqs);
    if (p < 0 || p >= a.seq_lens[s])
      return fail(RMLX_E_INVALID, "paged_attention: token %lld at position %d but sequence %d holds %d", (long long)t,
                  p, s, a.seq_lens[s]);
    if (p / bs >= a.max_blocks)
      return fail(RMLX_E_INVALID, "paged_attention: position %d needs more than %lld blocks", p, (long long)a.max_blocks);
    for (int64_t b = 0; b <= p / bs; b++) {
      int32_t blk = a.tables[s * a.max_blocks + b];
      if (blk < 0 || blk >= a.num_blocks)
        return fail(RMLX_E_INVALID, "paged_attention: sequence %d block %lld is %d, pool has %lld", s, (long long)b,
                    blk, (long long)a.num_blocks);
    }
  }
  const int64_t row = a.kv_heads * D;
  // Small steps (few tokens, short contexts) run on the calling thread: waking the pool would cost more.
  int64_t work = 0;
  for (int64_t t = 0; t < a.T; t++)
    work += (a.window > 0 ? std::min<int64_t>(a.window, a.positions[t] + 1) : a.positions[t] + 1) * a.heads * D;
  const int64_t items = a.T * a.kv_heads;
  parallel_for(items, [&](int64_t b, int64_t e, int) {
    std::vector<float> scratch(scratch_floats(G, D));
    for (int64_t w = b; w < e; w++) {
      // Tokens in zigzag order (first, last, second, second last, ...): causal work grows with position, and the
      // pool hands each thread one contiguous range of items, which this keeps balanced.
      int64_t z = w / a.kv_heads, kh = w % a.kv_heads;
      int64_t t = (z & 1) ? a.T - 1 - z / 2 : z / 2;
      int32_t s = a.token_seq[t], p = a.positions[t];
      int64_t lo = a.window > 0 ? std::max<int64_t>(0, p - a.window + 1) : 0;
      const int32_t *tab = a.tables + s * a.max_blocks;
      // Walks the block table once: a division per block, not per key.
      int64_t blk = lo / bs, within = lo % bs, base = ((int64_t)tab[blk] * bs) * row + kh * D;
      auto rows = [&]() {
        if (within == bs) {
          within = 0;
          base = ((int64_t)tab[++blk] * bs) * row + kh * D;
        }
        return base + (within++) * row;
      };
      const int64_t qo = (t * a.heads + kh * G) * D;
      attend_group(a.out + qo, D, a.q + qo, D, G, D, a.kpool, a.vpool, a.pool_dt, p - lo + 1, rows, a.scale,
                   a.softcap, scratch.data());
    }
  }, work < (1 << 15) ? items : 1);
  return RMLX_OK;
}

int op_sdpa(float *out, const float *q, const float *k, const float *v, int64_t B, int64_t H, int64_t Hkv, int64_t L,
            int64_t S, int64_t D, float scale, bool causal) {
  if (Hkv < 1 || H % Hkv) return fail(RMLX_E_INVALID, "sdpa: %lld heads not a multiple of %lld", (long long)H, (long long)Hkv);
  const int64_t G = H / Hkv;
  parallel_for(B * Hkv * L, [&](int64_t b0, int64_t e0, int) {
    std::vector<float> scratch(scratch_floats(G, D));
    for (int64_t w = b0; w < e0; w++) {
      int64_t i = w % L, kh = (w / L) % Hkv, b = w / (L * Hkv);
      int64_t nkeys = causal ? std::min(S, std::max<int64_t>(0, i + S - L + 1)) : S;
      const int64_t kvo = (b * Hkv + kh) * S * D;
      int64_t next = kvo;
      auto rows = [&]() {
        int64_t r = next;
        next += D;
        return r;
      };
      const int64_t qo = ((b * H + kh * G) * L + i) * D;
      attend_group(out + qo, L * D, q + qo, L * D, G, D, k, v, RMLX_F32, nkeys, rows, scale, 0.f, scratch.data());
    }
  }, B * H * L * S * D < (1 << 15) ? B * Hkv * L : 1);
  return RMLX_OK;
}

}  // namespace rmlx
