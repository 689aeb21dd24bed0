// KV pool writes, paged attention and dense scaled-dot-product attention, with an f32 online softmax. Pools hold
// float rows or packed codes (affine 8/4-bit, FP8 E4M3, each with f16 group scales; turbo: rotated Lloyd-Max
// codes with an f16 scale per row); attention reads the packed rows in place: decode steps score the codes directly
// and decode value rows into the accumulators (Kern::pk_dots, pk_pv; turbo rows where the kernels take them,
// Kern::pk_turbo); prefill tiles, and turbo rows elsewhere, are decoded one chunk of keys at a time into scratch,
// shared by all their query rows. No dequantized copy of the cache exists.
#include <algorithm>
#include <cstring>
#include <cmath>
#include <memory>
#include <vector>

#include <immintrin.h>

#include "common.h"
#include "oplist_gen.h"
#include "quant_formats.h"
#include "threadpool.h"

namespace rmlx {
namespace {

constexpr int64_t kChunk = 64;  // keys scored per softmax update

inline void store_row(const Kern &k, void *base, int dt, int64_t off, const float *src, int64_t n) {
  if (dt == RMLX_F32) std::memcpy((float *)base + off, src, n * sizeof(float));
  else if (dt == RMLX_F16) k.f32_to_f16((uint16_t *)base + off, src, n);
  else k.f32_to_bf16((uint16_t *)base + off, src, n);
}

// Consecutive tokens of one sequence attended together in a prefill: every key and value row loaded (and
// converted from the pool's dtype) serves all their query rows. 16 against 4: one layer of 256 tokens over 2048 keys
// (Qwen3-0.6B shape, f16 pool, one thread) 110-117 -> 70-86 ms, with pv_rows' register tiles 47-55 ms.
constexpr int64_t kTileTokens = 16;
constexpr int64_t kMinPartKeys = 256;  // the fewest keys a part of a split decode attention is given

enum : int { KV_FLOAT = 0, KV_AFFINE = 1, KV_FP8 = 2, KV_TURBO = 3 };
static_assert((int)KV_AFFINE == PK_AFFINE && (int)KV_FP8 == PK_FP8 && (int)KV_TURBO == PK_TURBO,
              "PkRows takes the pool modes as they are");

// Turbo rows (KV_TURBO): a head's row x of D values (D a power of two) is rotated, y = H S x / sqrt(D) with S a
// fixed diagonal of random signs and H the Walsh-Hadamard matrix (an orthogonal map, so q . k = Rq . Rk); y's
// coordinates are then close to Gaussian with variance |x|^2 / D. Each y[i] / rms(y) is stored as the index of the
// nearest level of the Lloyd-Max quantizer of a unit Gaussian (kTurbo3 / kTurbo4 in ops.h), and
// the row's f16 scale r is the least-squares fit of those levels to y (about rms(y), the row's norm / sqrt(D)), 4 bits (two per byte, low nibble first) or 3 bits (8 values in 3 bytes, a 24-bit
// little-endian word, value j at bits 3j..3j+2). Attention rotates the query rows, scores and sums values in the
// rotated space, and rotates the output back (R^-1 = S H / sqrt(D)).
constexpr int64_t kTurboMaxD = 1024;

bool turbo_dim_ok(int64_t D) { return D >= 8 && D <= kTurboMaxD && (D & (D - 1)) == 0; }

// S: the sign of element d is the top bit of splitmix64's output for the d-th step from the seed "rmlx"; the same
// signs serve every head and layer.
const float *turbo_signs() {
  static const std::vector<float> signs = [] {
    std::vector<float> s((size_t)kTurboMaxD);
    for (int64_t d = 0; d < kTurboMaxD; d++) {
      uint64_t z = 0x726d6c78ull + (uint64_t)(d + 1) * 0x9e3779b97f4a7c15ull;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      s[(size_t)d] = (z >> 63) ? -1.f : 1.f;
    }
    return s;
  }();
  return signs.data();
}

// x <- H x (unnormalised).
void fwht(float *x, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; j++) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

// x <- R x = H S x / sqrt(D).
void turbo_rotate(float *x, int64_t D) {
  const float *s = turbo_signs();
  for (int64_t d = 0; d < D; d++) x[d] *= s[d];
  fwht(x, D);
  const float n = 1.f / std::sqrt((float)D);
  for (int64_t d = 0; d < D; d++) x[d] *= n;
}

// x <- R^-1 x = S H x / sqrt(D).
void turbo_unrotate(float *x, int64_t D) {
  const float *s = turbo_signs();
  fwht(x, D);
  const float n = 1.f / std::sqrt((float)D);
  for (int64_t d = 0; d < D; d++) x[d] *= s[d] * n;
}

// turbo_decode with AVX2: the levels times r live in registers and each 8 codes become 8 values by a lane
// permute (4 bits: two permutes, blended on the code's top bit), with no table lookups through memory.
__attribute__((target("avx2,fma"))) void turbo_decode_avx2(float *dst, const uint8_t *c, float r, int bits, int64_t D) {
  const __m256 rv = _mm256_set1_ps(r);
  if (bits == 4) {
    const __m256 lo = _mm256_mul_ps(_mm256_loadu_ps(kTurbo4), rv), hi = _mm256_mul_ps(_mm256_loadu_ps(kTurbo4 + 8), rv);
    const __m256i shift = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4), m = _mm256_set1_epi32(15);
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
    for (int64_t e = 0; e < D; e += 8) {
      int32_t w;
      std::memcpy(&w, c + e / 2, 4);
      const __m256i b = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(_mm_cvtsi32_si128(w), dup));
      const __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(b, shift), m);
      const __m256 top = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
      _mm256_storeu_ps(dst + e, _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), top));
    }
    return;
  }
  const __m256 lv = _mm256_mul_ps(_mm256_loadu_ps(kTurbo3), rv);
  const __m256i shift = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21), m = _mm256_set1_epi32(7);
  for (int64_t b = 0; b < D / 8; b++) {
    const int32_t w = c[3 * b] | c[3 * b + 1] << 8 | c[3 * b + 2] << 16;
    const __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(w), shift), m);
    _mm256_storeu_ps(dst + 8 * b, _mm256_permutevar8x32_ps(lv, idx));
  }
}

