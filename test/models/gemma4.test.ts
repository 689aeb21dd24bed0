// Gemma 4 beyond what the generic fixture test covers: the cache layout (KV-shared layers keep no pool, sliding
// layers only their window), chunked prefill and decode through a windowed cache against transformers' logits,
// what `rmlx info` reports, the checkpoint layouts (and convert between them), and config errors that name the field.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { getBackend } from "../../src/backend/index.ts";
import { setGemvMode } from "../../src/backend/native/lib.ts";
import { convert } from "../../src/convert/convert.ts";
import { forwardBatch } from "../../src/engine/forward_batch.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { RmlxError } from "../../src/errors.ts";
import { parseConfig } from "../../src/io/config.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { SafetensorsFile } from "../../src/io/safetensors.ts";
import { kvCacheBytes, summarize } from "../../src/io/summary.ts";
import { WeightStore } from "../../src/io/weights.ts";
import type { Model } from "../../src/models/model.ts";
import { loadModel } from "../../src/models/registry.ts";
import { cleanupScratch, tmp, writeTensors } from "../convert/helpers.ts";
import { fixtureReference, relError } from "./reference.ts";

// Exact f32 products: the tolerances below are those of f32 math (x16 products are the generic fixture test's).
beforeAll(() => setGemvMode("f32"));
afterAll(() => {
  setGemvMode("x16");
  cleanupScratch();
});

const ROOT = join(import.meta.dir, "../fixtures/models");
const REL_TOL = 1e-4;

const reference = (name: string) => fixtureReference(join(ROOT, name));

const load = (dir: string): Model => loadModel(getBackend(), openModelDir(dir));

/** Teacher-forced logits of every prompt, all rows at once, within tolerance of the fixture's reference. */
function expectReference(model: Model, fixture: string): void {
  const ref = reference(fixture);
  for (const p of ref.prompts) {
    const want = ref.logits(p.logits_key);
    const cache = new KvCache(model.backend, model.layers, { numBlocks: 64, blockSize: 16 });
    const r = forwardBatch(model, cache, [{ seq: new Sequence(), tokens: Int32Array.from(p.ids) }], "all");
    expect({ prompt: p.kind, err: relError(r.logits, want.data, want.shape[1]!) < REL_TOL }).toEqual({ prompt: p.kind, err: true });
  }
}

describe("KV cache layout", () => {
  test("KV-shared layers read the last earlier layer of their type and get no pool of their own", () => {
    const model = load(join(ROOT, "gemma4_e"));
    // s s F s s F, the last three shared: 3 and 4 read 1, 5 reads 2.
    expect(model.layers.map((l) => l.kvSource)).toEqual([undefined, undefined, undefined, 1, 1, 2]);
    expect(model.layers.map((l) => [l.headDim, l.window])).toEqual([
      [16, 24],
      [16, 24],
      [32, 0],
      [16, 24],
      [16, 24],
      [32, 0],
    ]);
    const cache = new KvCache(model.backend, model.layers, { numBlocks: 8, blockSize: 16, codec: "f32" });
    expect(cache.pools[3]).toBe(cache.pools[1]!);
    expect(cache.pools[5]).toBe(cache.pools[2]!);
    expect(new Set(cache.pools).size).toBe(3);
    // f32 K and V of three layers: two sliding (2 kv heads x 16) and one full (2 x 32).
    expect(cache.memoryBytes).toBe(8 * 16 * 2 * 4 * (2 * 16 + 2 * 16 + 2 * 32));
    cache.dispose();
  });

  test("K=V global layers have their own kv heads and head size", () => {
    const model = load(join(ROOT, "gemma4_kv"));
    expect(model.layers.map((l) => [l.kvHeads, l.headDim, l.window])).toEqual([
      [2, 16, 20],
      [2, 16, 20],
      [2, 16, 20],
      [2, 16, 20],
      [1, 32, 0],
    ]);
  });

  test("rmlx info: KV memory without the shared layers, sliding layers capped at their window; the PLE table", () => {
    const md = openModelDir(join(ROOT, "gemma4_e"));
    // own caches, K and V in f16 (2 bytes): sliding 0 and 1 (2 heads x 16, window 24), full 2 (2 heads x 32)
    const perToken = (n: number) => 2 * (2 * 2 * 16 * 2) * Math.min(n, 24) + 2 * 2 * 32 * 2 * n;
    expect(kvCacheBytes(md, 4096)).toBe(perToken(4096));
    expect(kvCacheBytes(md, 10)).toBe(perToken(10));
    const s = summarize(md);
    // [448, 6 layers x 16] bf16
    expect(s.per_layer_embeddings).toEqual({ parameters: 448 * 96, bytes: 448 * 96 * 2 });
    const q = summarize(openModelDir(join(ROOT, "gemma4_e_mxfp8")));
    // mxfp8: one byte per value plus one scale byte per 32
    expect(q.per_layer_embeddings).toEqual({ parameters: 448 * 96, bytes: 448 * 96 + 448 * 3 });
    expect(q.quantization).toContain("embed_tokens_per_layer");
  });
});

