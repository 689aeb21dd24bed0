// Prefix caching and hybrids: a Gated DeltaNet layer's recurrent state cannot be cut back to a shared prefix, so
// the prefix cache keeps snapshots of it at the ends of prompt chunks. A request that shares a cached prefix
// restores the snapshot beside the cached K/V blocks and prefills only the rest; its greedy tokens must equal a
// cold run's (one without any prefix cache), whether the whole prompt repeats, only part of it does, or other
// sequences run beside it. Snapshots are charged to the KV budget and leave with their block.
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

interface Setup {
  prefixCache?: boolean;
  prefillChunk?: number;
  numBlocks?: number;
}

function setup(model: Model, opts: Setup = {}) {
  const cache = new KvCache(model.backend, model.layers, {
    blockSize: BLOCK,
    numBlocks: opts.numBlocks ?? 64,
    codec: "f32",
    windowed: true,
    sizing: { sequences: 4, stepTokens: 64 },
  });
  const events: EngineEvent[] = [];
  const config = { maxRunning: 4, maxWaiting: 16, prefillChunk: opts.prefillChunk ?? 64, prefixCache: opts.prefixCache ?? true };
  const sched = new Scheduler(tokenModel(model, cache), config, (e) => events.push(e));
  let adopted = 0;
  const adopt = cache.adopt.bind(cache);
  cache.adopt = (...args: Parameters<KvCache["adopt"]>) => {
    if (args[1].blocks > 0) adopted++;
    return adopt(...args);
  };
  const result = (id: string) => {
    const done = events.find((e) => e.type === "done" && e.id === id) as Extract<EngineEvent, { type: "done" }>;
    const err = events.find((e) => e.type === "error" && e.id === id);
    if (err) throw new Error(JSON.stringify(err));
    return { tokens: events.flatMap((e) => (e.type === "delta" && e.id === id ? e.tokenIds : [])), cached: done.usage.cachedTokens };
  };
  const submit = (...reqs: { id: string; prompt: number[]; maxTokens?: number }[]) => {
    for (const r of reqs) sched.submit(request(r.id, r.prompt, r.maxTokens));
  };
  const run = (...reqs: { id: string; prompt: number[]; maxTokens?: number }[]) => {
    submit(...reqs);
    while (sched.hasWork) sched.step();
    return reqs.map((r) => result(r.id));
  };
  return { sched, cache, run, submit, result, adopted: () => adopted };
}

function request(id: string, prompt: number[], maxTokens = 8): GenerateRequest {
  return { id, model: "m", prompt, maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], stopTokenIds: [], ignoreEos: true };
}

const prompt = (n: number, seed = 1) => Array.from({ length: n }, (_, i) => (seed * 37 + i * 11) % 300);

describe("prefix caching with hybrid models", () => {
  const hybrid = loadModel(getBackend(), openModelDir(join(FIXTURES, "hybrid", "qwen3_5_dense")));
  /** Greedy tokens of a run without a prefix cache (the whole prompt in one chunk). */
  const cold = (p: number[], maxTokens = 8) => setup(hybrid, { prefixCache: false, prefillChunk: 512 }).run({ id: "cold", prompt: p, maxTokens })[0]!.tokens;
  const p = prompt(70);
  const coldP = cold(p);

  test("a repeated prompt restores the snapshot after its last whole block and gives the cold run's tokens", () => {
    const h = setup(hybrid);
    expect(h.sched.prefix).not.toBeNull();
    const [first] = h.run({ id: "a", prompt: p });
    const [again] = h.run({ id: "b", prompt: p });
    expect(coldP.length).toBe(8);
    expect(first).toEqual({ tokens: coldP, cached: 0 });
    expect(again).toEqual({ tokens: coldP, cached: 64 });
    expect(h.adopted()).toBe(1);
  });

  test("partial hits: a prompt that leaves the cached one after a chunk's end or mid-block", () => {
    const h = setup(hybrid, { prefillChunk: 32 });
    h.run({ id: "a", prompt: p });
    // Chunks of 32 keep snapshots after tokens 32 and 64 (the last whole block before the final token).
    const mid = [...p.slice(0, 40), 5, 6, 7, 8, 9];
    const late = [...p.slice(0, 64), 5, 6, 7];
    const [m] = h.run({ id: "m", prompt: mid });
    const [l] = h.run({ id: "l", prompt: late });
    expect(m).toEqual({ tokens: cold(mid), cached: 32 });
    expect(l).toEqual({ tokens: cold(late), cached: 64 });
    // A longer prompt extending the first (a conversation's next turn) starts from its last snapshot.
    const next = [...p, ...prompt(30, 7)];
    const [n] = h.run({ id: "n", prompt: next });
    expect(n).toEqual({ tokens: cold(next), cached: 64 });
  });

  test("a hit while other sequences prefill and decode gives the cold run's tokens", () => {
    const h = setup(hybrid, { prefillChunk: 32 });
    h.run({ id: "a", prompt: p });
    const other = prompt(90, 3);
    h.submit({ id: "x", prompt: other, maxTokens: 20 });
    h.sched.step();
    h.sched.step();
    h.submit({ id: "b", prompt: p }, { id: "y", prompt: prompt(50, 5), maxTokens: 6 });
    while (h.sched.hasWork) h.sched.step();
    expect(h.result("b")).toEqual({ tokens: coldP, cached: 64 });
    expect(h.result("x").tokens).toEqual(cold(other, 20));
    expect(h.result("y").tokens).toEqual(cold(prompt(50, 5), 6));
  });

  test("twin prompts batched together, and their repeat, each give the cold run's tokens", () => {
    const h = setup(hybrid);
    const twins = h.run({ id: "d", prompt: p }, { id: "e", prompt: p });
    for (const t of twins) expect(t).toEqual({ tokens: coldP, cached: 0 });
    const repeats = h.run({ id: "f", prompt: p }, { id: "g", prompt: p });
    for (const t of repeats) expect(t).toEqual({ tokens: coldP, cached: 64 });
  });

  test("snapshots are charged to the KV budget and evicted with their block", () => {
    const h = setup(hybrid, { numBlocks: 16 });
    expect(h.cache.snapshotBlocks).toBeGreaterThan(0);
    h.run({ id: "a", prompt: p });
    // Four cached blocks of the 70-token prompt and one snapshot after the fourth.
    expect(h.cache.allocator.numUsed).toBe(4 + h.cache.snapshotBlocks);
    // Other prompts fill the budget: the first one's entries (the oldest) go, snapshot included.
    for (let i = 0; i < 4; i++) h.run({ id: `fill${i}`, prompt: prompt(70, 10 + i) });
    expect(h.cache.allocator.numUsed).toBeLessThanOrEqual(16);
    const [again] = h.run({ id: "b", prompt: p });
    expect(again).toEqual({ tokens: coldP, cached: 0 });
  });

  test("the same setup on a plain transformer reuses the prefix as before", () => {
    const plain = loadModel(getBackend(), openModelDir(join(FIXTURES, "qwen3")));
    const h = setup(plain);
    expect(h.cache.snapshotBlocks).toBe(0);
    const [first] = h.run({ id: "a", prompt: p });
    const [again] = h.run({ id: "b", prompt: p });
    expect(first!.cached).toBe(0);
    expect(again!.cached).toBe(64);
    expect(again!.tokens).toEqual(first!.tokens);
  });
});
