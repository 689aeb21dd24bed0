// Encoder attention written with the Backend's general ops (slices, products, softmax), one sequence at a time: the
// mlx backend's varlenAttention, and a second derivation of the native kernel's result for its tests.
import type { Backend, Tensor, VarlenAttentionOptions } from "./backend.ts";

/** A large finite negative rather than -inf, so that no row of scores can turn into NaN. */
const MASKED = -1e30;

/** The additive mask of one sequence of n tokens, or null when every token sees every other. */
function maskOf(n: number, causal: boolean, window: number): Float32Array | null {
  if (!causal && (window === 0 || window >= n)) return null;
  const m = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const d = i - j;
      const seen = causal ? d >= 0 && (window === 0 || d < window) : window === 0 || Math.abs(d) < window;
      if (!seen) m[i * n + j] = MASKED;
    }
  }
  return m;
}

export function composedVarlenAttention(be: Backend, q: Tensor, k: Tensor, v: Tensor, seqStart: Int32Array, opts: VarlenAttentionOptions): Tensor {
  const [, H, D] = q.shape as [number, number, number];
  const Hkv = k.shape[1]!;
  const G = H / Hkv;
  const outs: Tensor[] = [];
  for (let s = 0; s + 1 < seqStart.length; s++) {
    const s0 = seqStart[s]!;
    const n = seqStart[s + 1]! - s0;
    if (n === 0) continue;
    // the G query heads of each KV head side by side: [Hkv, G * n, D] against keys [Hkv, D, n]
    const qs = be.reshape(be.transpose(be.reshape(be.slice(q, 0, s0, s0 + n), [n, Hkv, G, D]), [1, 2, 0, 3]), [Hkv, G * n, D]);
    const ks = be.transpose(be.slice(k, 0, s0, s0 + n), [1, 2, 0]);
    const vs = be.transpose(be.slice(v, 0, s0, s0 + n), [1, 0, 2]);
    let scores = be.scale(be.matmul(qs, ks), opts.scale);
    const mask = maskOf(n, opts.causal, opts.window ?? 0);
    if (mask) scores = be.reshape(be.add(be.reshape(scores, [Hkv, G, n, n]), be.fromArray(mask, [n, n], "f32")), [Hkv, G * n, n]);
    const o = be.matmul(be.softmax(scores, -1), vs);
    outs.push(be.reshape(be.transpose(be.reshape(o, [Hkv, G, n, D]), [2, 0, 1, 3]), [n, H, D]));
  }
  return outs.length === 1 ? outs[0]! : be.concatenate(outs, 0);
}