describe("windowed cache, chunked prefill and decode", () => {
  for (const name of ["gemma4_e", "gemma4_cg", "gemma4_moe_q4"]) {
    test(`${name}: the long prompt in chunks of 37, then its greedy tokens one at a time, match transformers`, () => {
      const model = load(join(ROOT, name));
      const ref = reference(name);
      const p = ref.prompts.find((q) => q.kind === "long")!;
      const want = ref.logits(p.logits_key);
      const V = want.shape[1]!;
      const cache = new KvCache(model.backend, model.layers, {
        numBlocks: 32,
        blockSize: 16,
        windowed: true,
        sizing: { sequences: 1, stepTokens: 37 },
      });
      expect(cache.windowed).toBe(true);
      // the sliding layers' pools hold the window, not the prompt
      expect(cache.windowAllocator!.numBlocks).toBeLessThan(10);
      const seq = new Sequence();
      for (let at = 0; at < p.ids.length; at += 37) {
        const chunk = Int32Array.from(p.ids.slice(at, at + 37));
        const r = forwardBatch(model, cache, [{ seq, tokens: chunk }], "all");
        const err = relError(r.logits, want.data.subarray(at * V, (at + chunk.length) * V), V);
        expect({ at, ok: err < REL_TOL }).toEqual({ at, ok: true });
      }
      const steps = ref.logits(`greedy_logits_${ref.prompts.indexOf(p)}`);
      for (let i = 0; i < p.greedy.length - 1; i++) {
        const r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.of(p.greedy[i]!) }]);
        const err = relError(r.logits, steps.data.subarray((i + 1) * V, (i + 2) * V), V);
        expect({ step: i, ok: err < REL_TOL }).toEqual({ step: i, ok: true });
      }
      cache.dispose();
    });
  }
});

describe("checkpoint layouts and convert", () => {
  test("transformers' fused experts convert to mlx-lm's switch_glu stacks, and the model still matches", async () => {
    const out = join(tmp(), "moe");
    await convert({ model: join(ROOT, "gemma4_moe"), out, force: true, quantize: false, dequantize: false, mode: "affine" });
    const names = WeightStore.open(out).names();
    expect(names).toContain("model.layers.0.experts.switch_glu.gate_proj.weight");
    expect(names).toContain("model.layers.0.experts.switch_glu.up_proj.weight");
    expect(names).toContain("model.layers.0.experts.switch_glu.down_proj.weight");
    expect(names.some((n) => n.includes("gate_up_proj") || n.endsWith("experts.down_proj"))).toBe(false);
    const a = WeightStore.open(join(ROOT, "gemma4_moe")).require("model.layers.1.experts.gate_up_proj");
    const g = WeightStore.open(out).require("model.layers.1.experts.switch_glu.up_proj.weight");
    // expert 3's up rows are the second half of its gate_up rows
    const E = a.shape[0]!;
    const rowBytes = a.bytes.byteLength / (E * a.shape[1]!);
    const I = a.shape[1]! / 2;
    const at = (3 * 2 * I + I) * rowBytes;
    expect(Buffer.from(g.bytes.subarray(3 * I * rowBytes, 4 * I * rowBytes)).equals(Buffer.from(a.bytes.subarray(at, at + I * rowBytes)))).toBe(true);
    expectReference(load(out), "gemma4_moe");
  });

  test("convert -q of transformers' MoE checkpoint gives the mlx-vlm fixture's tensors (routers at 8 bits)", async () => {
    const out = join(tmp(), "moe_q4");
    await convert({ model: join(ROOT, "gemma4_moe"), out, force: true, quantize: true, dequantize: false, mode: "affine" });
    const ours = WeightStore.open(out);
    const theirs = WeightStore.open(join(ROOT, "gemma4_moe_q4"));
    const wanted = theirs.names().map((n) => n.replace(/^language_model\./, "")).sort();
    expect(ours.names().sort()).toEqual(wanted);
    for (const name of theirs.names()) {
      const a = ours.require(name.replace(/^language_model\./, ""));
      const b = theirs.require(name);
      if (!Buffer.from(a.bytes).equals(Buffer.from(b.bytes))) throw new Error(`${name} differs`);
    }
    const cfg = JSON.parse(readFileSync(join(out, "config.json"), "utf8"));
    expect(cfg.quantization["model.layers.0.router.proj"]).toEqual({ group_size: 64, bits: 8 });
  });

  test("Google's ForConditionalGeneration layout converts to mlx-lm's: towers and the shared layers' k/v dropped", async () => {
    const out = join(tmp(), "cg");
    await convert({ model: join(ROOT, "gemma4_cg"), out, force: true, quantize: false, dequantize: false, mode: "affine" });
    const names = WeightStore.open(out).names();
    expect(names.every((n) => n.startsWith("language_model.model."))).toBe(true);
    expect(names.some((n) => /tower|embed_vision|embed_audio/.test(n))).toBe(false);
    // layers 3 and 4 are KV-shared: the random k/v weights the source stores for them are gone
    expect(names.filter((n) => /layers\.[34]\.self_attn\.k_proj/.test(n))).toEqual([]);
    expect(names).toContain("language_model.model.layers.2.self_attn.k_proj.weight");
    expectReference(load(out), "gemma4_cg");
  });

  test("stale k/v weights of shared layers in an MLX snapshot are ignored, not rejected", () => {
    const dir = tmp();
    for (const f of readdirSync(join(ROOT, "gemma4_e"))) copyFileSync(join(ROOT, "gemma4_e", f), join(dir, f));
    // Snapshots converted before mlx-lm dropped them carry k_proj / v_proj / k_norm for the KV-shared layers.
    const extra: Record<string, { dtype: "BF16"; shape: number[]; values: Float32Array }> = {};
    for (const layer of [3, 4]) {
      extra[`model.layers.${layer}.self_attn.k_proj.weight`] = { dtype: "BF16", shape: [32, 64], values: new Float32Array(32 * 64).fill(3) };
      extra[`model.layers.${layer}.self_attn.v_proj.weight`] = { dtype: "BF16", shape: [32, 64], values: new Float32Array(32 * 64).fill(-3) };
      extra[`model.layers.${layer}.self_attn.k_norm.weight`] = { dtype: "BF16", shape: [16], values: new Float32Array(16).fill(9) };
    }
    writeTensors(join(dir, "model-extra.safetensors"), extra);
    const own = [...SafetensorsFile.open(join(dir, "model.safetensors")).tensors.keys()];
    const weightMap = Object.fromEntries([...own.map((n) => [n, "model.safetensors"]), ...Object.keys(extra).map((n) => [n, "model-extra.safetensors"])]);
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    expect(WeightStore.open(dir).has("model.layers.4.self_attn.k_proj.weight")).toBe(true);
    expectReference(load(dir), "gemma4_e");
  });
});