// dst[0..D) = the rotated row's decoded values, level * r.
void turbo_decode(float *dst, const uint8_t *c, uint16_t hr, int bits, int64_t D) {
  const float r = f16_to_f32(hr);
  if (&kern() != &kern_portable()) return turbo_decode_avx2(dst, c, r, bits, D);
  if (bits == 4) {
    float lv[16];
    for (int i = 0; i < 16; i++) lv[i] = kTurbo4[i] * r;
    for (int64_t j = 0; j < D / 2; j++) {
      dst[2 * j] = lv[c[j] & 15];
      dst[2 * j + 1] = lv[c[j] >> 4];
    }
    return;
  }
  float lv[8];
  for (int i = 0; i < 8; i++) lv[i] = kTurbo3[i] * r;
  for (int64_t b = 0; b < D / 8; b++) {
    const uint32_t w = c[3 * b] | (uint32_t)c[3 * b + 1] << 8 | (uint32_t)c[3 * b + 2] << 16;
    for (int j = 0; j < 8; j++) dst[8 * b + j] = lv[(w >> (3 * j)) & 7];
  }
}

// Codes of row x (see KV_TURBO) into c and its f16 scale into *hr.
void turbo_encode(uint8_t *c, uint16_t *hr, const float *x, int bits, int64_t D) {
  float y[kTurboMaxD];
  std::memcpy(y, x, sizeof(float) * D);
  turbo_rotate(y, D);
  double ss = 0;
  for (int64_t d = 0; d < D; d++) ss += (double)y[d] * y[d];
  const float rms = (float)std::sqrt(ss / D), inv = rms > 0.f ? 1.f / rms : 0.f;
  const float *lv = bits == 4 ? kTurbo4 : kTurbo3;
  const int n = 1 << bits;
  auto code = [&](float v) {
    int k = 0;  // the nearest level: past every boundary (midpoint of two levels) below v
    for (int i = 1; i < n; i++) k += v * inv > 0.5f * (lv[i - 1] + lv[i]);
    return (uint32_t)k;
  };
  // The stored scale is the least-squares fit of the chosen levels to y (not rms itself): it removes the error's
  // component along the decoded row.
  double yc = 0, cc = 0;
  for (int64_t d = 0; d < D; d++) {
    const double c = lv[code(y[d])];
    yc += c * y[d], cc += c * c;
  }
  *hr = f32_to_f16(std::min((float)(cc > 0 ? yc / cc : 0.), 65504.f));
  if (bits == 4) {
    for (int64_t j = 0; j < D / 2; j++) c[j] = (uint8_t)(code(y[2 * j]) | code(y[2 * j + 1]) << 4);
    return;
  }
  for (int64_t b = 0; b < D / 8; b++) {
    uint32_t w = 0;
    for (int j = 0; j < 8; j++) w |= code(y[8 * b + j]) << (3 * j);
    c[3 * b] = (uint8_t)w, c[3 * b + 1] = (uint8_t)(w >> 8), c[3 * b + 2] = (uint8_t)(w >> 16);
  }
}

// One side (K or V) of a pool. Rows are indexed v = slot * kvHeads + kvHead (the logical [slot, kvHead, D] array);
// a packed side keeps row v at data + v * vbytes, its group scales (and biases) at v * ngroups.
struct KvSide {
  const char *data = nullptr;
  const uint16_t *scales = nullptr;
  const uint16_t *biases = nullptr;
  int dt = RMLX_F32, mode = KV_FLOAT, bits = 0;
  int64_t group = 0, D = 0, esize = 4, vbytes = 0, ngroups = 0;

  static KvSide flt(const void *p, int dt, int64_t D) {
    KvSide s;
    s.data = (const char *)p;
    s.dt = dt;
    s.D = D;
    s.esize = dt == RMLX_F32 ? 4 : 2;
    s.vbytes = D * s.esize;
    return s;
  }

  static KvSide of(const KvPage &p, int64_t D) {
    if (p.mode == KV_FLOAT) return flt(p.data, p.dt, D);
    KvSide s;
    s.data = (const char *)p.data;
    s.scales = (const uint16_t *)p.scales;
    s.biases = (const uint16_t *)p.biases;
    s.mode = p.mode;
    s.bits = p.mode == KV_FP8 ? 8 : p.bits;
    s.group = p.mode == KV_TURBO ? D : p.group;  // turbo: one scale per row
    s.D = D;
    s.vbytes = D * s.bits / 8;
    s.ngroups = D / s.group;
    return s;
  }

  bool packed() const { return mode != KV_FLOAT; }
  const char *row(int64_t v) const { return data + v * vbytes; }

  // Rows v..v + n - 1 (consecutive in memory), with their scales and biases.
  void prefetch(int64_t v, int64_t n) const {
    const char *p = row(v);
    for (int64_t b = 0; b < n * vbytes; b += 64) __builtin_prefetch(p + b, 0, 2);
    if (!packed()) return;
    for (int64_t b = 0; b < n * ngroups * 2; b += 64) __builtin_prefetch((const char *)(scales + v * ngroups) + b, 0, 2);
    if (biases)
      for (int64_t b = 0; b < n * ngroups * 2; b += 64) __builtin_prefetch((const char *)(biases + v * ngroups) + b, 0, 2);
  }

