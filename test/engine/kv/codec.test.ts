// KV codecs: names, per-layer formats, bytes per token against f16, prefix-cache roots, the KV cache over packed
// pages (greedy decode of the built-in model), a pool that is resident only where blocks were written, and one
// populated piece by piece until it is resident whole.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { totalmem } from "node:os";
import { join } from "node:path";
import { kvBlockBytes } from "../../../src/backend/backend.ts";
import { getBackend } from "../../../src/backend/index.ts";
import { builtinModelDir } from "../../../src/builtin/index.ts";
import { codecRootHash } from "../../../src/engine/kv/codec.ts";
import { kvBytesPerToken, kvCodecProblem, kvLayerFormat, parseKvCodec } from "../../../src/quant/kv_codec.ts";
import { KvCache } from "../../../src/engine/kv/kv_cache.ts";
import { meanNll, teacherForcedLogProbs } from "../../../src/engine/kv/quality.ts";
import { openModelDir } from "../../../src/io/model_dir.ts";
import { loadModel } from "../../../src/models/registry.ts";

const qwen06 = Array.from({ length: 28 }, () => ({ kvHeads: 8, headDim: 128 }));
const ratio = (c: string) => kvBytesPerToken(parseKvCodec(c), qwen06) / kvBytesPerToken(parseKvCodec("f16"), qwen06);

