// The Gated DeltaNet hybrids (Qwen3.5 dense and MoE, Qwen3-Next, and the ForConditionalGeneration layouts) against
// transformers' float32 references (test/fixtures/models/hybrid, made by scripts/make_hybrid_fixtures.py):
// teacher-forced logits of each prompt (one of 320 tokens: many KV blocks, several delta-rule chunks), greedy
// tokens decoded step by step over the cache and its recurrent state, all three prompts in ONE batch, and a
// prefill split into uneven chunks.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { getBackend } from "../../src/backend/index.ts";
import { forwardBatch, logitsRow } from "../../src/engine/forward_batch.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { SafetensorsFile } from "../../src/io/safetensors.ts";
import type { Model } from "../../src/models/model.ts";
import { loadModel } from "../../src/models/registry.ts";
import { readF32, relError } from "./reference.ts";

const ROOT = join(import.meta.dir, "../fixtures/models/hybrid");
const INDEX = join(ROOT, "INDEX.json");
/** f32 math on exactly read weights; the remaining differences are summation order (chunked vs recurrent too). */
const REL_TOL = 1e-4;
const CLEAR_MARGIN = 1e-3;

interface PromptRef {
  ids: number[];
  logits_key: string;
  greedy: number[];
  greedy_margins: number[];
}

const fixtures = existsSync(INDEX) ? (JSON.parse(readFileSync(INDEX, "utf8")) as { fixtures: { name: string }[] }).fixtures : [];

function argmax(row: Float32Array): number {
  let b = 0;
  for (let j = 1; j < row.length; j++) if (row[j]! > row[b]!) b = j;
  return b;
}

test("hybrid fixtures exist", () => expect(fixtures.length).toBeGreaterThanOrEqual(5));

describe.each(fixtures)("hybrid fixture $name", (fx) => {
  const dir = join(ROOT, fx.name);
  const ref = JSON.parse(readFileSync(join(dir, "reference.json"), "utf8")) as { prompts: PromptRef[] };
  const refTensors = SafetensorsFile.open(join(dir, "reference.safetensors"));
  let model: Model;
  const cacheFor = (m: Model) => new KvCache(m.backend, m.layers, { numBlocks: 128, blockSize: 16, stateSlots: 4 });

  test("loads", () => {
    model = loadModel(getBackend(), openModelDir(dir));
    expect(model.layers.some((l) => l.state)).toBe(true);
  });

  test("teacher-forced logits match the reference", () => {
    for (const p of ref.prompts) {
      const want = readF32(refTensors, p.logits_key);
      const r = forwardBatch(model, cacheFor(model), [{ seq: new Sequence(), tokens: Int32Array.from(p.ids) }], "all");
      expect(relError(r.logits, want.data, want.shape[1]!)).toBeLessThan(REL_TOL);
    }
  });

  test("a prefill in uneven chunks gives the same logits", () => {
    const p = ref.prompts[2]!;
    const want = readF32(refTensors, p.logits_key);
    const V = want.shape[1]!;
    const cache = cacheFor(model);
    const seq = new Sequence();
    const cuts = [0, 1, 50, 117, 200, p.ids.length];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.from(p.ids.slice(cuts[i], cuts[i + 1])) }], "all");
      expect(relError(r.logits, want.data.subarray(cuts[i]! * V, cuts[i + 1]! * V), V)).toBeLessThan(REL_TOL);
    }
  });

  test("greedy tokens match where the margin is clear, all prompts decoding in one batch", () => {
    const cache = cacheFor(model);
    const seqs = ref.prompts.map(() => new Sequence());
    let r = forwardBatch(model, cache, ref.prompts.map((p, i) => ({ seq: seqs[i]!, tokens: Int32Array.from(p.ids) })));
    for (let step = 0; step < ref.prompts[0]!.greedy.length; step++) {
      ref.prompts.forEach((p, i) => {
        const got = argmax(logitsRow(r, i));
        if (p.greedy_margins[step]! > CLEAR_MARGIN) expect({ prompt: i, step, token: got }).toEqual({ prompt: i, step, token: p.greedy[step]! });
      });
      r = forwardBatch(model, cache, ref.prompts.map((p, i) => ({ seq: seqs[i]!, tokens: Int32Array.of(p.greedy[step]!) })));
    }
    for (const s of seqs) cache.release(s);
    expect(cache.states!.numFree).toBe(4);
  });

  test("one batch of all prompts gives each its own logits", () => {
    const r = forwardBatch(model, cacheFor(model), ref.prompts.map((p) => ({ seq: new Sequence(), tokens: Int32Array.from(p.ids) })), "all");
    const V = model.vocabSize;
    let at = 0;
    for (const p of ref.prompts) {
      const want = readF32(refTensors, p.logits_key).data;
      expect(relError(r.logits.subarray(at * V, (at + p.ids.length) * V), want, V)).toBeLessThan(REL_TOL);
      at += p.ids.length;
    }
  });
});
