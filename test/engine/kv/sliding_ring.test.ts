// Windowed KV caches: sliding-window layers keep only the blocks their window still reads.
//  - bookkeeping on a fake backend: pool sizes, the memory split, blocks given back as the window moves;
//  - a simulation of every write and read of random steps: each key a query reads through the window tables
//    must be the one written for that position (no later write of any sequence landed on its slot);
//  - the Gemma 3 fixture (window 6, 4 layers) on the reference TypeScript backend and the native one: a long
//    decode far beyond what the window pools hold gives exactly the logits of the plain cache, and the
//    transformers reference logits are still matched;
//  - the scheduler on a windowed cache answers like it does on a plain one, with prefix caching reusing the
//    sliding layers' blocks it kept, and only where they cover the window of the first query after the prefix.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Backend } from "../../../src/backend/backend.ts";
import { getBackend } from "../../../src/backend/index.ts";
import { forwardBatch, logitsRow } from "../../../src/engine/forward_batch.ts";
import { KvCache, Sequence, type StepEntry } from "../../../src/engine/kv/kv_cache.ts";
import { Scheduler, type SchedulerModel } from "../../../src/engine/scheduler.ts";
import { DEFAULT_SAMPLING, type EngineConfig, type EngineEvent, type GenerateRequest } from "../../../src/engine/types.ts";
import { RmlxError } from "../../../src/errors.ts";
import { fakeBackend } from "./fake_backend.ts";
import { openModelDir } from "../../../src/io/model_dir.ts";
import { SafetensorsFile } from "../../../src/io/safetensors.ts";
import type { LayerCacheSpec, Model } from "../../../src/models/model.ts";
import { loadModel } from "../../../src/models/registry.ts";
import { RefBackend } from "../../models/ref_backend.ts";
import { readF32, relError } from "../../models/reference.ts";

// One full layer, two sliding layers of window 6 (the cache keeps the largest window for all of them).
const LAYERS: LayerCacheSpec[] = [
  { kvHeads: 2, headDim: 8, window: 0 },
  { kvHeads: 2, headDim: 8, window: 6 },
  { kvHeads: 2, headDim: 8, window: 5 },
];

