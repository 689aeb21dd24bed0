// Prefix caching and hybrids: a Gated DeltaNet layer's recurrent state cannot be cut back to a shared prefix, so a
// hybrid's scheduler keeps no prefix cache and never adopts cached blocks, and a repeated prompt (alone, or batched
// with its twin) gives exactly the tokens of a cold run. A plain transformer with the same setup does reuse the
// prefix, which shows the setup would notice adoption.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { getBackend } from "../../src/backend/index.ts";
import { KvCache } from "../../src/engine/kv/kv_cache.ts";
import { Scheduler } from "../../src/engine/scheduler.ts";
import { tokenModel } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING, type EngineEvent, type GenerateRequest } from "../../src/engine/types.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import type { Model } from "../../src/models/model.ts";
import { loadModel } from "../../src/models/registry.ts";

const FIXTURES = join(import.meta.dir, "../fixtures/models");
const BLOCK = 16;

function setup(model: Model) {
  const cache = new KvCache(model.backend, model.layers, {
    blockSize: BLOCK,
    numBlocks: 64,
    codec: "f32",
    windowed: true,
    sizing: { sequences: 4, stepTokens: 64 },
  });
  const events: EngineEvent[] = [];
  const sched = new Scheduler(tokenModel(model, cache), { maxRunning: 4, maxWaiting: 16, prefillChunk: 64, prefixCache: true }, (e) => events.push(e));
  let adopted = 0;
  const adopt = cache.adopt.bind(cache);
  cache.adopt = (...args: Parameters<KvCache["adopt"]>) => {
    adopted++;
    return adopt(...args);
  };
  const run = (...reqs: { id: string; prompt: number[] }[]) => {
    for (const r of reqs) sched.submit(request(r.id, r.prompt));
    while (sched.hasWork) sched.step();
    return reqs.map((r) => {
      const done = events.find((e) => e.type === "done" && e.id === r.id) as Extract<EngineEvent, { type: "done" }>;
      const err = events.find((e) => e.type === "error" && e.id === r.id);
      if (err) throw new Error(JSON.stringify(err));
      return { tokens: events.flatMap((e) => (e.type === "delta" && e.id === r.id ? e.tokenIds : [])), cached: done.usage.cachedTokens };
    });
  };
  return { sched, run, adopted: () => adopted };
}

function request(id: string, prompt: number[]): GenerateRequest {
  return { id, model: "m", prompt, maxTokens: 8, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], stopTokenIds: [], ignoreEos: true };
}

const prompt = (n: number, seed = 1) => Array.from({ length: n }, (_, i) => (seed * 37 + i * 11) % 300);

describe("prefix caching with hybrid models", () => {
  const hybrid = loadModel(getBackend(), openModelDir(join(FIXTURES, "hybrid", "qwen3_5_dense")));
  const p = prompt(70);
  const cold = setup(hybrid).run({ id: "cold", prompt: p })[0]!;

  test("a hybrid keeps no prefix cache; a repeated prompt adopts nothing and repeats the cold run's tokens", () => {
    const h = setup(hybrid);
    expect(h.sched.prefix).toBeNull();
    const [first] = h.run({ id: "a", prompt: p });
    const [again] = h.run({ id: "b", prompt: p });
    // Sharing four full blocks with the earlier prompts, then going elsewhere.
    const [shared] = h.run({ id: "c", prompt: [...p.slice(0, 64), 5, 6, 7] });
    expect(first).toEqual({ tokens: cold.tokens, cached: 0 });
    expect(again).toEqual({ tokens: cold.tokens, cached: 0 });
    expect(shared!.cached).toBe(0);
    expect(h.adopted()).toBe(0);
    // The twin prompts batched together: each gets the cold run's tokens.
    const twins = h.run({ id: "d", prompt: p }, { id: "e", prompt: p });
    for (const t of twins) expect(t).toEqual({ tokens: cold.tokens, cached: 0 });
    expect(cold.tokens.length).toBe(8);
  });

  test("the same setup on a plain transformer does reuse the prefix", () => {
    const plain = loadModel(getBackend(), openModelDir(join(FIXTURES, "qwen3")));
    const h = setup(plain);
    expect(h.sched.prefix).not.toBeNull();
    const [first] = h.run({ id: "a", prompt: p });
    const [again] = h.run({ id: "b", prompt: p });
    expect(first!.cached).toBe(0);
    expect(again!.cached).toBe(64);
    expect(again!.tokens).toEqual(first!.tokens);
    expect(h.adopted()).toBeGreaterThan(0);
  });
});
