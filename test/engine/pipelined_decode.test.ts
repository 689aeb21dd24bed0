// Pipelined decode (the scheduler's in-flight step, what the mlx backend runs): a model whose device is a queue run
// in order only when ids are read, so a step launched before the host took the tokens of the one before really
// computes from those tokens still "on the device". Outputs must equal the plain continuation in every case that
// ends, joins or breaks a pipeline; sampled rows are drawn on the device from each request's own uniform draws.
import { describe, expect, test } from "bun:test";
import type { RowDraw, Tensor } from "../../src/backend/backend.ts";
import type { LaunchedIds } from "../../src/engine/forward_batch.ts";
import type { LogitsProcessor } from "../../src/engine/logits_processor.ts";
import { KvCache, type BuiltStep } from "../../src/engine/kv/kv_cache.ts";
import { Sampler } from "../../src/engine/sampler.ts";
import type { SchedulerModel } from "../../src/engine/scheduler.ts";
import { DEFAULT_SAMPLING, type GenerateRequest } from "../../src/engine/types.ts";
import { harness, LETTERS, prompt, request, storeBackend } from "./scheduler_harness.ts";

const V = 32;

function nextOf(ctx: ArrayLike<number>): number {
  let h = 11;
  for (let i = 0; i < ctx.length; i++) h = (h * 37 + ctx[i]! * (i + 3)) % 1000003;
  return h % (V - 1);
}

/** The simulated device's pick: the model's token at temperature 0, moved by the request's uniform draw above it. */
function pick(ctx: ArrayLike<number>, d: RowDraw): number {
  return d.temperature === 0 ? nextOf(ctx) : (nextOf(ctx) + Math.floor(d.u * 7)) % (V - 1);
}

/** The continuation, picking each token from the draws a fresh sampler with the same parameters makes. */
function reference(prompt: number[], n: number, sampling = { ...DEFAULT_SAMPLING, temperature: 0 }): number[] {
  const sampler = new Sampler(sampling);
  const ctx = [...prompt];
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = pick(ctx, sampler.rowDraw());
    out.push(t);
    ctx.push(t);
  }
  return out;
}

interface Ids extends LaunchedIds {
  values: Int32Array | null;
  dropped: boolean;
}

/** The cache stores token ids; every write and block copy goes through one in-order queue, as a device stream. */
class DeviceModel implements SchedulerModel {
  readonly cache: KvCache;
  readonly store: Int32Array;
  readonly eosTokenIds = [V - 1];
  readonly contextLength = 4096;
  private readonly queue: (() => void)[] = [];
  launches = 0;
  forwards = 0;
  /** Launches whose inputs were still on the device. */
  chained = 0;
  live = new Set<Ids>();

  constructor(
    numBlocks: number,
    readonly blockSize = 4,
  ) {
    this.store = new Int32Array(numBlocks * blockSize).fill(-1);
    this.cache = new KvCache(storeBackend(this.store, blockSize, (copy) => this.queue.push(copy)), [{ kvHeads: 1, headDim: 1, window: 0 }], { blockSize, numBlocks });
  }

  private sync(): void {
    while (this.queue.length > 0) this.queue.shift()!();
  }

  /** What one step computes: writes its tokens, then the picked next token of each logits row. */
  private compute(step: BuiltStep, tokens: Int32Array, logitRows: Int32Array, draws: readonly RowDraw[]): Int32Array {
    const { batch, slots } = step;
    for (let t = 0; t < tokens.length; t++) this.store[slots[t]!] = tokens[t]!;
    return logitRows.map((row, r) => {
      const s = batch.tokenSeq[row]!;
      const ctx: number[] = [];
      for (let p = 0; p <= batch.positions[row]!; p++) {
        const block = batch.blockTables[s * batch.maxBlocks + Math.floor(p / this.blockSize)]!;
        ctx.push(this.store[block * this.blockSize + (p % this.blockSize)]!);
      }
      if (ctx.includes(-1)) throw new Error("read an unwritten cache slot");
      return pick(ctx, draws[r]!);
    });
  }

  encode(req: GenerateRequest) {
    return { ids: req.prompt as number[], startsInReasoning: false };
  }

  forward(step: BuiltStep, logitRows: Int32Array): Float32Array {
    this.forwards++;
    this.sync();
    const out = new Float32Array(logitRows.length * V);
    const greedy = { temperature: 0, topP: 1, topK: 0, minP: 0, u: 0 };
    this.compute(step, step.tokens, logitRows, Array.from(logitRows, () => greedy)).forEach((t, r) => (out[r * V + t] = 10));
    return out;
  }

  drawsAt(): boolean {
    return true;
  }

  /** A constraint of the tests below, when set: requests whose id starts with "c" get a fresh one each. */
  constraint: (() => LogitsProcessor) | null = null;

  logitsProcessor(req: GenerateRequest) {
    return req.id.startsWith("c") ? (this.constraint?.() ?? null) : null;
  }