  // dst[0..D) = row v as f32.
  void load(const Kern &k, float *dst, int64_t v) const {
    if (mode == KV_FLOAT) {
      if (dt == RMLX_F32) std::memcpy(dst, row(v), sizeof(float) * D);
      else if (dt == RMLX_F16) k.f16_to_f32(dst, (const uint16_t *)row(v), D);
      else k.bf16_to_f32(dst, (const uint16_t *)row(v), D);
      return;
    }
    if (mode == KV_TURBO) turbo_decode(dst, (const uint8_t *)row(v), scales[v], bits, D);
    else k.pk_decode(dst, (const uint8_t *)row(v), gscales(v), gbiases(v), mode, bits, group, D);
  }

  // The fused kernels' view of a row (see PkRows): codes, group scales, biases.
  const uint8_t *codes(int64_t v) const { return (const uint8_t *)row(v); }
  const uint16_t *gscales(int64_t v) const { return scales + v * ngroups; }
  const uint16_t *gbiases(int64_t v) const { return biases ? biases + v * ngroups : nullptr; }
  // Whether the fused packed kernels take this side (groups of whole 32-value blocks).
  bool fusable(const Kern &k) const {
    return packed() && (mode != KV_TURBO || k.pk_turbo) && group % 32 == 0 && ngroups <= 64;
  }
};

// E4M3 ("fn") code of x, rounded to nearest even, saturating at 448; the sign of a zero result is kept.
uint8_t e4m3_encode(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  float a = std::fabs(x);
  if (!(a == a)) return 0x7f;
  if (a >= 448.f) return sign | 0x7e;
  if (a < 0.015625f) return sign | (uint8_t)std::nearbyint(a * 512.f);  // subnormals step 2^-9; 8 is 2^-6
  int ex;
  std::frexp(a, &ex);
  int e = ex - 1;
  int m = (int)std::nearbyint((std::ldexp(a, -e) - 1.f) * 8.f);
  if (m == 8) {
    e++;
    m = 0;
  }
  int code = ((e + 7) << 3) | m;
  if (code > 0x7e) code = 0x7e;
  return sign | (uint8_t)code;
}

// Packs one row x[0..D) into a packed side's row v (see KvSide), MLX's affine rule with the scale and bias rounded
// to f16 before the codes are taken, so that the codes fit the stored scale.
void pack_row(const KvSide &s, int64_t v, const float *x) {
  uint8_t *c = (uint8_t *)s.data + v * s.vbytes;
  uint16_t *sc = (uint16_t *)s.scales + v * s.ngroups;
  if (s.mode == KV_TURBO) return turbo_encode(c, sc, x, s.bits, s.D);
  const int64_t G = s.group;
  for (int64_t g = 0; g < s.ngroups; g++) {
    const float *xg = x + g * G;
    if (s.mode == KV_FP8) {
      float amax = 0.f;
      for (int64_t j = 0; j < G; j++) amax = std::max(amax, std::fabs(xg[j]));
      const uint16_t hs = f32_to_f16(std::min(amax / 448.f, 65504.f));
      const float st = f16_to_f32(hs);
      sc[g] = hs;
      const float inv = st > 0.f ? 1.f / st : 0.f;
      for (int64_t j = 0; j < G; j++) c[g * G + j] = e4m3_encode(xg[j] * inv);
      continue;
    }
    float mn = xg[0], mx = xg[0];
    for (int64_t j = 1; j < G; j++) mn = std::min(mn, xg[j]), mx = std::max(mx, xg[j]);
    const int levels = (1 << s.bits) - 1;
    float scale = std::max((mx - mn) / levels, 1e-7f);
    const bool side = std::fabs(mn) > std::fabs(mx);
    scale = side ? scale : -scale;
    const float edge = side ? mn : mx;
    const float q0 = std::nearbyint(edge / scale);
    float bias = 0.f;
    if (q0 != 0.f) {
      scale = edge / q0;
      bias = edge;
    }
    const uint16_t hs = f32_to_f16(std::clamp(scale, -65504.f, 65504.f)), hb = f32_to_f16(std::clamp(bias, -65504.f, 65504.f));
    sc[g] = hs;
    ((uint16_t *)s.biases)[v * s.ngroups + g] = hb;
    const float fs = f16_to_f32(hs), fb = f16_to_f32(hb);
    const float inv = fs != 0.f ? 1.f / fs : 0.f;
    auto code = [&](float w) { return (uint32_t)std::clamp(std::nearbyint((w - fb) * inv), 0.f, (float)levels); };
    if (s.bits == 8) {
      for (int64_t j = 0; j < G; j++) c[g * G + j] = (uint8_t)code(xg[j]);
    } else {
      uint8_t *cg = c + g * G / 2;
      for (int64_t j = 0; j < G / 2; j++) cg[j] = (uint8_t)(code(xg[2 * j]) | (code(xg[2 * j + 1]) << 4));
    }
  }
}

