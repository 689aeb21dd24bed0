// Tokens drawn on the device, so that a step sends back ids instead of a row of logits per sequence: the host
// sampler's rule (src/engine/sampler.ts) as array ops over all rows at once, each row with its own parameters.
// The filters keep a prefix of the tokens sorted by logit (top_p: while the mass before a token is under top_p of
// the total; min_p: probability at least min_p of the best; top_k: the first k), so the smallest kept logit is a
// cutoff, and the draw walks the kept weights in index order as the host's does: the same token for the same u up
// to f32 rounding of the sums. A row's mask (an output constraint's allowed tokens) is uploaded as bytes and puts
// the other tokens at -inf first, instead of the row of logits being copied out to the host.
import type { RowDraw } from "../backend.ts";
import { MLX_DTYPE } from "./lib.ts";
import type { Graph } from "./linear_attn.ts";

/** Token ids i32 [R] for logits (f32 [R, V]) under one RowDraw per row. */
export function drawRows(G: Graph, logits: number, V: number, draws: readonly RowDraw[]): number {
  const R = draws.length;
  let x = logits;
  if (draws.some((d) => d.allowed)) {
    let mask = draws[0]!.allowed;
    if (R > 1 || mask!.length !== V) {
      mask = new Uint8Array(R * V).fill(1);
      draws.forEach((d, r) => d.allowed && mask!.set(d.allowed.subarray(0, V), r * V));
    }
    x = G.where(G.data(mask!, [R, V], MLX_DTYPE.bool), x, G.scalar(-Infinity));
  }
  const col = (f: (d: RowDraw) => number) => G.data(Float32Array.from(draws, f), [R, 1], MLX_DTYPE.f32);
  const greedy = G.argmax(x, 1);
  if (draws.every((d) => d.temperature === 0)) return G.astype(greedy, MLX_DTYPE.i32);
  const m = G.maxKeep(x, 1);
  const centred = G.sub(x, m);
  const weights = G.exp(G.mul(centred, col((d) => (d.temperature > 0 ? 1 / d.temperature : 1))));
  let w = weights;
  if (draws.some((d) => d.topP < 1 || d.minP > 0 || d.topK > 0)) {
    const order = G.argsort(G.mul(x, G.scalar(-1)), 1);
    const sorted = G.takeAlong(centred, order, 1);
    const p = G.exp(sorted);
    const cum = G.cumsum(p, 1);
    const total = G.slice(cum, [0, V - 1], [R, V]);
    const massBefore = G.sub(cum, p);
    const topP = G.bin("mlx_less", massBefore, G.mul(total, col((d) => (d.topP < 1 ? d.topP : Infinity))));
    const minP = G.bin("mlx_greater_equal", p, col((d) => d.minP));
    let kept = G.sumKeep(G.astype(G.bin("mlx_logical_and", topP, minP), MLX_DTYPE.i32), 1);
    kept = G.bin("mlx_minimum", kept, G.data(Int32Array.from(draws, (d) => (d.topK > 0 ? d.topK : V)), [R, 1], MLX_DTYPE.i32));
    // The best token always passes every filter, so at least one is kept.
    const last = G.sub(kept, G.data(Int32Array.from(draws, () => 1), [R, 1], MLX_DTYPE.i32));
    const cutoff = G.takeAlong(sorted, last, 1);
    w = G.where(G.bin("mlx_greater_equal", centred, cutoff), weights, G.scalar(0));
  }
  const cw = G.cumsum(w, 1);
  const target = G.mul(G.slice(cw, [0, V - 1], [R, V]), col((d) => d.u));
  const passed = G.sum(G.astype(G.bin("mlx_less_equal", cw, target), MLX_DTYPE.i32), 1);
  const drawn = G.bin("mlx_minimum", passed, G.data(Int32Array.from(draws, () => V - 1), [R], MLX_DTYPE.i32));
  const isGreedy = G.data(Uint8Array.from(draws, (d) => (d.temperature === 0 ? 1 : 0)), [R], MLX_DTYPE.bool);
  return G.astype(G.where(isGreedy, greedy, drawn), MLX_DTYPE.i32);
}