describe("windowed KvCache bookkeeping", () => {
  test("without `windowed`, or without full layers, every layer lives in the main pools", () => {
    const plain = new KvCache(fakeBackend(), LAYERS, { numBlocks: 10, blockSize: 4 });
    expect(plain.windowed).toBe(false);
    expect(plain.pools.map((p) => p.numBlocks)).toEqual([10, 10, 10]);
    const allSliding = new KvCache(fakeBackend(), LAYERS.slice(1), { numBlocks: 10, blockSize: 4, windowed: true });
    expect(allSliding.windowed).toBe(false);
  });

  test("pool sizes from numBlocks and sizing; the memory budget counts both pools", () => {
    const c = new KvCache(fakeBackend(), LAYERS, { numBlocks: 100, blockSize: 4, windowed: true, sizing: { sequences: 2, stepTokens: 8 } });
    expect(c.window).toBe(6);
    // a decode step at length L reads positions L-5..L: at most floor((6 + 1 - 2) / 4) + 2 = 3 blocks
    expect(c.windowBlocksPerSequence(1)).toBe(3);
    // 8 tokens: positions L-5..L+7 span 13 positions, at most 5 blocks of 4
    expect(c.windowBlocksPerSequence(8)).toBe(5);
    // 2 sequences x (3 + 1) + 8 / 4
    expect(c.pools.map((p) => p.numBlocks)).toEqual([100, 10, 10]);
    // per token: 2 (k, v) x 2 heads x 8 dims x 4 bytes = 128 per layer; blocks of 4 tokens
    expect(c.spaces.map((s) => s.bytesPerBlock)).toEqual([512, 1024]);
    expect(c.memoryBytes).toBe(100 * 512 + 10 * 1024);

    const budget = 100 * 512 + 10 * 1024 + 700;
    const m = new KvCache(fakeBackend(), LAYERS, { memoryBytes: budget, blockSize: 4, windowed: true, sizing: { sequences: 2, stepTokens: 8 } });
    expect(m.numBlocks).toBe(101);
    expect(m.windowAllocator!.numBlocks).toBe(10);
    expect(m.memoryBytes).toBeLessThanOrEqual(budget);
    // a budget too small for the sizing: both pools get the same number of blocks
    const small = new KvCache(fakeBackend(), LAYERS, { memoryBytes: 8 * 1536 + 5, blockSize: 4, windowed: true, sizing: { sequences: 2, stepTokens: 8 } });
    expect([small.numBlocks, small.windowAllocator!.numBlocks]).toEqual([8, 8]);
    expect(() => new KvCache(fakeBackend(), LAYERS, { memoryBytes: 1000, windowed: true })).toThrow(RmlxError);
  });

  test("window blocks are given back as the window moves on, and all of them on release", () => {
    const c = new KvCache(fakeBackend(), LAYERS, { numBlocks: 64, blockSize: 4, windowed: true });
    const wa = c.windowAllocator!;
    const s = new Sequence();
    const step = (n: number) => {
      c.reserve(s, n);
      const e: StepEntry[] = [{ seq: s, tokens: new Int32Array(n) }];
      c.buildStep(e);
      c.advance(e);
    };
    step(10); // positions 0..9 -> logical blocks 0..2; the next query (10) reads 5..10: blocks 1..2 stay
    expect(s.blocks.length).toBe(3);
    expect([s.windowStart, s.windowBlocks.length]).toEqual([1, 2]);
    expect(wa.numUsed).toBe(2);
    for (let i = 0; i < 100; i++) {
      step(1);
      expect(s.windowBlocks.length).toBeLessThanOrEqual(c.windowBlocksPerSequence(1));
    }
    expect(s.length).toBe(110);
    expect(s.blocks.length).toBe(28);
    // next query 110 reads 105..110: blocks 26..27
    expect([s.windowStart, s.windowBlocks.length]).toEqual([26, 2]);
    expect(wa.numUsed).toBe(2);
    c.release(s);
    expect(wa.numUsed).toBe(0);
    expect(c.allocator.numUsed).toBe(0);
  });

  test("the window pools running out is overloaded, all or nothing", () => {
    const c = new KvCache(fakeBackend(), LAYERS, { numBlocks: 64, blockSize: 4, windowed: true, sizing: { sequences: 1, stepTokens: 4 } });
    expect(c.windowAllocator!.numBlocks).toBe(5);
    const a = new Sequence();
    c.reserve(a, 12); // window blocks 0..2
    const b = new Sequence();
    expect(() => c.reserve(b, 12)).toThrow(RmlxError);
    expect(b.blocks.length + b.windowBlocks.length).toBe(0);
    expect(c.allocator.numUsed).toBe(3);
    // the admission form: main blocks for everything, window blocks for the first 4 tokens only
    c.reserve(b, 12, 4);
    expect([b.blocks.length, b.windowBlocks.length]).toEqual([3, 1]);
  });

  test("fork shares window blocks; a write into a shared partial block copies it in the window pools too", () => {
    const copies: [number, number][] = [];
    const c = new KvCache(fakeBackend(copies), LAYERS, { numBlocks: 16, blockSize: 4, windowed: true });
    const a = new Sequence();
    c.reserve(a, 6);
    c.advance([{ seq: a, tokens: new Int32Array(6) }]);
    const b = c.fork(a);
    expect(b.windowBlocks).toEqual(a.windowBlocks);
    c.reserve(b, 1);
    // main block 1 copied in the full layer's pool, window block 1 in both sliding layers' pools
    expect(copies).toEqual([
      [1, 2],
      [1, 2],
      [1, 2],
    ]);
    expect(b.windowBlocks[1]).not.toBe(a.windowBlocks[1]!);
    c.release(a);
    c.release(b);
    expect(c.windowAllocator!.numUsed).toBe(0);
  });
});

/** Deterministic pseudo-random integers in [0, n). */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return Math.floor((s / 4294967296) * n);
  };
}

