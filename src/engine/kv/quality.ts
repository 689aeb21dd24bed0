// How much a KV codec changes a model's predictions: teacher-forced next-token log-probabilities over a token
// sequence, prefilled in chunks through the paged cache (so later chunks attend to packed pages written by earlier
// ones), compared between two codecs as a mean NLL and a mean KL divergence.
import type { Model } from "../../models/model.ts";
import { forwardBatch } from "../forward_batch.ts";
import { klDivergence, logSoftmax } from "../logprobs.ts";
import type { KvCodec } from "../../quant/kv_codec.ts";
import { KvCache, Sequence } from "./kv_cache.ts";

/** Log-softmax rows [n, vocab] of the logits at every position of ids, run `chunk` tokens per step. */
export function teacherForcedLogProbs(model: Model, ids: ArrayLike<number>, codec: KvCodec | string, chunk = 64): Float64Array[] {
  const blockSize = 16;
  const cache = new KvCache(model.backend, model.layers, { blockSize, codec, numBlocks: Math.ceil(ids.length / blockSize) + 1 });
  const seq = new Sequence();
  const rows: Float64Array[] = [];
  try {
    const all = Int32Array.from(ids);
    for (let s = 0; s < all.length; s += chunk) {
      const r = forwardBatch(model, cache, [{ seq, tokens: all.subarray(s, Math.min(all.length, s + chunk)) }], "all");
      const n = r.logits.length / r.vocab;
      for (let i = 0; i < n; i++) rows.push(logSoftmax(r.logits.subarray(i * r.vocab, (i + 1) * r.vocab)));
    }
  } finally {
    cache.dispose();
  }
  return rows;
}

/** Mean negative log-likelihood of ids[i + 1] given ids[..i], over i >= from. */
export function meanNll(logProbs: readonly Float64Array[], ids: ArrayLike<number>, from = 0): number {
  let sum = 0;
  let n = 0;
  for (let i = from; i + 1 < ids.length; i++) {
    sum -= logProbs[i]![ids[i + 1]!]!;
    n++;
  }
  return sum / Math.max(n, 1);
}

/** Mean KL(p || q) of the next-token distributions, over rows >= from. */
export function meanKl(p: readonly Float64Array[], q: readonly Float64Array[], from = 0): number {
  let sum = 0;
  let n = 0;
  for (let i = from; i < p.length; i++) {
    sum += klDivergence(p[i]!, q[i]!);
    n++;
  }
  return sum / Math.max(n, 1);
}

/** Rows whose argmax differs. */
export function argmaxChanges(p: readonly Float64Array[], q: readonly Float64Array[]): number {
  const am = (x: Float64Array) => x.reduce((best, v, i) => (v > x[best]! ? i : best), 0);
  let n = 0;
  for (let i = 0; i < p.length; i++) if (am(p[i]!) !== am(q[i]!)) n++;
  return n;
}