// Attends R query rows (contiguous [R, D] in qr) over nkeys keys, whose row indices in the K and V sides (see
// KvSide) come from successive calls rows() (keys in order); row r sees keys lo[r]..hi[r] (inclusive, in key order) and
// writes its result to out[r]. tiled: the rows come from several tokens and share key loads (prefill); otherwise
// the heads of one token, each streaming the keys with the single-row kernels, which read memory faster.
// nh: the rows are nh KV heads' R / nh query rows each (a head's rows consecutive), head h reading row rows() + h
// of each key: the KV heads of a token are consecutive rows of a pool, so one walk over the keys reads each token's
// K and V rows of all heads at once, whole cache lines of codes and of group scales, rather than one head's slice
// per walk (which left decode attention bound by memory latency).
// part_ml: null, or where a part of a split key range leaves its running max and sum per row ([R] each); out[r]
// then gets the unnormalized sum of the part (see merge_parts). Scratch: see scratch_floats.
template <class Rows>
void attend_rows(float *const *out, const float *qr, int64_t R, const int64_t *lo, const int64_t *hi, int64_t D,
                 const KvSide &K, const KvSide &V, int64_t nkeys, Rows rows, float scale, float softcap,
                 bool tiled, float *scratch, float *part_ml = nullptr, int64_t nh = 1) {
  float *acc = scratch;             // [R, D]
  float *m = acc + R * D;           // [R]
  float *l = m + R;                 // [R]
  float *sc = l + R;                // [R, kChunk]
  float *kbuf = sc + R * kChunk;    // [kChunk, D]
  float *vbuf = kbuf + kChunk * D;  // [kChunk, D]
  const Kern &k = kern();
  for (int64_t r = 0; r < R; r++) {
    m[r] = -INFINITY;
    l[r] = 0.f;
  }
  // Key offsets are taken one chunk ahead: a token row of the pool is often a whole page away from the next, so the
  // hardware prefetchers, which stay within a page, leave every row to a demand miss (decode attention read 7-8
  // GB/s per core). Packed rows of the next chunk are prefetched into L2 at once while this one is scored. Float
  // rows are prefetched one head ahead instead (the next head's rows of this chunk while this head is scored, the
  // first head's of the next chunk during the last): the chunk-ahead burst of 4096 lines (64 tokens of 8 heads of
  // 128, K and V) changed nothing measurable in a model's decode step, while the head-ahead stream took one
  // 576-token call of the 0.6B shape, one thread, KV from memory, from 0.209-0.242 to 0.159-0.201 ms, and the
  // model's attention calls from 188-202 to 175-183 us.
  const bool burst = K.packed() || V.packed();
  int64_t offs[2][kChunk];
  auto take = [&](int64_t *o, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
      o[j] = rows();
      if (!burst) continue;
      K.prefetch(o[j], nh);
      V.prefetch(o[j], nh);
    }
  };
  auto prefetch_head = [&](const int64_t *o, int64_t n, int64_t h) {
    for (int64_t j = 0; j < n; j++) {
      K.prefetch(o[j] + h, 1);
      V.prefetch(o[j] + h, 1);
    }
  };
  // 16-bit float rows are read in place by the single-row kernels; f32 rows in place by all; packed rows are read in
  // place by the fused packed kernels (single rows) or decoded once per chunk into scratch (tiles, which share each
  // decoded row among all their query rows; odd group sizes); 16-bit rows of a tile are converted likewise.
  const bool same = !K.packed() && !V.packed() && K.dt == V.dt;
  const int dt = K.dt;
  const bool fused = !tiled && K.fusable(k) && V.fusable(k);
  // Fused: q rows times the softmax scale (in nibble order for 4-bit keys), and their sums per key group.
  float *qp = vbuf + kChunk * D;  // [R, D]
  float *qsum = qp + R * D;       // [R, K.ngroups]
  const bool knib = K.bits == 4, vnib = V.bits == 4;
  // Turbo keys are scored in the rotated space: the query rows are rotated once, into qp when not fused (unused
  // then), else into acc (cleared below), from which the fused rows are taken into qp.
  if (K.mode == KV_TURBO) {
    float *rq = fused ? acc : qp;
    std::memcpy(rq, qr, sizeof(float) * R * D);
    for (int64_t r = 0; r < R; r++) turbo_rotate(rq + r * D, D);
    qr = rq;
  }
  if (fused) {
    for (int64_t r = 0; r < R; r++) {
      float *o = qp + r * D;
      for (int64_t d = 0; d < D; d++) o[d] = qr[r * D + (knib ? pk_nibble_pos(d) : d)] * scale;
      for (int64_t g = 0; g < K.ngroups; g++) {
        float t = 0.f;
        for (int64_t d = g * K.group; d < (g + 1) * K.group; d++) t += o[d];
        qsum[r * K.ngroups + g] = t;
      }
    }
  }
  std::memset(acc, 0, sizeof(float) * R * D);
  const uint8_t *kc[kChunk], *vc[kChunk];
  const uint16_t *ks[kChunk], *kb[kChunk], *vs[kChunk], *vb[kChunk];
  const PkRows kp{kc, ks, kb, K.mode, K.bits, K.group}, vp{vc, vs, vb, V.mode, V.bits, V.group};
  take(offs[0], std::min(kChunk, nkeys));
  const int64_t Rh = R / nh;  // query rows per KV head
  for (int64_t j0 = 0, c = 0; j0 < nkeys; j0 += kChunk, c ^= 1) {
    const int64_t nj = std::min(kChunk, nkeys - j0);
    if (j0 + kChunk < nkeys) take(offs[c ^ 1], std::min(kChunk, nkeys - j0 - kChunk));
    const float *krows[kChunk], *vrows[kChunk];
    const uint16_t *k16[kChunk], *v16[kChunk];
    // Single-row reads of a 16-bit pool convert as they go, and so do tiles where the ISA has 16-bit tile
    // kernels; elsewhere tiles convert once into scratch for all their rows.
    const bool tiled16 = tiled && same && dt != RMLX_F32 && k.dots_rows16 && k.pv_rows16;
    const bool direct16 = same && dt != RMLX_F32 && (!tiled || tiled16);
    for (int64_t h = 0; h < nh; h++) {
      if (!burst) {
        if (h + 1 < nh) prefetch_head(offs[c], nj, h + 1);
        else if (j0 + kChunk < nkeys) prefetch_head(offs[c ^ 1], std::min(kChunk, nkeys - j0 - kChunk), 0);
      }
      const int64_t r0 = h * Rh;  // this head's rows: [r0, r0 + Rh)
      for (int64_t j = 0; j < nj; j++) {
        const int64_t off = offs[c][j] + h;  // a row index
        if (fused) {
          kc[j] = K.codes(off), ks[j] = K.gscales(off), kb[j] = K.gbiases(off);
          vc[j] = V.codes(off), vs[j] = V.gscales(off), vb[j] = V.gbiases(off);
        } else if (direct16) {
          k16[j] = (const uint16_t *)K.row(off);
          v16[j] = (const uint16_t *)V.row(off);
        } else if (same && dt == RMLX_F32) {
          krows[j] = (const float *)K.row(off);
          vrows[j] = (const float *)V.row(off);
        } else {
          K.load(k, kbuf + j * D, off);
          V.load(k, vbuf + j * D, off);
          krows[j] = kbuf + j * D;
          vrows[j] = vbuf + j * D;
        }
      }
      float *sh = sc + r0 * kChunk, *ah = acc + r0 * D;
      const float *qh = qr + r0 * D;
      if (fused) k.pk_dots(sh, kChunk, qp + r0 * D, qsum + r0 * K.ngroups, Rh, kp, nj, D);
      else if (tiled16) k.dots_rows16(sh, kChunk, qh, D, Rh, k16, nj, D, scale, dt);
      else if (tiled) k.dots_rows(sh, kChunk, qh, D, Rh, krows, nj, D, scale);
      else if (direct16) k.dots16(sh, kChunk, qh, Rh, k16, nj, D, scale, dt);
      else
        for (int64_t r = 0; r < Rh; r++) k.dots(sh + r * kChunk, qh + r * D, krows, nj, D, scale);
      for (int64_t r = r0; r < r0 + Rh; r++) {
        float *s = sc + r * kChunk;
        // Keys of this chunk the row may see: [a, b).
        const int64_t a = std::max<int64_t>(lo[r] - j0, 0), b = std::min<int64_t>(hi[r] - j0 + 1, nj);
        if (a >= b) {
          std::memset(s, 0, sizeof(float) * nj);
          continue;
        }
        if (softcap > 0.f)
          for (int64_t j = a; j < b; j++) s[j] = softcap * std::tanh(s[j] / softcap);
        const float mx = std::max(m[r], k.max(s + a, b - a));
        const float sum = k.exp_sum(s + a, s + a, mx, b - a);
        for (int64_t j = 0; j < a; j++) s[j] = 0.f;
        for (int64_t j = b; j < nj; j++) s[j] = 0.f;
        if (m[r] != mx && l[r] > 0.f) {
          const float c = std::exp(m[r] - mx);
          k.scal(acc + r * D, c, D);
          l[r] *= c;
        }
        l[r] += sum;
        m[r] = mx;
      }
      if (fused) k.pk_pv(ah, sh, kChunk, Rh, vp, nj, D);
      else if (tiled16) k.pv_rows16(ah, sh, kChunk, Rh, v16, nj, D, dt);
      else if (tiled) k.pv_rows(ah, sh, kChunk, Rh, vrows, nj, D);
      else if (direct16) k.pv16(ah, sh, kChunk, Rh, v16, nj, D, dt);
      else
        for (int64_t r = 0; r < Rh; r++) k.pv(ah + r * D, sh + r * kChunk, vrows, nj, D);
    }
  }
  if (fused && vnib)  // accumulators back from nibble order to element order
    for (int64_t r = 0; r < R; r++) {
      float *a = acc + r * D;
      std::memcpy(kbuf, a, sizeof(float) * D);
      for (int64_t p = 0; p < D; p++) a[pk_nibble_pos(p)] = kbuf[p];
    }
  if (V.mode == KV_TURBO)  // sums of rotated value rows, rotated back (a linear map, so parts merge after it)
    for (int64_t r = 0; r < R; r++) turbo_unrotate(acc + r * D, D);
  for (int64_t r = 0; r < R; r++) {
    if (part_ml) {
      part_ml[r] = m[r];
      part_ml[R + r] = l[r];
      std::memcpy(out[r], acc + r * D, sizeof(float) * D);
      continue;
    }
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    k.scale_mul(out[r], acc + r * D, inv, nullptr, D);
  }
}