describe("windowed reads and writes, simulated", () => {
  test.each([
    { bs: 4, window: 6, seed: 1 },
    { bs: 4, window: 4, seed: 2 },
    { bs: 16, window: 5, seed: 3 },
    { bs: 2, window: 1, seed: 4 },
  ])("block size $bs, window $window: every key read is the one written for its position", ({ bs, window, seed }) => {
    const layers: LayerCacheSpec[] = [
      { kvHeads: 1, headDim: 1, window: 0 },
      { kvHeads: 1, headDim: 1, window },
    ];
    const maxStep = 9;
    const c = new KvCache(fakeBackend(), layers, { numBlocks: 512, blockSize: bs, windowed: true, sizing: { sequences: 3, stepTokens: maxStep } });
    const pools = c.windowAllocator!.numBlocks;
    // What each window-pool slot holds: (sequence id, position), or empty.
    const owner = new Map<number, string>();
    const rand = rng(seed);
    let nextId = 0;
    const live: { id: number; seq: Sequence }[] = [];
    let reads = 0;
    for (let round = 0; round < 400; round++) {
      if (live.length < 3 && rand(3) === 0) live.push({ id: nextId++, seq: new Sequence() });
      if (live.length > 0 && rand(40) === 0) c.release(live.splice(rand(live.length), 1)[0]!.seq);
      if (live.length === 0) continue;
      // decode steps of one token for all but at most one sequence, whose step adds up to maxStep tokens
      const big = rand(live.length);
      const entries: StepEntry[] = live.map((l, i) => ({ seq: l.seq, tokens: new Int32Array(i === big ? 1 + rand(maxStep) : 1) }));
      for (const e of entries) c.reserve(e.seq, e.tokens.length);
      const built = c.buildStep(entries);
      const w = built.windowed!;
      for (let t = 0; t < built.tokens.length; t++) {
        const s = w.batch.tokenSeq[t]!;
        owner.set(w.slots[t]!, `${live[s]!.id}:${w.batch.positions[t]}`);
      }
      for (let t = 0; t < built.tokens.length; t++) {
        const s = w.batch.tokenSeq[t]!;
        const p = w.batch.positions[t]!;
        for (let j = Math.max(0, p - window + 1); j <= p; j++) {
          const blk = w.batch.blockTables[s * w.batch.maxBlocks + Math.floor(j / bs)]!;
          expect(blk).toBeGreaterThanOrEqual(0);
          expect(blk).toBeLessThan(pools);
          expect(owner.get(blk * bs + (j % bs))).toBe(`${live[s]!.id}:${j}`);
          reads++;
        }
        // every table entry up to the query's block is a valid block (kernels check them)
        for (let b = 0; b <= Math.floor(p / bs); b++) expect(w.batch.blockTables[s * w.batch.maxBlocks + b]!).toBeLessThan(pools);
      }
      c.advance(entries);
      for (const l of live) expect(l.seq.windowBlocks.length).toBeLessThanOrEqual(c.windowBlocksPerSequence(1));
    }
    expect(reads).toBeGreaterThan(1000);
    expect(Math.max(...live.map((l) => l.seq.length), 0)).toBeGreaterThan(pools * bs);
  });
});

const GEMMA3 = join(import.meta.dir, "../../fixtures/models/gemma3");

interface PromptRef {
  ids: number[];
  logits_key: string;
  greedy: number[];
}

/** Logits of every token of `ids`, fed in prefill chunks of `chunk` and then single decode tokens from `decodeFrom`. */
function runAll(model: Model, cache: KvCache, ids: number[], chunk: number, decodeFrom: number): Float32Array {
  const V = model.vocabSize;
  const out = new Float32Array(ids.length * V);
  const seq = new Sequence();
  for (let i = 0; i < ids.length; ) {
    const n = i < decodeFrom ? Math.min(chunk, decodeFrom - i) : 1;
    const r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.from(ids.slice(i, i + n)) }], "all");
    out.set(r.logits, i * V);
    i += n;
  }
  cache.release(seq);
  return out;
}

