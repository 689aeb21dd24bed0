// What the mlx and native backends' pipelined decode tests share: the greedy check (tokens of three requests through
// the scheduler's pipelined loop, batched, one of them stopped early by a stop token, equal those of plain steps,
// each token read back before the next step is recorded) and the sampling settings and logits the drawn tokens are
// compared on.
import { expect } from "bun:test";
import { forwardBatch } from "../../src/engine/forward_batch.ts";
import { cacheForTokens, generate } from "../../src/engine/generate.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { Scheduler, type SchedulerModel } from "../../src/engine/scheduler.ts";
import { tokenModel } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING } from "../../src/engine/types.ts";
import type { Model } from "../../src/models/model.ts";
import { request } from "../engine/scheduler_harness.ts";
import { randn } from "./helpers.ts";

/** Sampling settings a draw where the logits are must follow as the host sampler does. */
export const DRAW_SETTINGS = [
  { temperature: 0 },
  { temperature: 0.7 },
  { temperature: 1, topP: 0.9 },
  { temperature: 0.6, topK: 40 },
  { temperature: 1.5, minP: 0.05 },
  { temperature: 0.8, topP: 0.95, topK: 20, minP: 0.02 },
  { temperature: 1, topK: 1 },
];

/** R rows of V logits with a few strong tokens over a long tail, as a language model's. */
export function drawLogits(R: number, V: number, seed: number): Float32Array {
  return randn(R * V, seed).map((v, i) => v * 2 + (i % V < 6 ? 6 - (i % V) : 0));
}

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

/**
 * A JSON-schema request (the built-in model describing a package) through model; with `count`, its forwardDraw
 * counts the rows drawn through a mask. Returns the text and that count.
 */
export function jsonSchemaRun(model: SchedulerModel, temperature: number, count: boolean): { text: string; masked: number } {
  let masked = 0;
  const m = count
    ? { ...model, forwardDraw: (...a: Parameters<NonNullable<typeof model.forwardDraw>>) => ((masked += a[2].filter((d) => d.allowed).length), model.forwardDraw!(...a)) }
    : model;
  const out = generate(m, {
    messages: [{ role: "user", content: "Describe the package curl as JSON." }],
    maxTokens: 60,
    sampling: { ...DEFAULT_SAMPLING, temperature, seed: 9 },
    stop: [],
    stopTokenIds: [],
    jsonSchema: {
      type: "object",
      properties: { name: { type: "string" }, size: { type: "integer" }, tags: { type: "array", items: { type: "string" } } },
      required: ["name", "size"],
    },
  });
  return { text: out.text, masked };
}

/**
 * Sampled requests: run(onDevice, sampling) gives a request's token ids with its rows drawn where the logits are or
 * by the host; both must match, and differ from greedy (the draws did something).
 */
export function expectSampledLikeHost(run: (onDevice: boolean, sampling: typeof DEFAULT_SAMPLING) => number[]): void {
  for (const s of [
    { temperature: 0.8, topP: 0.9, seed: 5 },
    { temperature: 1.2, topK: 20, minP: 0.02, seed: 6 },
  ]) {
    const sampling = { ...DEFAULT_SAMPLING, topP: 1, topK: 0, minP: 0, ...s };
    const host = run(false, sampling);
    expect(run(true, sampling)).toEqual(host);
    expect(host).not.toEqual(run(false, { ...sampling, temperature: 0 }));
  }
}