// out = the softmax-weighted sum over S parts of one row's keys, each given as (max, sum, unnormalized acc).
void merge_parts(float *out, const float *m, const float *l, const float *const *acc, int64_t S, int64_t D) {
  float mx = -INFINITY;
  for (int64_t p = 0; p < S; p++) mx = std::max(mx, m[p]);
  float total = 0.f;
  std::memset(out, 0, sizeof(float) * D);
  if (mx == -INFINITY) return;
  for (int64_t p = 0; p < S; p++) {
    if (l[p] <= 0.f) continue;
    const float c = std::exp(m[p] - mx);
    total += l[p] * c;
    for (int64_t d = 0; d < D; d++) out[d] += acc[p][d] * c;
  }
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int64_t d = 0; d < D; d++) out[d] *= inv;
}

int64_t scratch_floats(int64_t R, int64_t D) { return R * (4 * D + kChunk + 2) + 2 * kChunk * D; }

// attend_rows' scratch for R rows, left uninitialized: attend_rows writes every part before reading it. A decode
// step sized it for a 16-token tile and cleared it (657 KB a call at 16 heads of 128), a third of the call at 64
// keys. The calling thread keeps it and grows it when a call needs more, so that decode steps allocate nothing.
float *scratch_for(int64_t R, int64_t D) {
  thread_local std::unique_ptr<float[]> buf;
  thread_local int64_t cap = 0;
  const int64_t n = scratch_floats(R, D);
  if (n > cap) {
    buf.reset(new float[(size_t)n]);
    cap = n;
  }
  return buf.get();
}