describe.each(["ref", "native"])("gemma3 fixture on the %s backend", (kind) => {
  const be: Backend = kind === "ref" ? new RefBackend() : getBackend();
  const model = loadModel(be, openModelDir(GEMMA3));
  const ref = JSON.parse(readFileSync(join(GEMMA3, "reference.json"), "utf8")) as { prompts: PromptRef[] };
  const refTensors = SafetensorsFile.open(join(GEMMA3, "reference.safetensors"));
  const V = model.vocabSize;
  // Sliding pools sized for one sequence prefilling 3 tokens a step: far fewer blocks than the context.
  const windowed = () => new KvCache(be, model.layers, { numBlocks: 64, blockSize: 4, windowed: true, sizing: { sequences: 1, stepTokens: 3 } });
  const plain = () => new KvCache(be, model.layers, { numBlocks: 64, blockSize: 4 });

  test("the window pools are small", () => {
    const c = windowed();
    expect(c.windowed).toBe(true);
    expect(c.window).toBe(6);
    // 1 x (floor((6 - 1) / 4) + 2 + 1) + ceil(3 / 4)
    expect(c.windowAllocator!.numBlocks).toBe(5);
    expect(model.layers.map((l) => l.window)).toEqual([6, 6, 6, 0]);
    expect(c.pools.map((p) => p.numBlocks)).toEqual([5, 5, 5, 64]);
  });

  test("a 29-token prompt and a 130-token decode give exactly the plain cache's logits", () => {
    const p = ref.prompts[0]!;
    expect(p.ids.length).toBe(29);
    // the prompt, its greedy continuation, then a deterministic tail: 159 tokens, 8x the window pools' 20 slots
    const ids = [...p.ids, ...p.greedy];
    while (ids.length < 159) ids.push((ids[ids.length - 1]! * 7 + ids.length) % V);
    const a = runAll(model, windowed(), ids, 3, 29);
    const b = runAll(model, plain(), ids, 3, 29);
    expect(a.every(Number.isFinite)).toBe(true);
    expect(a).toEqual(b);
  });

  test("both prompts still match the transformers reference through the window pools", () => {
    for (const p of ref.prompts) {
      const got = runAll(model, windowed(), p.ids, 3, p.ids.length);
      expect(relError(got, readF32(refTensors, p.logits_key).data, V)).toBeLessThan(1e-4);
    }
  });

  test("two sequences batched together, one prefilling while the other decodes", () => {
    const [pa, pb] = ref.prompts as [PromptRef, PromptRef];
    const run = (cache: KvCache) => {
      const sa = new Sequence();
      const sb = new Sequence();
      const rows: Float32Array[] = [];
      let ia = 0;
      let ib = 0;
      const a = [...pa.ids, ...pa.greedy, ...pa.greedy];
      const b = [...pb.ids, ...pb.greedy, ...pb.greedy, ...pb.greedy];
      while (ia < a.length || ib < b.length) {
        const entries = [];
        if (ia < a.length) {
          const n = ia < pa.ids.length ? Math.min(3, pa.ids.length - ia) : 1;
          entries.push({ seq: sa, tokens: Int32Array.from(a.slice(ia, ia + n)) });
          ia += n;
        }
        if (ib < b.length) {
          entries.push({ seq: sb, tokens: Int32Array.of(b[ib]!) });
          ib++;
        }
        const r = forwardBatch(model, cache, entries);
        for (let i = 0; i < entries.length; i++) rows.push(logitsRow(r, i).slice());
      }
      return rows;
    };
    const c = new KvCache(be, model.layers, { numBlocks: 64, blockSize: 4, windowed: true, sizing: { sequences: 2, stepTokens: 3 } });
    const got = run(c);
    expect(got).toEqual(run(plain()));
    expect(c.windowAllocator!.numUsed).toBeLessThanOrEqual(2 * c.windowBlocksPerSequence(1));
  });
});

