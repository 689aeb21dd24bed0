// bun run bench kv [--contexts 4096,16384] [--codecs f16,q8,...] [--reps 5] [--json]
// What each KV codec costs and saves:
//  (a) NLL change against f32 KV on the built-in model's held-out conversations (test/fixtures/
//      default_model_reference.json, concatenated, prefilled in 64-token chunks so that later tokens read packed
//      pages);
//  (b) mean KL divergence of next-token distributions against f32 KV, and against transformers' own logits, on the
//      transformers fixtures (test/fixtures/models);
//  (c) on a Qwen3-0.6B-shaped cache (28 layers, 8 KV heads, head_dim 128, 16 query heads): KV bytes per token,
//      resident memory added by a cache filled to each context (pool sized for twice that, so lazy growth
//      shows), and the time of one decode step's attention over all 28 layers. This is the KV-dependent part of
//      decode, timed alone; the full random-weight model (scripts/bench/model/random_qwen3.ts) is not run here.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { getBackend } from "../../src/backend/index.ts";
import { builtinModelDir } from "../../src/builtin/index.ts";
import { kvBytesPerToken, kvCodecProblem, kvLayerFormat, parseKvCodec } from "../../src/quant/kv_codec.ts";
import { argmaxChanges, meanKl, meanNll, teacherForcedLogProbs } from "../../src/engine/kv/quality.ts";
import { logSoftmax } from "../../src/engine/logprobs.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { SafetensorsFile } from "../../src/io/safetensors.ts";
import { loadModel } from "../../src/models/registry.ts";

const ROOT = join(import.meta.dir, "../..");
const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const CODECS = opt("codecs", "f16,bf16,q8,fp8,k8v4,q4,q4g32,turbo4,turbo3").split(",");
const CONTEXTS = opt("contexts", "4096,16384").split(",").map(Number);
const REPS = Number(opt("reps", "5"));
const JSON_OUT = args.includes("--json");
const be = getBackend();
const log = (s: string) => {
  if (!JSON_OUT) process.stdout.write(s + "\n");
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]) * 1024;

// (a) NLL on the built-in model.
const ref = JSON.parse(readFileSync(join(ROOT, "test/fixtures/default_model_reference.json"), "utf8")) as {
  answers: { prompt_ids: number[]; tokens: number[] }[];
};
const ids = ref.answers.flatMap((a) => [...a.prompt_ids, ...a.tokens]);
const builtin = loadModel(be, openModelDir(builtinModelDir()));
const base = teacherForcedLogProbs(builtin, ids, "f32");
const baseNll = meanNll(base, ids);
const nll: Record<string, unknown>[] = [];
log(`(a) built-in model, ${ids.length} held-out tokens (${ref.answers.length} conversations), f32 KV NLL ${baseNll.toFixed(5)}`);
for (const c of CODECS) {
  const lp = teacherForcedLogProbs(builtin, ids, c);
  const n = meanNll(lp, ids);
  const row = { codec: c, nll: n, nll_change_pct: (n / baseNll - 1) * 100, kl: meanKl(base, lp), argmax_changes: argmaxChanges(base, lp) };
  nll.push(row);
  log(`  ${c.padEnd(6)} NLL ${n.toFixed(5)} (${row.nll_change_pct >= 0 ? "+" : ""}${row.nll_change_pct.toFixed(3)}%)  KL ${row.kl.toExponential(2)}  argmax changes ${row.argmax_changes}/${ids.length}`);
}

// (b) KL on the transformers fixtures.
const index = JSON.parse(readFileSync(join(ROOT, "test/fixtures/models/INDEX.json"), "utf8")) as { fixtures: { name: string }[] };
const kl: Record<string, unknown>[] = [];
log("(b) transformers fixtures: mean KL vs f32 KV (and vs transformers' logits), per prompt");
for (const { name } of index.fixtures) {
  const dir = join(ROOT, "test/fixtures/models", name);
  const md = openModelDir(dir);
  const model = loadModel(be, md);
  const refJson = JSON.parse(readFileSync(join(dir, "reference.json"), "utf8")) as { prompts: { ids: number[]; logits_key: string }[] };
  const refLogits = SafetensorsFile.open(join(dir, "reference.safetensors"));
  const cells: string[] = [];
  for (const c of ["f32", ...CODECS]) {
    const problem = model.layers.map((l) => kvCodecProblem(parseKvCodec(c), l.headDim)).find((p) => p);
    if (problem) {
      cells.push(`${c} n/a`);
      kl.push({ fixture: name, codec: c, error: problem });
      continue;
    }
    let vsF32 = 0;
    let vsRef = 0;
    refJson.prompts.forEach((p) => {
      const f32 = teacherForcedLogProbs(model, p.ids, "f32", 16);
      const lp = teacherForcedLogProbs(model, p.ids, c, 16);
      vsF32 += meanKl(f32, lp) / refJson.prompts.length;
      const t = refLogits.tensors.get(p.logits_key)!;
      const data = new Float32Array(new Uint8Array(t.bytes).buffer);
      const V = t.shape[1]!;
      const rows = Array.from({ length: t.shape[0]! }, (_, r) => logSoftmax(data.subarray(r * V, (r + 1) * V)));
      vsRef += meanKl(rows, lp) / refJson.prompts.length;
    });
    kl.push({ fixture: name, codec: c, kl_vs_f32: vsF32, kl_vs_transformers: vsRef });
    cells.push(`${c} ${vsF32.toExponential(1)} (${vsRef.toExponential(1)})`);
  }
  log(`  ${name.padEnd(18)} ${cells.join("  ")}`);
}

