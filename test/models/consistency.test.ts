// The model code over the paged cache must not depend on how a sequence is scheduled: one teacher-forced step,
// chunked prefill followed by single-token decode steps, and a batch mixing two sequences of different lengths
// all give the same logits. Runs on the plain TypeScript reference backend.
import { afterAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { forwardBatch, logitsRow } from "../../src/engine/forward_batch.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import type { Model } from "../../src/models/model.ts";
import { loadModel } from "../../src/models/registry.ts";
import { getBackend } from "../../src/backend/index.ts";
import type { Backend } from "../../src/backend/backend.ts";
import { RefBackend } from "./ref_backend.ts";
import { setGemvMode } from "../../src/backend/native/lib.ts";
import { makeTinyModel, type TinySpec } from "./tiny_model.ts";

// paths that must agree to f32 rounding (batching, chunking, forks) are compared in exact f32 products;
// the x16 products differ from f32 by design and are checked against transformers in fixtures.test.ts
// (set as the file loads: models are built and run while the tests are collected)
setGemvMode("f32");
afterAll(() => setGemvMode("x16"));

const A = [3, 17, 42, 5, 9, 88, 23, 61, 7, 30, 12];
const B = [50, 4, 71, 33, 19, 2, 64];

function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function teacherForced(model: Model, ids: number[]): Float32Array {
  const cache = new KvCache(model.backend, model.layers, { numBlocks: 8, blockSize: 4 });
  const r = forwardBatch(model, cache, [{ seq: new Sequence(), tokens: Int32Array.from(ids) }], "all");
  return r.logits;
}

const specs: (TinySpec & { name: string })[] = [
  { name: "llama", modelType: "llama" },
  { name: "llama3 rope", modelType: "llama", extra: { attention_bias: false, rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 } } },
  { name: "qwen3", modelType: "qwen3" },
  { name: "qwen3_moe", modelType: "qwen3_moe" },
  { name: "gemma3_text", modelType: "gemma3_text" },
  { name: "gemma4_text", modelType: "gemma4_text", layers: 3 },
  { name: "llama affine 4-bit g32", modelType: "llama", quant: { bits: 4, groupSize: 32 } },
  { name: "qwen3 affine 3-bit g32", modelType: "qwen3", quant: { bits: 3, groupSize: 32 } },
  { name: "qwen3_moe affine 8-bit g32", modelType: "qwen3_moe", quant: { bits: 8, groupSize: 32 } },
];

const cases = specs.flatMap((s) => [
  { ...s, backend: "ref" },
  { ...s, backend: "native" },
]);

const refLogits = new Map<string, Float32Array>();

describe.each(cases)("consistency $name on $backend", (spec) => {
  const be: Backend = spec.backend === "ref" ? new RefBackend() : getBackend();
  const dir = makeTinyModel(spec);
  const model = loadModel(be, openModelDir(dir));
  // the weights stay mapped; the directory is not needed any more
  rmSync(dir, { recursive: true });
  const V = model.vocabSize;
  const fullA = teacherForced(model, A);
  const fullB = teacherForced(model, B);

  test("the reference and native backends agree", () => {
    if (spec.backend === "ref") refLogits.set(spec.name, fullA);
    const ref = refLogits.get(spec.name)!;
    let scale = 0;
    for (const v of ref) scale = Math.max(scale, Math.abs(v));
    expect(maxDiff(fullA, ref) / scale).toBeLessThan(1e-4);
  });

  test("logits are finite and not flat", () => {
    expect(fullA.length).toBe(A.length * V);
    expect(fullA.every(Number.isFinite)).toBe(true);
    const row = fullA.subarray(0, V);
    expect(Math.max(...row) - Math.min(...row)).toBeGreaterThan(0.1);
  });

  test("chunked prefill then decode matches the teacher-forced step", () => {
    const cache = new KvCache(be, model.layers, { numBlocks: 8, blockSize: 4 });
    const seq = new Sequence();
    let r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.from(A.slice(0, 3)) }], "none");
    r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.from(A.slice(3, 6)) }]);
    expect(maxDiff(logitsRow(r, 0), fullA.subarray(5 * V, 6 * V))).toBeLessThan(1e-4);
    for (let i = 6; i < A.length; i++) {
      r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.of(A[i]!) }]);
      expect(maxDiff(logitsRow(r, 0), fullA.subarray(i * V, (i + 1) * V))).toBeLessThan(1e-4);
    }
  });

  test("a fork shares the prefix; writing into the shared partial block copies it first", () => {
    const cache = new KvCache(be, model.layers, { numBlocks: 8, blockSize: 4 });
    const sa = new Sequence();
    forwardBatch(model, cache, [{ seq: sa, tokens: Int32Array.from(A.slice(0, 6)) }], "none");
    const sb = cache.fork(sa);
    // B continues with its own tokens after A's first 6 (block 1 is half full and shared)
    const tail = [B[0]!, B[1]!];
    const rb = forwardBatch(model, cache, [{ seq: sb, tokens: Int32Array.from(tail) }], "all");
    const ra = forwardBatch(model, cache, [{ seq: sa, tokens: Int32Array.from(A.slice(6)) }], "all");
    const fullAB = teacherForced(model, [...A.slice(0, 6), ...tail]);
    expect(maxDiff(rb.logits, fullAB.subarray(6 * V))).toBeLessThan(1e-4);
    expect(maxDiff(ra.logits, fullA.subarray(6 * V))).toBeLessThan(1e-4);
    expect(sa.blocks[0]).toBe(sb.blocks[0]!);
    expect(sa.blocks[1]).not.toBe(sb.blocks[1]!);
  });

  test("two sequences of different lengths in one batch give their own logits", () => {
    const cache = new KvCache(be, model.layers, { numBlocks: 8, blockSize: 4 });
    const sa = new Sequence();
    const sb = new Sequence();
    const r = forwardBatch(model, cache, [
      { seq: sa, tokens: Int32Array.from(A.slice(0, 8)) },
      { seq: sb, tokens: Int32Array.from(B) },
    ], "all");
    expect(maxDiff(r.logits.subarray(0, 8 * V), fullA.subarray(0, 8 * V))).toBeLessThan(1e-4);
    expect(maxDiff(r.logits.subarray(8 * V), fullB)).toBeLessThan(1e-4);
    // next: A continues with 3 tokens while B decodes one
    const r2 = forwardBatch(model, cache, [
      { seq: sb, tokens: Int32Array.of(9) },
      { seq: sa, tokens: Int32Array.from(A.slice(8)) },
    ]);
    expect(maxDiff(logitsRow(r2, 1), fullA.subarray((A.length - 1) * V))).toBeLessThan(1e-4);
    const fullB2 = teacherForced(model, [...B, 9]);
    expect(maxDiff(logitsRow(r2, 0), fullB2.subarray(B.length * V))).toBeLessThan(1e-4);
  });
});