describe("scheduler on a windowed cache", () => {
  const be = getBackend();
  const model = loadModel(be, openModelDir(GEMMA3));
  const schedulerModel = (cache: KvCache): SchedulerModel => ({
    cache,
    contextLength: 512,
    eosTokenIds: [],
    encode: (req) => ({ ids: [...(req.prompt as number[])], startsInReasoning: false }),
    forward: (step, rows) => be.scope(() => be.toFloat32(model.forward(cache.forwardStep(step, rows)))),
    newDetokenizer: () => ({ push: () => "", flush: () => "" }),
    newStopFilter: () => ({ push: (t: string) => ({ text: t }), flush: () => "" }),
    tokenBytes: () => new Uint8Array(0),
  });
  const base: EngineConfig = { kvMemoryBytes: 0, maxRunning: 3, maxWaiting: 16, prefillChunk: 16, prefixCache: true };
  const req = (id: string, prompt: number[], maxTokens: number): GenerateRequest => ({
    id,
    model: "m",
    prompt,
    maxTokens,
    sampling: { ...DEFAULT_SAMPLING, temperature: 0 },
    stop: [],
    stopTokenIds: [],
  });
  // Five prompts sharing their first 30 tokens (7 full blocks of 4, 5 windows of 6), then tails of their own.
  const shared = Array.from({ length: 30 }, (_, i) => (i * 17 + 3) % 400);
  const prompts = [0, 1, 2, 3, 4].map((s) => [...shared, ...Array.from({ length: 3 + 7 * s }, (_, i) => (s * 31 + i * 13) % 400)]);
  /** Submits the requests `together` (all at once) or one after another finished; returns tokens and cached counts. */
  const run = (cache: KvCache, config: EngineConfig, together: boolean) => {
    const events: EngineEvent[] = [];
    const sched = new Scheduler(schedulerModel(cache), config, (e) => events.push(e));
    const drain = () => {
      for (let i = 0; i < 10_000 && sched.hasWork; i++) sched.step();
    };
    prompts.forEach((p, i) => {
      sched.submit(req(`r${i}`, p, 40));
      if (!together) drain();
    });
    drain();
    const tokens = (id: string) => events.flatMap((e) => (e.type === "delta" && e.id === id ? e.tokenIds : []));
    const cached = (id: string) => {
      const d = events.find((e) => e.type === "done" && e.id === id) as Extract<EngineEvent, { type: "done" }>;
      return d.usage.cachedTokens;
    };
    return { tokens: prompts.map((_, i) => tokens(`r${i}`)), cached: prompts.map((_, i) => cached(`r${i}`)) };
  };
  const sizing = { sequences: base.maxRunning, stepTokens: base.prefillChunk };
  const windowed = () => new KvCache(be, model.layers, { memoryBytes: 1 << 20, blockSize: 4, windowed: true, sizing });
  const want = run(new KvCache(be, model.layers, { memoryBytes: 1 << 20, blockSize: 4 }), { ...base, prefixCache: false }, true);

  test.each([true, false])("the same greedy tokens as a plain cache without prefix caching (submitted together: %p)", (together) => {
    const w = windowed();
    const got = run(w, base, together);
    expect(want.tokens.map((t) => t.length)).toEqual([40, 40, 40, 40, 40]);
    expect(got.tokens).toEqual(want.tokens);
    expect(got.cached.some((c) => c > 0)).toBe(true);
    // nothing but the prefix cache holds blocks now
    expect(w.windowAllocator!.numUsed).toBeGreaterThan(0);
    expect(w.windowAllocator!.numUsed).toBeLessThanOrEqual(w.windowAllocator!.numBlocks);
  });

  test("window pools with room for every cached block: each later request reuses all 7 shared blocks", () => {
    const w = new KvCache(be, model.layers, { memoryBytes: 1 << 20, blockSize: 4, windowed: true });
    const got = run(w, base, false);
    expect(got.tokens).toEqual(want.tokens);
    expect(got.cached).toEqual([0, 28, 28, 28, 28]);
  });

  test("a budget too small for every request at once: preempted and recomputed, still the same tokens", () => {
    // main pools of 45 blocks (180 tokens) for 3 running requests of up to 101 tokens each; window pools of 16
    const budget = 45 * 1024 + 16 * 3072;
    const w = new KvCache(be, model.layers, { memoryBytes: budget, blockSize: 4, windowed: true, sizing });
    expect([w.numBlocks, w.windowAllocator!.numBlocks]).toEqual([45, 16]);
    let releases = 0;
    const release = w.release.bind(w);
    w.release = (seq) => {
      releases++;
      release(seq);
    };
    for (const prefixCache of [false, true]) {
      releases = 0;
      const got = run(w, { ...base, prefixCache }, true);
      expect(got.tokens).toEqual(want.tokens);
      expect(releases).toBeGreaterThan(prompts.length);
    }
  });

  test.each([
    [5, 28],
    [6, 0],
  ])("with the %i oldest window blocks given back, a match needs the window of its last blocks (cached %i)", (strip, cached) => {
    const w = new KvCache(be, model.layers, { memoryBytes: 1 << 20, blockSize: 4, windowed: true });
    const events: EngineEvent[] = [];
    const sched = new Scheduler(schedulerModel(w), base, (e) => events.push(e));
    const drain = () => {
      for (let i = 0; i < 10_000 && sched.hasWork; i++) sched.step();
    };
    sched.submit(req("a", prompts[0]!, 4));
    drain();
    // blocks 0..8 of "a" are cached in order; the next query after the 7 shared blocks (position 28) reads
    // positions 23..28, i.e. blocks 5 and 6
    expect(sched.prefix!.evict(1, strip)).toBe(strip);
    sched.submit(req("b", prompts[1]!, 40));
    drain();
    const d = events.find((e) => e.type === "done" && e.id === "b") as Extract<EngineEvent, { type: "done" }>;
    expect(d.usage.cachedTokens).toBe(cached);
    expect(events.flatMap((e) => (e.type === "delta" && e.id === "b" ? e.tokenIds : []))).toEqual(want.tokens[1]!);
  });
});
