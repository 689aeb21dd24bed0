// The check both backends' pipelined decode must pass: greedy tokens of three requests through the scheduler's
// pipelined loop (batched, one of them stopped early by a stop token) equal those of plain steps, each token read
// back before the next step is recorded.
import { expect } from "bun:test";
import { forwardBatch } from "../../src/engine/forward_batch.ts";
import { cacheForTokens } from "../../src/engine/generate.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { Scheduler } from "../../src/engine/scheduler.ts";
import { tokenModel } from "../../src/engine/session.ts";
import type { Model } from "../../src/models/model.ts";
import { request } from "../engine/scheduler_harness.ts";

export function argmaxOf(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

export function expectPipelinedGreedyLikePlain(model: Model): void {
  const prompts = [
    Array.from({ length: 23 }, (_, i) => (i * 37 + 5) % model.vocabSize),
    Array.from({ length: 9 }, (_, i) => (i * 11 + 2) % model.vocabSize),
    Array.from({ length: 14 }, (_, i) => (i * 53 + 7) % model.vocabSize),
  ];
  const plain = prompts.map((p) => {
    const cache = cacheForTokens(model, 64);
    const seq = new Sequence();
    const out: number[] = [];
    let r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.from(p) }]);
    for (let i = 0; i < 12; i++) {
      const t = argmaxOf(r.logits);
      out.push(t);
      r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.of(t) }]);
    }
    cache.dispose();
    return out;
  });
  const cache = new KvCache(model.backend, model.layers, { blockSize: 16, numBlocks: 12 });
  const base = tokenModel(model, cache);
  let launches = 0;
  const counted = { ...base, launchDraw: (...a: Parameters<NonNullable<typeof base.launchDraw>>) => (launches++, base.launchDraw!(...a)) };
  const got = new Map<string, number[]>();
  const done = new Map<string, string>();
  const sched = new Scheduler(counted, { maxRunning: 3, maxWaiting: 8, prefillChunk: 64, prefixCache: true }, (e) => {
    if (e.type === "delta") got.set(e.id, [...(got.get(e.id) ?? []), ...e.tokenIds]);
    if (e.type === "done") done.set(e.id, e.finishReason);
    if (e.type === "error") throw new Error(e.message);
  });
  sched.submit(request("a", prompts[0]!, 12, { ignoreEos: true }));
  sched.submit(request("b", prompts[1]!, 7, { ignoreEos: true }));
  sched.submit(request("c", prompts[2]!, 12, { ignoreEos: true, stopTokenIds: [plain[2]![5]!] }));
  while (sched.step());
  expect(got.get("a")).toEqual(plain[0]!);
  expect(got.get("b")).toEqual(plain[1]!.slice(0, 7));
  expect(got.get("c")).toEqual(plain[2]!.slice(0, plain[2]!.indexOf(plain[2]![5]!)));
  expect([...done.values()].sort()).toEqual(["length", "length", "stop"]);
  expect(launches).toBeGreaterThanOrEqual(12);
  cache.dispose();
}