// attend_rows' row tables for R rows (where each row's output goes, its first and last key), kept by the calling
// thread like its scratch.
struct RowTables {
  float **out;
  int64_t *lo, *hi;
};
RowTables row_tables(int64_t R) {
  thread_local std::vector<float *> out;
  thread_local std::vector<int64_t> lo, hi;
  out.resize((size_t)R);
  lo.resize((size_t)R);
  hi.resize((size_t)R);
  return {out.data(), lo.data(), hi.data()};
}

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

namespace {

bool page_ok(const KvPage &p, int64_t D) {
  if (p.mode == KV_FLOAT) return pool_dtype_ok(p.dt);
  if (p.mode == KV_TURBO) return (p.bits == 3 || p.bits == 4) && turbo_dim_ok(D) && p.data && p.scales;
  if (p.mode != KV_AFFINE && p.mode != KV_FP8) return false;
  if (p.mode == KV_AFFINE && p.bits != 4 && p.bits != 8) return false;
  return p.group >= 2 && p.group <= 256 && p.group % 2 == 0 && D % p.group == 0 && p.data && p.scales && (p.mode == KV_FP8 || p.biases);
}

template <class Rec>
int paged_attention(const Rec &a, const KvSide &K, const KvSide &V) {
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
  // Runs of consecutive positions of one sequence (a prefill chunk) are attended kTileTokens at a time, so that
  // each key and value row loaded serves all their query rows.
  struct Group {
    int64_t t0, n;
  };
  std::vector<Group> groups;
  for (int64_t t = 0; t < a.T; t++) {
    if (!groups.empty()) {
      Group &g = groups.back();
      if (g.n < kTileTokens && a.token_seq[t] == a.token_seq[t - 1] && a.positions[t] == a.positions[t - 1] + 1) {
        g.n++;
        continue;
      }
    }
    groups.push_back({t, 1});
  }
  auto lo_of = [&](int64_t t) -> int64_t { return a.window > 0 ? std::max<int64_t>(0, a.positions[t] - a.window + 1) : 0; };
  // Small steps (few tokens, short contexts) run on the calling thread: waking the pool would cost more.
  int64_t work = 0;
  for (int64_t t = 0; t < a.T; t++) work += (a.positions[t] - lo_of(t) + 1) * a.heads * D;
  // An item is a group with its KV heads kh..kh + nh - 1, whose keys it walks once (attend_rows: nh), reading
  // whole token rows. All heads go together unless a prefill has fewer groups than threads: then the heads split
  // into the fewest runs that give every thread an item (a decode step splits its keys instead, below).
  const bool decode = (int64_t)groups.size() == a.T;
  const int64_t ng = (int64_t)groups.size();
  int64_t hgroups = 1;  // runs of heads per group
  if (!decode)
    while (hgroups < a.kv_heads && (a.kv_heads % hgroups || ng * hgroups < pool_size())) hgroups++;
  const int64_t nh = a.kv_heads / hgroups, RG = nh * G, items = ng * hgroups;  // RG: an item's query rows a token
  // A decode step with fewer items than threads splits each item's keys into parts, whose partial softmax sums are
  // merged after: otherwise one sequence on a 16-thread machine keeps all but one thread idle.
  int64_t longest = 0;
  for (const Group &g : groups) longest = std::max(longest, a.positions[g.t0 + g.n - 1] - lo_of(g.t0) + 1);
  int64_t parts = 1;
  if (decode && items < pool_size())
    parts = std::max<int64_t>(1, std::min<int64_t>((pool_size() + items - 1) / items, longest / kMinPartKeys));
  std::vector<float> part_acc, part_ml;
  if (parts > 1) {
    part_acc.resize((size_t)(items * parts * RG * D));
    part_ml.resize((size_t)(items * parts * 2 * RG));
  }
  int64_t most = 1;  // tokens of the largest group: a decode step's are single tokens
  for (const Group &g : groups) most = std::max(most, g.n);
  parallel_for(items * parts, [&](int64_t b, int64_t e, int) {
    const int64_t R = most * RG;
    float *const scratch = scratch_for(R, D);
    const RowTables rt = row_tables(R);
    float **const outs = rt.out;
    int64_t *const rlo = rt.lo, *const rhi = rt.hi;
    for (int64_t u = b; u < e; u++) {
      const int64_t w = u / parts, part = u % parts;
      // Groups in zigzag order (first, last, second, second last, ...): causal work grows with position, and the
      // pool hands each thread one contiguous range of items, which this keeps balanced.
      const int64_t z = w / hgroups, kh = w % hgroups * nh;
      const Group &grp = groups[(z & 1) ? ng - 1 - z / 2 : z / 2];
      const int64_t t0 = grp.t0, tl = grp.t0 + grp.n - 1;
      const int32_t s = a.token_seq[t0];
      const int64_t all = a.positions[tl] - lo_of(t0) + 1, len = (all + parts - 1) / parts;
      // this part's keys: [lo, lo + nkeys) of the sequence
      const int64_t lo = lo_of(t0) + part * len, nkeys = std::min(len, all - part * len), nr = grp.n * RG;
      float *qr = scratch + scratch_floats(R, D) - R * D;
      // Row r: KV head kh + h, token i, query r % G of the head; a head's rows are consecutive (attend_rows: nh).
      for (int64_t r = 0; r < nr; r++) {
        const int64_t h = r / (grp.n * G), i = r / G % grp.n, qo = ((t0 + i) * a.heads + (kh + h) * G + r % G) * D;
        std::memcpy(qr + r * D, a.q + qo, sizeof(float) * D);
        outs[r] = parts > 1 ? part_acc.data() + (u * RG + r) * D : a.out + qo;
        rlo[r] = std::max<int64_t>(0, lo_of(t0 + i) - lo);
        rhi[r] = a.positions[t0 + i] - lo;
      }
      float *ml = parts > 1 ? part_ml.data() + u * 2 * RG : nullptr;
      if (nkeys <= 0) {  // a part past the end of a shorter sequence
        for (int64_t r = 0; r < RG; r++) ml[r] = -INFINITY, ml[RG + r] = 0.f;
        continue;
      }
      const int32_t *tab = a.tables + s * a.max_blocks;
      // Walks the block table once: a division per block, not per key.
      int64_t blk = lo / bs, within = lo % bs, base = ((int64_t)tab[blk] * bs) * a.kv_heads + kh;
      auto rows = [&]() {
        if (within == bs) {
          within = 0;
          base = ((int64_t)tab[++blk] * bs) * a.kv_heads + kh;
        }
        return base + (within++) * a.kv_heads;
      };
      attend_rows(outs, qr, nr, rlo, rhi, D, K, V, nkeys, rows, a.scale, a.softcap, grp.n > 1,
                  scratch, ml, nh);
    }
  }, work < (1 << 15) ? items * parts : 1);
  if (parts > 1) {
    std::vector<float> m((size_t)parts), l((size_t)parts);
    std::vector<const float *> acc((size_t)parts);
    for (int64_t w = 0; w < items; w++) {
      const int64_t t0 = groups[(w & 1) ? ng - 1 - w / 2 : w / 2].t0;
      for (int64_t r = 0; r < RG; r++) {
        for (int64_t p = 0; p < parts; p++) {
          const int64_t u = w * parts + p;
          m[(size_t)p] = part_ml[(size_t)(u * 2 * RG + r)];
          l[(size_t)p] = part_ml[(size_t)(u * 2 * RG + RG + r)];
          acc[(size_t)p] = part_acc.data() + (u * RG + r) * D;
        }
        merge_parts(a.out + ((t0 * a.heads) + r) * D, m.data(), l.data(), acc.data(), parts, D);
      }
    }
  }
  return RMLX_OK;
}

}  // namespace

