// What the sampled speculative tests share: the target's own distribution over its first three sampled tokens,
// and the check of N seeded requests' outcomes against it.
import { expect } from "bun:test";
import { forwardBatch } from "../../src/engine/forward_batch.ts";
import { cacheForTokens } from "../../src/engine/generate.ts";
import { Sequence } from "../../src/engine/kv/kv_cache.ts";
import type { Model } from "../../src/models/model.ts";

/** Softmax at temperature t over the k largest logits of row (ties to the lower id): the target alone. */
export function topKDistribution(row: Float32Array, k: number, t: number): Map<number, number> {
  const ids = [...row.keys()].sort((i, j) => row[j]! - row[i]! || i - j).slice(0, k);
  const w = ids.map((i) => Math.exp((row[i]! - row[ids[0]!]!) / t));
  const z = w.reduce((x, y) => x + y, 0);
  return new Map(ids.map((id, j) => [id, w[j]! / z]));
}

/**
 * The exact joint distribution of the first three tokens (t1, t2, t3) the target alone samples after prompt at
 * temperature t and top_k k, keyed "t1,t2,t3", from its logits after each prefix.
 */
export function targetJointDistribution(model: Model, prompt: readonly number[], k: number, t: number): Map<string, number> {
  const cache = cacheForTokens(model, prompt.length + 8);
  const next = (ids: number[]) => {
    const seq = new Sequence();
    const r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.from(ids) }]);
    cache.release(seq);
    return topKDistribution(r.logits, k, t);
  };
  const expected = new Map<string, number>();
  for (const [a, pa] of next([...prompt]))
    for (const [b, pb] of next([...prompt, a]))
      for (const [c, pc] of next([...prompt, a, b])) expected.set(`${a},${b},${c}`, pa * pb * pc);
  cache.dispose();
  return expected;
}

/**
 * Every observed outcome is one the target can produce; a chi-square test at p > 0.001 (cells expected fewer than
 * 5 times pooled; the quantile by Wilson-Hilferty) over more than 10 cells; total variation under 0.08 (sampling
 * noise alone gives about 0.04 at N = 2000 over 27 cells).
 */
export function expectTargetDistribution(expected: Map<string, number>, observed: Map<string, number>, N: number): void {
  for (const key of observed.keys()) expect(expected.has(key)).toBe(true);
  let chi = 0;
  let cells = 0;
  let poolE = 0;
  let poolO = 0;
  let tv = 0;
  for (const [key, p] of expected) {
    const e = p * N;
    const o = observed.get(key) ?? 0;
    tv += Math.abs(o / N - p) / 2;
    if (e < 5) {
      poolE += e;
      poolO += o;
      continue;
    }
    chi += (o - e) ** 2 / e;
    cells++;
  }
  if (poolE > 0) {
    chi += (poolO - poolE) ** 2 / poolE;
    cells++;
  }
  const df = cells - 1;
  const z = 3.0902;
  const critical = df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
  expect(cells).toBeGreaterThan(10);
  expect(chi).toBeLessThan(critical);
  expect(tv).toBeLessThan(0.08);
}
