// Embedding models against sentence-transformers: every fixture of test/fixtures/embeddings (tiny random models
// saved by sentence-transformers, with its own input ids and float32 embeddings; scripts/make_embedding_fixtures.py)
// must tokenize to the same ids and embed to a cosine of at least 0.9999, batched or one by one.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Embedder } from "../../src/engine/embedder.ts";

const ROOT = join(import.meta.dir, "../fixtures/embeddings");

interface Case {
  prompt_name: string | null;
  texts: string[];
  input_ids: number[][];
  embeddings: number[][];
}
interface Reference {
  pooling: string;
  normalize: boolean;
  dimension: number;
  max_seq_length: number;
  cases: Case[];
}

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

const FIXTURES = readdirSync(ROOT, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .sort();

describe("embedding fixtures against sentence-transformers", () => {
  test("every kind is there", () => {
    expect(FIXTURES).toEqual(["bert_max", "bert_mean", "gemma3_dense", "qwen3_last", "roberta_cls"]);
  });

  test("a request of more tokens than one step holds runs as several steps, with the same results", () => {
    const e = Embedder.load(join(ROOT, "bert_mean"));
    const ids = Array.from({ length: 128 }, (_, i) => 5 + (i % 300));
    const inputs = Array.from({ length: 70 }, (_, k) => ids.map((t, i) => (i === 1 ? 5 + k : t)));
    const all = e.embed(inputs);
    expect(all.length).toBe(70);
    for (const k of [0, 63, 64, 69]) expect(cosine(all[k]!, e.embed([inputs[k]!])[0]!)).toBeGreaterThan(0.999999);
  });

  test("bad inputs are refused with the reason", () => {
    const e = Embedder.load(join(ROOT, "qwen3_last"));
    expect(() => e.embed([[1, 2], []])).toThrow("an input has no tokens");
    expect(() => e.embed([[1, 320]])).toThrow("token 320 is outside the vocabulary (0..319)");
    expect(() => e.tokenize("x", "nope")).toThrow("prompt 'nope' is not one of this model's prompts (document, query)");
  });

  for (const name of FIXTURES) {
    const dir = join(ROOT, name);
    const ref = JSON.parse(readFileSync(join(dir, "reference.json"), "utf8")) as Reference;

    test(`${name}: pipeline read from the sentence-transformers files`, () => {
      const e = Embedder.load(dir);
      expect(e.info.pooling).toBe(ref.pooling as never);
      expect(e.info.normalize).toBe(ref.normalize);
      expect(e.info.dimension).toBe(ref.dimension);
      expect(e.info.maxTokens).toBe(ref.max_seq_length);
    });

    for (const c of ref.cases) {
      const label = c.prompt_name ? `prompt '${c.prompt_name}'` : "no prompt";
      test(`${name}, ${label}: same input ids, cosine >= 0.9999 batched and one by one`, () => {
        const e = Embedder.load(dir);
        const ids = c.texts.map((t) => e.tokenize(t, c.prompt_name ?? undefined));
        expect(ids).toEqual(c.input_ids);
        const batched = e.embed(ids);
        batched.forEach((v, i) => {
          const cos = cosine(v, c.embeddings[i]!);
          if (!(cos >= 0.9999)) throw new Error(`${name} input ${i}: cosine ${cos}`);
        });
        ids.forEach((one, i) => {
          const [alone] = e.embed([one]);
          expect(cosine(alone!, batched[i]!)).toBeGreaterThan(0.999999);
        });
      });
    }
  }
});
