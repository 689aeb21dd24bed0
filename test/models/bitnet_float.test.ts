// BitNet with float activations (--bitnet-activations float, mlx-lm's arithmetic): each ternary linear computes
// x @ (t * scale)^T, or x @ (t / scale)^T for BitLinear. Checked against float64 sums of that formula, and at model
// level against the same checkpoint written out as plain float weights t * scale (which transformers and rmlx run
// as ordinary Linears, tested by the bitnet_float fixture).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { getBackend } from "../../src/backend/index.ts";
import { setGemvMode } from "../../src/backend/native/lib.ts";
import { forwardBatch } from "../../src/engine/forward_batch.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { SafetensorsFile } from "../../src/io/safetensors.ts";
import { ternaryCodesWeight } from "../../src/models/bitnet.ts";
import type { Model } from "../../src/models/model.ts";
import { loadModel } from "../../src/models/registry.ts";
import { decodeFloats } from "../../src/quant/dtype.ts";
import { expectClose, randn, rng } from "../backend/helpers.ts";
import { type TensorSpec, tempDir, writeModelDir } from "../io/helpers.ts";
import { fixtureReference, relError } from "./reference.ts";

const ROOT = join(import.meta.dir, "../fixtures/models/bitnet");
const be = getBackend();
const fr = Math.fround;

// The native backend's default decode products of 2-bit weights put x in 16-bit fixed point; f32 keeps them exact.
beforeAll(() => setGemvMode("f32"));
afterAll(() => setGemvMode("x16"));

/** Values t in {-1, 0, 1} [N, K] and their packing as transformers stores them (rows r + i * N/4 in bits 2i). */
function randomPacked(N: number, K: number, seed: number): { t: Int8Array; packed: Uint8Array } {
  const r = rng(seed);
  const t = Int8Array.from({ length: N * K }, () => Math.floor(r() * 3) - 1);
  const R = N / 4;
  const packed = new Uint8Array(R * K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) packed[(n % R) * K + k]! |= (t[n * K + k]! + 1) << (2 * Math.floor(n / R));
  return { t, packed };
}

describe("ternary codes as a float-activation weight", () => {
  const SCALE = fr(0.0371);
  // in_features of group 128, of group 32 only, and of no group (f32 values)
  for (const [M, K, N] of [
    [1, 256, 16],
    [3, 96, 8],
    [2, 100, 12],
  ] as const) {
    test(`M=${M} K=${K} N=${N}: x @ (t * scale)^T and x @ (t / scale)^T within f32 rounding of float64`, () => {
      const { t, packed } = randomPacked(N, K, K + N);
      const x = randn(M * K, M + K, 2);
      const kept: Uint8Array[] = [];
      const w = ternaryCodesWeight(be, packed, N, K, (b) => kept.push(b));
      for (const factor of [SCALE, 1 / SCALE]) {
        const y = be.toFloat32(be.scale(be.linear(be.fromArray(x, [M, K], "f32"), w), factor));
        const want = new Float64Array(M * N);
        for (let m = 0; m < M; m++)
          for (let n = 0; n < N; n++) {
            let d = 0;
            for (let k = 0; k < K; k++) d += x[m * K + k]! * t[n * K + k]! * fr(factor);
            want[m * N + n] = d;
          }
        const big = want.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
        expectClose(y, want, big * 1e-6, 1e-6);
      }
    });
  }
});

/** The fixture's checkpoint with every packed linear written as f32 values t * scale (t / scale for BitLinear). */
function asFloatCheckpoint(name: string): string {
  const src = join(ROOT, name);
  const cfg = JSON.parse(readFileSync(join(src, "config.json"), "utf8")) as Record<string, unknown>;
  const divide = (cfg.quantization_config as Record<string, unknown>).linear_class === "bitlinear";
  delete cfg.quantization_config;
  const file = SafetensorsFile.open(join(src, "model.safetensors"));
  const tensors: Record<string, TensorSpec> = {};
  for (const [key, e] of file.tensors) {
    if (key.endsWith(".weight_scale")) continue;
    const bytes = new Uint8Array(e.bytes);
    if (e.dtype !== "U8") {
      tensors[key] = { dtype: e.dtype, shape: e.shape, data: bytes };
      continue;
    }
    const sc = file.tensors.get(key.replace(/weight$/, "weight_scale"))!;
    const scale = decodeFloats(sc.dtype as "BF16", new Uint8Array(sc.bytes))[0]!;
    const [R, K] = e.shape as [number, number];
    const values = new Float32Array(4 * R * K);
    for (let n = 0; n < 4 * R; n++)
      for (let k = 0; k < K; k++) {
        const t = ((bytes[(n % R) * K + k]! >> (2 * Math.floor(n / R))) & 3) - 1;
        values[n * K + k] = divide ? t / scale : t * scale;
      }
    tensors[key] = { dtype: "F32", shape: [4 * R, K], data: new Uint8Array(values.buffer) };
  }
  return writeModelDir(join(tempDir(), name), cfg, tensors);
}

function logits(model: Model, ids: number[]): Float32Array {
  const cache = new KvCache(model.backend, model.layers, { numBlocks: 64, blockSize: 16 });
  return forwardBatch(model, cache, [{ seq: new Sequence(), tokens: Int32Array.from(ids) }], "all").logits;
}

describe.each(["bitnet_autobitlinear", "bitnet_bitlinear"])("%s with float activations", (name) => {
  test("gives the logits of its weights as plain float Linears, not those of int8 activations", () => {
    const md = openModelDir(join(ROOT, name));
    const float = loadModel(be, md, { bitnetActivations: "float" });
    const plain = loadModel(be, openModelDir(asFloatCheckpoint(name)));
    const int8 = loadModel(be, md);
    for (const p of fixtureReference(join(ROOT, name)).prompts) {
      const want = logits(plain, p.ids);
      const V = float.vocabSize;
      const got = logits(float, p.ids);
      expect(relError(got, want, V)).toBeLessThan(1e-5);
      expect(relError(logits(int8, p.ids), want, V)).toBeGreaterThan(1e-3);
    }
  });
});