  launchDraw(step: BuiltStep, logitRows: Int32Array, draws: readonly RowDraw[], inputs?: LaunchedIds): LaunchedIds {
    this.launches++;
    if (inputs) this.chained++;
    // The host may reuse the step's arrays once the launch returns; the device has its own copies.
    const copy = structuredClone({ step, logitRows, draws });
    const source = inputs as Ids | undefined;
    if (source && (source.dropped || source.values === null && !this.live.has(source))) throw new Error("inputs were let go");
    if (source) expect(copy.step.tokens.length).toBe(logitRows.length);
    const ids: Ids = {
      values: null,
      dropped: false,
      tensor: {} as Tensor,
      read: () => {
        if (ids.dropped) throw new Error("read after drop");
        while (ids.values === null) this.queue.shift()!();
        return ids.values;
      },
      drop: () => {
        ids.dropped = true;
        this.live.delete(ids);
      },
    };
    this.live.add(ids);
    this.queue.push(() => {
      const tokens = source ? source.values! : copy.step.tokens;
      ids.values = this.compute(copy.step, tokens, copy.logitRows, copy.draws);
    });
    return ids;
  }

  newDetokenizer = LETTERS.newDetokenizer;
  newStopFilter = LETTERS.newStopFilter;
  tokenBytes = LETTERS.tokenBytes;
}

/** Allows tokens that are multiples of the step's divisor (2, 3, 4, ...), then only the last id, which ends it. */
class Steps implements LogitsProcessor {
  private n = 0;

  apply(logits: Float32Array): void {
    const d = this.n + 2;
    for (let i = 0; i < logits.length; i++) if (this.n >= 6 ? i !== logits.length - 1 : i % d !== 0) logits[i] = -Infinity;
  }

  accept(): boolean {
    this.n++;
    return true;
  }
}

/** A model that also picks tokens where the logits are, masks included (forwardDraw), after the plain steps. */
class MaskingModel extends DeviceModel {
  readonly vocabSize = V;
  draws = 0;
  masked = 0;

  forwardDraw(step: BuiltStep, logitRows: Int32Array, draws: readonly RowDraw[]): Int32Array {
    const logits = this.forward(step, logitRows);
    return Int32Array.from(draws, (d, r) => {
      this.draws++;
      if (d.allowed) this.masked++;
      let best = -1;
      for (let i = 0; i < V; i++) if ((!d.allowed || d.allowed[i]) && (best < 0 || logits[r * V + i]! > logits[r * V + best]!)) best = i;
      return best;
    });
  }
}