describe("config errors name the field", () => {
  const base = {
    model_type: "gemma4_text",
    hidden_size: 64,
    num_hidden_layers: 3,
    intermediate_size: 128,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 16,
    vocab_size: 448,
  };
  const parseError = (cfg: Record<string, unknown>): RmlxError => {
    try {
      parseConfig(cfg, "c.json");
    } catch (e) {
      return e as RmlxError;
    }
    throw new Error("parsed");
  };

  test("an unknown rope type", () => {
    const e = parseError({
      ...base,
      rope_parameters: { full_attention: { rope_type: "wavelet", rope_theta: 1e6 }, sliding_attention: { rope_type: "default" } },
    });
    expect(e.code).toBe("unsupported");
    expect(e.message).toContain("rope_parameters.full_attention.rope_type");
    const longrope = parseError({
      ...base,
      rope_parameters: { full_attention: { rope_type: "proportional" }, sliding_attention: { rope_type: "longrope" } },
    });
    expect(longrope.message).toContain("rope_parameters.sliding_attention.rope_type");
  });

  test("layer_types of the wrong length", () => {
    const e = parseError({ ...base, layer_types: ["sliding_attention", "full_attention"] });
    expect(e.code).toBe("bad_model");
    expect(e.message).toBe("c.json: layer_types must list 3 entries, one per layer");
  });

  test("the last layer is full attention whatever layer_types says, as in transformers", () => {
    const c = parseConfig({ ...base, layer_types: ["sliding_attention", "sliding_attention", "sliding_attention"] }, "c.json");
    expect(c.layerTypes).toEqual(["sliding_attention", "sliding_attention", "full_attention"]);
  });

  test("KV sharing with no earlier layer of the type to share", () => {
    const dir = tmp();
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...base, layer_types: ["full_attention", "sliding_attention", "full_attention"], num_kv_shared_layers: 2 }));
    writeFileSync(join(dir, "model.safetensors"), Buffer.from([2, 0, 0, 0, 0, 0, 0, 0, 123, 125]));
    let err: unknown;
    try {
      load(dir);
    } catch (e) {
      err = e;
    }
    expect((err as RmlxError).message).toContain("num_kv_shared_layers 2: layer 1 (sliding_attention) has no earlier layer of its type");
  });
});