int op_paged_attention(const PagedAttentionRecord &a) {
  if (!pool_dtype_ok(a.pool_dt)) return fail(RMLX_E_UNSUPPORTED, "paged_attention: pool dtype %d", a.pool_dt);
  return paged_attention(a, KvSide::flt(a.kpool, a.pool_dt, a.head_dim), KvSide::flt(a.vpool, a.pool_dt, a.head_dim));
}

int op_paged_attention_page(const PagedAttentionPageRecord &a) {
  if (!page_ok(a.kpage, a.head_dim) || !page_ok(a.vpage, a.head_dim))
    return fail(RMLX_E_UNSUPPORTED, "paged_attention: KV page format (modes %d/%d, bits %d/%d, group %d/%d, head_dim %lld)",
                a.kpage.mode, a.vpage.mode, a.kpage.bits, a.vpage.bits, a.kpage.group, a.vpage.group,
                (long long)a.head_dim);
  return paged_attention(a, KvSide::of(a.kpage, a.head_dim), KvSide::of(a.vpage, a.head_dim));
}

int op_kv_write_page(const KvWritePageRecord &a) {
  const int64_t D = a.head_dim, H = a.kv_heads, row = H * D;
  if (!page_ok(a.kpage, D) || !page_ok(a.vpage, D))
    return fail(RMLX_E_UNSUPPORTED, "kv_write: KV page format (modes %d/%d, bits %d/%d, group %d/%d, head_dim %lld)",
                a.kpage.mode, a.vpage.mode, a.kpage.bits, a.vpage.bits, a.kpage.group, a.vpage.group, (long long)D);
  for (int64_t t = 0; t < a.T; t++)
    if (a.slots[t] < 0 || a.slots[t] >= a.num_slots)
      return fail(RMLX_E_INVALID, "kv_write: slot %d of token %lld outside the pool's %lld slots", a.slots[t],
                  (long long)t, (long long)a.num_slots);
  const KvSide K = KvSide::of(a.kpage, D), V = KvSide::of(a.vpage, D);
  const Kern &kk = kern();
  auto put = [&](const KvSide &s, const KvPage &p, int64_t slot, const float *x) {
    if (!s.packed()) store_row(kk, p.data, p.dt, slot * row, x, row);
    else
      for (int64_t h = 0; h < H; h++) pack_row(s, slot * H + h, x + h * D);
  };
  parallel_for(a.T, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; t++) {
      put(K, a.kpage, a.slots[t], a.k + t * row);
      put(V, a.vpage, a.slots[t], a.v + t * row);
    }
  }, std::max<int64_t>(1, 2048 / std::max<int64_t>(row, 1)));
  return RMLX_OK;
}

