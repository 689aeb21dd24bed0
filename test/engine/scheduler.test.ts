import { describe, expect, test } from "bun:test";
import { KvCache, type BuiltStep } from "../../src/engine/kv/kv_cache.ts";
import type { SchedulerModel } from "../../src/engine/scheduler.ts";
import type { GenerateRequest } from "../../src/engine/types.ts";
import { harness, LETTERS, prompt, request, storeBackend } from "./scheduler_harness.ts";

const V = 32;
const EOS = 31;

/** The next token as a function of the whole context: what a real model computes, minus the arithmetic. */
function nextOf(ctx: ArrayLike<number>): number {
  let h = 7;
  for (let i = 0; i < ctx.length; i++) h = (h * 31 + ctx[i]! * (i + 1)) % 1000003;
  return h % (V - 1); // never EOS on its own
}

/** Greedy continuation computed directly on the token list: the reference. */
function reference(prompt: number[], n: number): number[] {
  const ctx = [...prompt];
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = nextOf(ctx);
    out.push(t);
    ctx.push(t);
  }
  return out;
}

/**
 * A model whose "KV cache" stores the token ids themselves: logits for a row are computed from the context read
 * back through the step's block table, so any mistake in block tables, prefix sharing or preemption shows up as
 * a wrong token.
 */
class ContextModel implements SchedulerModel {
  readonly cache: KvCache;
  readonly store: Int32Array;
  steps = 0;
  tokensRun = 0;
  /** Prompts end inside an open reasoning section, with tags as single tokens. */
  reasoning = false;
  reasoningTokens?: { open: number[]; close: number[] };
  readonly eosTokenIds = [EOS];

  constructor(
    numBlocks: number,
    readonly blockSize = 4,
    readonly contextLength = 4096,
  ) {
    this.store = new Int32Array(numBlocks * blockSize).fill(-1);
    this.cache = new KvCache(storeBackend(this.store, blockSize), [{ kvHeads: 1, headDim: 1, window: 0 }], { blockSize, numBlocks });
  }

  encode(req: GenerateRequest) {
    return { ids: req.prompt as number[], startsInReasoning: this.reasoning };
  }

  forward(step: BuiltStep, logitRows: Int32Array): Float32Array {
    this.steps++;
    this.tokensRun += step.tokens.length;
    const { batch, slots, tokens } = step;
    for (let t = 0; t < tokens.length; t++) this.store[slots[t]!] = tokens[t]!;
    const out = new Float32Array(logitRows.length * V);
    for (let r = 0; r < logitRows.length; r++) {
      const row = logitRows[r]!;
      const s = batch.tokenSeq[row]!;
      const len = batch.positions[row]! + 1;
      const ctx: number[] = [];
      for (let p = 0; p < len; p++) {
        const block = batch.blockTables[s * batch.maxBlocks + Math.floor(p / this.blockSize)]!;
        ctx.push(this.store[block * this.blockSize + (p % this.blockSize)]!);
      }
      if (ctx.includes(-1)) throw new Error("read an unwritten cache slot");
      out[r * V + nextOf(ctx)] = 10;
      if (ctx.length > 0 && ctx[ctx.length - 1] === 99) out[r * V + EOS] = 20;
    }
    return out;
  }

  newDetokenizer = LETTERS.newDetokenizer;
  newStopFilter = LETTERS.newStopFilter;
  tokenBytes = LETTERS.tokenBytes;
}