// (c) Qwen3-0.6B-shaped cache.
const L = 28;
const KVH = 8;
const H = 16;
const D = 128;
const layers = Array.from({ length: L }, () => ({ kvHeads: KVH, headDim: D }));
const f16Bytes = kvBytesPerToken(parseKvCodec("f16"), layers);
const mem: Record<string, unknown>[] = [];
log(`(c) Qwen3-0.6B-shaped KV (28 layers x 8 KV heads x 128), decode attention of one token over all layers, median of ${REPS}`);
for (const ctx of CONTEXTS) {
  for (const c of CODECS) {
    const codec = parseKvCodec(c);
    const bpt = kvBytesPerToken(codec, layers);
    const bs = 16;
    const blocks = Math.ceil((2 * ctx) / bs);
    const r0 = rss();
    const pools = layers.map((l) => be.createKvPool(blocks, bs, l.kvHeads, l.headDim, kvLayerFormat(codec, l.headDim)));
    // Fill ctx tokens, 512 at a time.
    for (const pool of pools) {
      for (let s = 0; s < ctx; s += 512) {
        const n = Math.min(512, ctx - s);
        be.scope(() => {
          const k = be.fromArray(randomRows(n * KVH * D, s + 1), [n, KVH, D], "f32");
          const v = be.fromArray(randomRows(n * KVH * D, s + 7), [n, KVH, D], "f32");
          be.kvWrite(pool, k, v, Int32Array.from({ length: n }, (_, i) => s + i));
          be.eval();
        });
      }
    }
    const grown = rss() - r0;
    const batch = {
      blockTables: Int32Array.from({ length: blocks }, (_, i) => i),
      maxBlocks: blocks,
      seqLens: Int32Array.of(ctx),
      tokenSeq: Int32Array.of(0),
      positions: Int32Array.of(ctx - 1),
    };
    const q = randomRows(H * D, 3);
    const times: number[] = [];
    for (let r = 0; r < REPS + 1; r++) {
      const t0 = performance.now();
      be.scope(() => {
        const qt = be.fromArray(q, [1, H, D], "f32");
        const outs = pools.map((p) => be.pagedAttention(qt, p, batch, { scale: 1 / Math.sqrt(D) }));
        be.eval(...outs);
      });
      if (r > 0) times.push(performance.now() - t0);
    }
    for (const p of pools) for (const t of [p.k, p.v, p.kScales, p.kBiases, p.vScales, p.vBiases]) if (t) be.dispose(t);
    const row = {
      context: ctx,
      codec: c,
      kv_bytes_per_token: bpt,
      vs_f16: bpt / f16Bytes,
      kv_bytes: bpt * ctx,
      rss_growth_bytes: grown,
      attention_ms: median(times),
    };
    mem.push(row);
    log(
      `  ${String(ctx).padStart(6)} ${c.padEnd(6)} ${bpt} B/token (${row.vs_f16.toFixed(3)}x f16)  KV ${(row.kv_bytes / 2 ** 20).toFixed(0)} MiB, RSS +${(grown / 2 ** 20).toFixed(0)} MiB  attention ${row.attention_ms.toFixed(2)} ms/token`,
    );
  }
}

if (JSON_OUT) process.stdout.write(JSON.stringify({ nll, kl, memory: mem }) + "\n");

function randomRows(n: number, seed: number): Float32Array {
  let x = (seed * 2654435761) >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = ((x >>> 0) / 2 ** 32 - 0.5) * 4;
  }
  return out;
}