describe("KV codecs", () => {
  test("names, canonical forms and clear errors", () => {
    expect(parseKvCodec("Q8").name).toBe("q8");
    expect(parseKvCodec("q4g32").format.k).toEqual({ kind: "affine", bits: 4, group: 32 });
    expect(parseKvCodec("k8v4").format.v).toEqual({ kind: "affine", bits: 4, group: 64 });
    expect(() => parseKvCodec("q9")).toThrow(/unknown KV codec 'q9'/);
    expect(parseKvCodec("Turbo3").format.k).toEqual({ kind: "turbo", bits: 3 });
    expect(() => parseKvCodec("turbo3g32")).toThrow(/unknown KV codec 'turbo3g32'/);
    expect(kvCodecProblem(parseKvCodec("turbo4"), 80)).toMatch(/turbo4 cannot store head_dim 80: the Hadamard rotation needs a power-of-two head_dim/);
    expect(kvCodecProblem(parseKvCodec("q8g64"), 32)).toMatch(/q8g64 cannot store head_dim 32/);
    expect(kvCodecProblem(parseKvCodec("q8"), 16)).toMatch(/cannot store head_dim 16/);
    // Without a group suffix, a head_dim of 32 takes groups of 32.
    expect(kvLayerFormat(parseKvCodec("q8"), 32).k).toEqual({ kind: "affine", bits: 8, group: 32 });
  });

  test("bytes per token against f16 meet the targets (Qwen3-0.6B shape)", () => {
    expect(ratio("q8")).toBeLessThanOrEqual(0.55);
    expect(ratio("q4")).toBeLessThanOrEqual(0.3);
    expect(ratio("k8v4")).toBeLessThanOrEqual(0.42);
    expect(ratio("fp8")).toBeLessThanOrEqual(0.55);
    expect(ratio("turbo4")).toBeLessThanOrEqual(0.3);
    expect(ratio("turbo3")).toBeLessThanOrEqual(0.22);
  });

  test("prefix-cache chains of different codecs start from different roots", () => {
    const roots = ["f32", "f16", "q8", "q4", "k8v4", "fp8", "turbo4", "turbo3"].map((c) => codecRootHash(parseKvCodec(c)));
    expect(new Set(roots).size).toBe(roots.length);
  });

  test("a cache refuses a codec a layer's head_dim cannot take", () => {
    const be = getBackend();
    expect(() => new KvCache(be, [{ kvHeads: 1, headDim: 48, window: 0 } as never], { numBlocks: 2, codec: "q8" })).toThrow(
      /KV codec q8 cannot store head_dim 48/,
    );
    expect(() => new KvCache(be, [{ kvHeads: 1, headDim: 48, window: 0 } as never], { numBlocks: 2, codec: "turbo4" })).toThrow(
      /KV codec turbo4 cannot store head_dim 48: the Hadamard rotation needs a power-of-two head_dim/,
    );
  });

  test("built-in model: NLL change against f32 KV is under 0.1% for q8 and under 1% for q4 and turbo4", () => {
    const ref = JSON.parse(readFileSync(join(import.meta.dir, "../../fixtures/default_model_reference.json"), "utf8")) as {
      answers: { prompt_ids: number[]; tokens: number[] }[];
    };
    const ids = ref.answers.flatMap((a) => [...a.prompt_ids, ...a.tokens]);
    const model = loadModel(getBackend(), openModelDir(builtinModelDir()));
    const base = meanNll(teacherForcedLogProbs(model, ids, "f32"), ids);
    const change = (c: string) => Math.abs(meanNll(teacherForcedLogProbs(model, ids, c), ids) / base - 1);
    expect(change("q8")).toBeLessThan(0.001);
    expect(change("q4")).toBeLessThan(0.01);
    expect(change("k8v4")).toBeLessThan(0.01);
    expect(change("turbo4")).toBeLessThan(0.01);
  });

  test("a pool is resident only as far as blocks are written", () => {
    const be = getBackend();
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]) * 1024;
    const before = rss();
    const cache = new KvCache(be, Array.from({ length: 4 }, () => ({ kvHeads: 8, headDim: 128, window: 0 }) as never), {
      memoryBytes: 512 << 20,
      codec: "q8",
    });
    expect(cache.memoryBytes).toBeGreaterThan(400 << 20);
    expect(rss() - before).toBeLessThan(32 << 20);
    cache.dispose();
  });

  test("a written token makes only its piece of a large pool resident", () => {
    // Native pools are mapped in 2 MiB pieces with transparent huge pages asked for: one token written may make its
    // 2 MiB of K and of V resident, never the whole pool.
    const be = getBackend();
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]) * 1024;
    const [blocks, blockSize, kvHeads, headDim] = [8192, 16, 8, 128];
    const pool = be.createKvPool(blocks, blockSize, kvHeads, headDim, "f16");
    const before = rss();
    be.scope(() => {
      const k = be.fromArray(new Float32Array(kvHeads * headDim).fill(0.5), [1, kvHeads, headDim], "f32");
      const v = be.fromArray(new Float32Array(kvHeads * headDim).fill(-0.5), [1, kvHeads, headDim], "f32");
      be.kvWrite(pool, k, v, new Int32Array([blocks * blockSize - 1]));
      return 0;
    });
    expect(rss() - before).toBeLessThan(16 << 20);
    be.dispose(pool.k);
    be.dispose(pool.v);
  });

  test("populateStep makes a cache resident a piece at a time, lowest blocks first", async () => {
    // The server's worker calls it while idle, so that its steps do not take the page faults.
    const be = getBackend();
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]) * 1024;
    const layers = Array.from({ length: 4 }, () => ({ kvHeads: 8, headDim: 128, window: 0 }) as never);
    const cache = new KvCache(be, layers, { memoryBytes: 96 << 20, codec: "q8" });
    // A backend whose pools are resident when made has nothing to populate.
    if (!be.populateKvPool) {
      expect(cache.populateStep(8 << 20)).toBe(false);
      cache.dispose();
      return;
    }
    // Memory that earlier tests left to the collector (weights freed by finalizers) would leave the RSS meanwhile.
    for (let i = 0; i < 3; i++) {
      Bun.gc(true);
      await Bun.sleep(20);
    }
    const before = rss();
    expect(cache.populateStep(8 << 20)).toBe(true);
    const first = rss() - before;
    // Transparent huge pages may round each pool's piece up to 2 MiB.
    expect(first).toBeGreaterThan(6 << 20);
    expect(first).toBeLessThan(cache.memoryBytes / 2);
    let steps = 1;
    while (cache.populateStep(8 << 20)) steps++;
    expect(steps).toBeGreaterThanOrEqual(11);
    // The process RSS also moves with the allocator's own returns of freed memory: a margin, not the exact size.
    expect(rss() - before).toBeGreaterThan(cache.memoryBytes * 0.75);
    expect(cache.populateStep(8 << 20)).toBe(false);
    cache.dispose();

    // A budget beyond what the machine has available stays lazily resident instead of meeting the OOM killer.
    const huge = new KvCache(be, layers, { memoryBytes: 2 * totalmem(), codec: "f16" });
    const mark = rss();
    expect(huge.populateStep(64 << 20)).toBe(false);
    expect(rss() - mark).toBeLessThan(8 << 20);
    huge.dispose();

    const pool = be.createKvPool(64, 16, 8, 128, "f16");
    const bytes = new Uint8Array(kvBlockBytes(pool)).map((_, i) => (i * 37 + 11) & 0xff);
    be.writeKvBlock(pool, 5, bytes);
    be.populateKvPool!(pool, 4, 9);
    be.populateKvPool!(pool);
    expect(be.readKvBlock(pool, 5)).toEqual(bytes);
    expect(be.readKvBlock(pool, 6).every((b) => b === 0)).toBe(true);
    be.dispose(pool.k);
    be.dispose(pool.v);
  });
});