int op_sdpa(float *out, const float *q, const float *k, const float *v, int64_t B, int64_t H, int64_t Hkv, int64_t L,
            int64_t S, int64_t D, float scale, bool causal) {
  if (Hkv < 1 || H % Hkv) return fail(RMLX_E_INVALID, "sdpa: %lld heads not a multiple of %lld", (long long)H, (long long)Hkv);
  const int64_t G = H / Hkv;
  parallel_for(B * Hkv * L, [&](int64_t b0, int64_t e0, int) {
    float *const scratch = scratch_for(G, D);
    const RowTables rt = row_tables(G);
    float **const outs = rt.out;
    int64_t *const rlo = rt.lo, *const rhi = rt.hi;
    std::fill(rlo, rlo + G, 0);
    for (int64_t w = b0; w < e0; w++) {
      const int64_t i = w % L, kh = (w / L) % Hkv, b = w / (L * Hkv);
      const int64_t nkeys = causal ? std::min(S, std::max<int64_t>(0, i + S - L + 1)) : S;
      const int64_t kvo = (b * Hkv + kh) * S * D;
      float *qr = scratch + scratch_floats(G, D) - G * D;
      for (int64_t g = 0; g < G; g++) {
        const int64_t qo = ((b * H + kh * G + g) * L + i) * D;
        std::memcpy(qr + g * D, q + qo, sizeof(float) * D);
        outs[g] = out + qo;
        rhi[g] = nkeys - 1;
      }
      int64_t next = kvo / D;
      auto rows = [&]() { return next++; };
      attend_rows(outs, qr, G, rlo, rhi, D, KvSide::flt(k, RMLX_F32, D), KvSide::flt(v, RMLX_F32, D),
                  nkeys, rows, scale, 0.f, false, scratch);
    }
  }, B * H * L * S * D < (1 << 15) ? B * Hkv * L : 1);
  return RMLX_OK;
}

}  // namespace rmlx

namespace rmlx {

// Each sequence of a padding-free batch attends to its own tokens only (encoders: no cache). Work items are a KV
// head and up to kTileTokens consecutive queries of one sequence, which share every key load; a query's key
// range [lo, hi] is its sequence's tokens, cut to the causal prefix and to the window.
int run_op(const VarlenAttentionRecord &a) {
  const int64_t H = a.heads, Hkv = a.kv_heads, D = a.D;
  if (Hkv < 1 || H % Hkv)
    return fail(RMLX_E_INVALID, "varlen_attention: %lld heads not a multiple of %lld", (long long)H, (long long)Hkv);
  if (a.seq_start[0] != 0 || a.seq_start[a.num_seqs] != a.T)
    return fail(RMLX_E_INVALID, "varlen_attention: sequences cover [%d, %d), not the step's %lld tokens", a.seq_start[0],
                a.seq_start[a.num_seqs], (long long)a.T);
  struct Tile {
    int64_t t0, n, s0, len;
  };
  std::vector<Tile> tiles;
  for (int64_t s = 0; s < a.num_seqs; s++) {
    const int64_t s0 = a.seq_start[s], len = a.seq_start[s + 1] - s0;
    if (len < 0) return fail(RMLX_E_INVALID, "varlen_attention: sequence %lld has a negative length", (long long)s);
    for (int64_t i = 0; i < len; i += kTileTokens) tiles.push_back({s0 + i, std::min(kTileTokens, len - i), s0, len});
  }
  const int64_t G = H / Hkv, items = (int64_t)tiles.size() * Hkv, W = a.window;
  parallel_for(items, [&](int64_t b, int64_t e, int) {
    const int64_t R = kTileTokens * G;
    float *const scratch = scratch_for(R, D);
    const RowTables rt = row_tables(R);
    float **const outs = rt.out;
    int64_t *const rlo = rt.lo, *const rhi = rt.hi;
    for (int64_t u = b; u < e; u++) {
      const Tile &tl = tiles[u / Hkv];
      const int64_t kh = u % Hkv;
      float *qr = scratch + scratch_floats(R, D) - R * D;
      int64_t first = tl.len, last = -1;
      for (int64_t i = 0; i < tl.n; i++) {
        const int64_t li = tl.t0 - tl.s0 + i;
        int64_t lo = 0, hi = a.causal ? li : tl.len - 1;
        if (W > 0) {
          lo = std::max<int64_t>(0, li - W + 1);
          if (!a.causal) hi = std::min<int64_t>(tl.len - 1, li + W - 1);
        }
        first = std::min(first, lo);
        last = std::max(last, hi);
        for (int64_t g = 0; g < G; g++) {
          const int64_t r = i * G + g, qo = ((tl.t0 + i) * H + kh * G + g) * D;
          std::memcpy(qr + r * D, a.q + qo, sizeof(float) * D);
          outs[r] = a.out + qo;
          rlo[r] = lo;
          rhi[r] = hi;
        }
      }
      // keys [first, last] of the sequence; the rows' ranges become relative to the first
      for (int64_t r = 0; r < tl.n * G; r++) rlo[r] -= first, rhi[r] -= first;
      int64_t next = (tl.s0 + first) * Hkv + kh;
      auto rows = [&]() {
        const int64_t row = next;
        next += Hkv;
        return row;
      };
      attend_rows(outs, qr, tl.n * G, rlo, rhi, D, KvSide::flt(a.k, RMLX_F32, D),
                  KvSide::flt(a.v, RMLX_F32, D), last - first + 1, rows, a.scale, 0.f, tl.n > 1, scratch);
    }
  }, a.T * H * D < (1 << 15) ? items : 1);
  return RMLX_OK;
}

}  // namespace rmlx
