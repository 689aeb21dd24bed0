// `rmlx convert` on sentence-transformers models: the encoder is quantized like any model's Linear and embedding
// weights, the pipeline's files and module folders travel with it, and the result still embeds close to
// sentence-transformers' float32 reference.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { convert } from "../../src/convert/convert.ts";
import { Embedder } from "../../src/engine/embedder.ts";
import { WeightStore } from "../../src/io/weights.ts";
import { cleanupScratch, tmp } from "./helpers.ts";

const EMB = join(import.meta.dir, "../fixtures/embeddings");

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! * a[i]!;
    bb += b[i]! * b[i]!;
  }
  return ab / Math.sqrt(aa * bb);
}

afterAll(cleanupScratch);

describe("convert an embedding model", () => {
  for (const name of ["bert_mean", "roberta_cls", "qwen3_last", "gemma3_dense"]) {
    test(`${name}: 8-bit affine, group 32; the pipeline files copied; embeddings within 0.999 of sentence-transformers'`, async () => {
      const out = join(tmp(), name);
      await convert({ model: join(EMB, name), out, force: false, quantize: true, mode: "affine", bits: 8, groupSize: 32, dequantize: false });
      for (const f of ["modules.json", "config_sentence_transformers.json", "1_Pooling/config.json", "tokenizer.json"]) expect(existsSync(join(out, f))).toBe(true);
      const quantized = WeightStore.open(out)
        .names()
        .filter((n) => n.endsWith(".scales"));
      expect(quantized.length).toBeGreaterThan(4);
      const ref = JSON.parse(readFileSync(join(EMB, name, "reference.json"), "utf8")) as { cases: { input_ids: number[][]; embeddings: number[][] }[] };
      const e = Embedder.load(out);
      const c = ref.cases[0]!;
      e.embed(c.input_ids).forEach((v, i) => {
        const cos = cosine(v, c.embeddings[i]!);
        if (!(cos >= 0.999)) throw new Error(`${name} input ${i}: cosine ${cos} after 8-bit quantization`);
      });
    });
  }

  test("gemma3_dense keeps its Dense layers (float) in their folders", async () => {
    const out = join(tmp(), "g");
    await convert({ model: join(EMB, "gemma3_dense"), out, force: false, quantize: true, mode: "affine", bits: 8, groupSize: 32, dequantize: false });
    expect(readFileSync(join(out, "2_Dense", "model.safetensors"))).toEqual(readFileSync(join(EMB, "gemma3_dense", "2_Dense", "model.safetensors")));
    expect(existsSync(join(out, "4_Normalize", "config.json"))).toBe(true);
  });
});