describe("pipelined decode", () => {
  test("one request: every decode step is launched on the last one's ids, output and usage unchanged", () => {
    const model = new DeviceModel(64);
    const h = harness(model, { prefixCache: false });
    h.sched.submit(request("a", prompt(1, 10), 12));
    h.run();
    expect(h.tokensOf("a")).toEqual(reference(prompt(1, 10), 12));
    expect(h.doneOf("a")!.finishReason).toBe("length");
    expect(h.doneOf("a")!.usage).toEqual({ promptTokens: 10, completionTokens: 12, cachedTokens: 0 });
    // The prompt's step, then 11 decode steps each launched on the ids before it; nothing past max tokens.
    expect(model.forwards).toBe(0);
    expect(model.launches).toBe(12);
    expect(model.chained).toBe(11);
    expect(model.cache.allocator.numUsed).toBe(0);
    expect(model.live.size).toBe(0);
  });

  test("a stop token and a stop string end requests one step late, dropping that step's work", () => {
    const p = prompt(2, 9);
    const ref = reference(p, 20);
    const model = new DeviceModel(64);
    const h = harness(model, { prefixCache: false });
    h.sched.submit(request("tok", p, 20, { stopTokenIds: [ref[6]!] }));
    h.sched.submit(request("str", prompt(3, 5), 20, { stop: [String.fromCharCode(97 + (reference(prompt(3, 5), 20)[4]! % 26))] }));
    h.sched.submit(request("long", prompt(4, 7), 16));
    h.run();
    expect(h.tokensOf("tok")).toEqual(ref.slice(0, ref.indexOf(ref[6]!)));
    expect(h.doneOf("tok")!.stoppedBy).toBe(ref[6]!);
    expect(h.doneOf("str")!.finishReason).toBe("stop");
    const strRef = reference(prompt(3, 5), 20);
    expect(h.tokensOf("str")).toEqual(strRef.slice(0, h.tokensOf("str").length));
    expect(h.tokensOf("long")).toEqual(reference(prompt(4, 7), 16));
    expect(model.cache.allocator.numUsed).toBe(0);
    expect(model.live.size).toBe(0);
  });

  test("a request that arrives, a cancel and a preemption break the pipeline and outputs stay right", () => {
    // 14 blocks of 4 = 56 tokens for sequences that want 3 x (8 + 14): someone is preempted.
    const model = new DeviceModel(14);
    const h = harness(model, { prefixCache: false });
    h.sched.submit(request("a", prompt(5, 8), 14));
    h.sched.submit(request("b", prompt(6, 8), 14));
    for (let i = 0; i < 4; i++) h.sched.step();
    h.sched.submit(request("c", prompt(7, 8), 14));
    h.sched.submit(request("gone", prompt(8, 8), 30));
    for (let i = 0; i < 3; i++) h.sched.step();
    expect(h.sched.cancel("gone")).toBe(true);
    h.run();
    for (const [id, seed] of [["a", 5], ["b", 6], ["c", 7]] as const) expect(h.tokensOf(id)).toEqual(reference(prompt(seed, 8), 14));
    expect(model.chained).toBeGreaterThan(0);
    expect(model.cache.allocator.numUsed).toBe(0);
    expect(model.live.size).toBe(0);
  });

  test("blocks a pipelined request filled serve a later prompt from the prefix cache", () => {
    const model = new DeviceModel(128);
    const h = harness(model);
    const p = prompt(9, 6);
    h.sched.submit(request("first", p, 18));
    h.run();
    const out = h.tokensOf("first");
    expect(out).toEqual(reference(p, 18));
    // The prompt and generated tokens up to the last full block are cached, filled by pipelined steps.
    const again = [...p, ...out.slice(0, 13)];
    h.sched.submit(request("second", again, 5));
    h.run();
    expect(h.doneOf("second")!.usage.cachedTokens).toBe(16);
    expect(h.tokensOf("second")).toEqual(reference(again, 5));
  });

  test("sampled rows are drawn on the device from each request's own draws, in token order", () => {
    const model = new DeviceModel(64);
    const h = harness(model, { prefixCache: false });
    const warm = { ...DEFAULT_SAMPLING, temperature: 0.8, topP: 0.9, seed: 7 };
    const hot = { ...DEFAULT_SAMPLING, temperature: 1.3, topK: 5, seed: 8 };
    h.sched.submit(request("warm", prompt(13, 6), 11, { sampling: warm }));
    h.sched.submit(request("hot", prompt(14, 9), 9, { sampling: hot }));
    h.sched.submit(request("greedy", prompt(15, 5), 10));
    h.run();
    expect(h.tokensOf("warm")).toEqual(reference(prompt(13, 6), 11, warm));
    expect(h.tokensOf("hot")).toEqual(reference(prompt(14, 9), 9, hot));
    expect(h.tokensOf("greedy")).toEqual(reference(prompt(15, 5), 10));
    // The draws did move the tokens off the model's own.
    expect(h.tokensOf("warm")).not.toEqual(reference(prompt(13, 6), 11));
    expect(model.forwards).toBe(0);
    expect(model.live.size).toBe(0);
  });

  test("a row that needs the host's sampler (logprobs, penalties) runs plain steps; the others stay right", () => {
    const model = new DeviceModel(64);
    const h = harness(model, { prefixCache: false });
    h.sched.submit(request("lp", prompt(10, 6), 6, { sampling: { ...DEFAULT_SAMPLING, temperature: 0, logprobs: true } }));
    h.sched.submit(request("g", prompt(11, 6), 10));
    h.run();
    expect(h.tokensOf("lp")).toEqual(reference(prompt(10, 6), 6));
    expect(h.tokensOf("g")).toEqual(reference(prompt(11, 6), 10));
    expect(model.forwards).toBeGreaterThan(0);
    expect(model.live.size).toBe(0);
  });

  test("constrained rows are picked on the device through their masks, as the host picks them", () => {
    const runWith = (model: DeviceModel) => {
      model.constraint = () => new Steps();
      const h = harness(model, { prefixCache: false });
      h.sched.submit(request("c", prompt(16, 7), 12, { stopTokenIds: [V - 2] }));
      h.sched.submit(request("free", prompt(17, 5), 9));
      h.run();
      return { c: h.tokensOf("c"), free: h.tokensOf("free"), done: h.doneOf("c")!.finishReason };
    };
    const host = runWith(new DeviceModel(64));
    const device = new MaskingModel(64);
    expect(runWith(device)).toEqual(host);
    // The constraint held (multiples of 2, 3, ... then the stop token) and the masks went down with the draws.
    expect(host.c.slice(0, 6).every((t, i) => t % (i + 2) === 0)).toBe(true);
    expect(host.done).toBe("stop");
    expect(device.masked).toBeGreaterThanOrEqual(6);
    expect(device.draws).toBeGreaterThan(device.masked);
  });

  test("abortAll lets go of the step in flight", () => {
    const model = new DeviceModel(64);
    const h = harness(model, { prefixCache: false });
    h.sched.submit(request("a", prompt(12, 6), 10));
    h.sched.step();
    h.sched.step();
    expect(model.live.size).toBeGreaterThan(0);
    h.sched.abortAll("unloading", "bye");
    expect(model.live.size).toBe(0);
    expect(model.cache.allocator.numUsed).toBe(0);
    expect(h.events.at(-1)).toMatchObject({ type: "error", id: "a" });
  });
});