describe("scheduler", () => {
  test("one request decodes the reference continuation and stops at max tokens", () => {
    const h = harness(new ContextModel(64));
    h.sched.submit(request("a", prompt(1, 10), 12));
    h.run();
    expect(h.tokensOf("a")).toEqual(reference(prompt(1, 10), 12));
    const done = h.doneOf("a")!;
    expect(done.finishReason).toBe("length");
    expect(done.usage).toEqual({ promptTokens: 10, completionTokens: 12, cachedTokens: 0 });
  });

  test("many requests batched together give each one its own reference output", () => {
    const model = new ContextModel(256);
    const h = harness(model, { maxRunning: 5, prefillChunk: 16 });
    const prompts = Array.from({ length: 12 }, (_, i) => prompt(i + 2, 3 + i * 4));
    prompts.forEach((p, i) => h.sched.submit(request(`r${i}`, p, 9)));
    h.run();
    prompts.forEach((p, i) => expect(h.tokensOf(`r${i}`)).toEqual(reference(p, 9)));
    // Batched: far fewer steps than running them one after another (each needs >= 9 decode steps).
    expect(model.steps).toBeLessThan(12 * 9);
  });

  test("prompt chunks and decode tokens share steps", () => {
    const model = new ContextModel(256);
    const h = harness(model, { prefillChunk: 8 });
    h.sched.submit(request("short", prompt(3, 4), 20));
    h.sched.step();
    h.sched.submit(request("long", prompt(4, 64), 2));
    h.run();
    // 64 tokens in chunks of 8 take 8 steps, during which the short one keeps decoding.
    expect(h.tokensOf("short")).toEqual(reference(prompt(3, 4), 20));
    expect(h.tokensOf("long")).toEqual(reference(prompt(4, 64), 2));
    expect(model.steps).toBeLessThanOrEqual(21);
  });

  test("a shared prompt prefix is served from the prefix cache and skips its prefill", () => {
    const model = new ContextModel(128);
    const h = harness(model);
    const shared = prompt(5, 40);
    h.sched.submit(request("first", [...shared, 1, 2, 3], 4));
    h.run();
    const before = model.tokensRun;
    h.sched.submit(request("second", [...shared, 4, 5], 4));
    h.run();
    expect(h.tokensOf("second")).toEqual(reference([...shared, 4, 5], 4));
    // 40 shared tokens = 10 full blocks of 4.
    expect(h.doneOf("second")!.usage.cachedTokens).toBe(40);
    expect(model.tokensRun - before).toBe(2 + 3); // 2 new prompt tokens, then 3 decode steps
  });

  test("an identical prompt still runs its last token for logits", () => {
    const model = new ContextModel(128);
    const h = harness(model);
    const p = prompt(6, 16);
    h.sched.submit(request("a", p, 3));
    h.run();
    h.sched.submit(request("b", p, 3));
    h.run();
    expect(h.tokensOf("b")).toEqual(reference(p, 3));
    expect(h.doneOf("b")!.usage.cachedTokens).toBe(12);
  });

  test("without a prefix cache nothing is cached and every block is freed", () => {
    const model = new ContextModel(64);
    const h = harness(model, { prefixCache: false });
    h.sched.submit(request("a", prompt(7, 20), 5));
    h.run();
    expect(h.doneOf("a")!.usage.cachedTokens).toBe(0);
    expect(model.cache.allocator.numUsed).toBe(0);
  });

  test("a cache too small for every sequence preempts and recomputes, outputs unchanged", () => {
    // 24 blocks of 4 = 96 tokens; 6 sequences of 10 + 20 tokens need 180.
    const model = new ContextModel(24);
    const h = harness(model, { prefixCache: false });
    const prompts = Array.from({ length: 6 }, (_, i) => prompt(i + 10, 10));
    prompts.forEach((p, i) => h.sched.submit(request(`p${i}`, p, 20)));
    h.run();
    prompts.forEach((p, i) => expect(h.tokensOf(`p${i}`)).toEqual(reference(p, 20)));
    expect(model.cache.allocator.numUsed).toBe(0);
  });

  test("a sequence that outgrows the whole cache ends with length, the others go on", () => {
    // 8 blocks of 4 = 32 tokens: a 10-token prompt asking for 40 more cannot fit even alone.
    const model = new ContextModel(8);
    const h = harness(model, { prefixCache: false });
    h.sched.submit(request("big", prompt(1, 10), 40));
    h.sched.submit(request("small", prompt(2, 3), 2));
    h.run();
    expect(h.doneOf("big")!.finishReason).toBe("length");
    expect(h.tokensOf("big")).toEqual(reference(prompt(1, 10), h.tokensOf("big").length));
    expect(h.tokensOf("small")).toEqual(reference(prompt(2, 3), 2));
    expect(model.cache.allocator.numUsed).toBe(0);
  });

  test("prefix-cache blocks are evicted when the cache needs room", () => {
    const model = new ContextModel(16);
    const h = harness(model);
    for (let i = 0; i < 6; i++) {
      h.sched.submit(request(`e${i}`, prompt(20 + i, 30), 4));
      h.run();
      expect(h.tokensOf(`e${i}`)).toEqual(reference(prompt(20 + i, 30), 4));
    }
    expect(h.sched.prefix!.size).toBeLessThanOrEqual(16);
  });

  test("cancel frees the sequence's blocks at once", () => {
    const model = new ContextModel(64);
    const h = harness(model, { prefixCache: false });
    h.sched.submit(request("c", prompt(8, 30), 100));
    h.sched.step();
    h.sched.step();
    expect(model.cache.allocator.numUsed).toBeGreaterThan(0);
    expect(h.sched.cancel("c")).toBe(true);
    expect(model.cache.allocator.numUsed).toBe(0);
    expect(h.sched.hasWork).toBe(false);
  });

  test("EOS, stop token ids and stop strings end a request", () => {
    const h = harness(new ContextModel(64));
    h.sched.submit(request("eos", [1, 2, 99], 10));
    const ref = reference([5, 6, 7], 10);
    h.sched.submit(request("tok", [5, 6, 7], 10, { stopTokenIds: [ref[3]!] }));
    const text = ref.map((t) => String.fromCharCode(97 + (t % 26))).join("");
    h.sched.submit(request("str", [5, 6, 7], 10, { stop: [text.slice(4, 6)] }));
    h.run();
    expect(h.doneOf("eos")!.finishReason).toBe("stop");
    expect(h.doneOf("eos")!.stoppedBy).toBe(EOS);
    expect(h.tokensOf("eos")).toEqual([]);
    expect(h.tokensOf("tok")).toEqual(ref.slice(0, 3));
    expect(h.doneOf("str")!.stoppedBy).toBe(text.slice(4, 6));
    const strText = h.events.flatMap((e) => (e.type === "delta" && e.id === "str" ? [e.text] : [])).join("");
    expect(strText).toBe(text.slice(0, 4));
  });

  test("a full queue and an over-long prompt are refused at once", () => {
    const h = harness(new ContextModel(64, 4, 50), { maxWaiting: 1 });
    h.sched.submit(request("long", prompt(1, 50), 4));
    h.sched.submit(request("q1", prompt(1, 5), 4));
    h.sched.submit(request("q2", prompt(1, 5), 4));
    const errors = h.events.filter((e) => e.type === "error");
    expect(errors.map((e) => [e.id, (e as { code: string }).code])).toEqual([
      ["long", "context_length"],
      ["q2", "overloaded"],
    ]);
  });

  test("a thinking budget closes the reasoning section after that many tokens", () => {
    const model = new ContextModel(64);
    model.reasoning = true;
    model.reasoningTokens = { open: [29], close: [30] };
    const h = harness(model);
    const p = prompt(9, 6);
    h.sched.submit(request("t", p, 6, { thinkingBudget: 3 }));
    h.run();
    const head = reference(p, 3);
    const tail = reference([...p, ...head, 30], 2);
    expect(h.tokensOf("t")).toEqual([...head, 30, ...tail]);
  });

  test("a thinking budget works with a two-token opening tag and a two-token closing tag", () => {
    const model = new ContextModel(64);
    model.reasoning = true;
    model.reasoningTokens = { open: [25, 26], close: [28, 29] };
    const h = harness(model);
    const p = [...prompt(9, 6), 25, 26];
    h.sched.submit(request("t", p, 7, { thinkingBudget: 2 }));
    h.run();
    const head = reference(p, 2);
    const tail = reference([...p, ...head, 28, 29], 3);
    expect(h.tokensOf("t")).toEqual([...head, 28, 29, ...tail]);
  });

  test("max tokens are clipped to the context", () => {
    const h = harness(new ContextModel(64, 4, 20));
    h.sched.submit(request("a", prompt(2, 15), 100));
    h.run();
    expect(h.tokensOf("a").length).toBe(5);
    expect(h.doneOf("a")!.finishReason).toBe("length");
  });
});
