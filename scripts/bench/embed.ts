// Embedding throughput: embeddings per second of `--inputs` inputs of `--tokens` token ids each, sent as one
// batch (one padding-free step, as /v1/embeddings runs a request), on random-weight models with the shapes of
// bert-base (BertModel, f32 as published, mean pooling) and Qwen3-Embedding-0.6B (Qwen3, bf16 as published, and
// MLX affine 8-bit g64; last-token pooling). Medians of `--reps` timed runs after one warm-up.
//
// The peer, in the same run: llama.cpp's llama-bench in embedding mode (-embd 1) on a random-weight GGUF of the
// Qwen3-0.6B shape in bf16, which runs one sequence of `--tokens` tokens per run (embeddings/s = its tokens/s over
// --tokens). llama.cpp's BERT is left out: the peer's GGUF writer knows the llama and qwen3 architectures only.
//
//   bun scripts/bench/embed.ts [--inputs 32] [--tokens 128] [--reps 5] [--models bert-base,qwen3-embedding-0.6b]
//                              [--formats f32,bf16,q8] [--no-peer]
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { getBackend } from "../../src/backend/index.ts";
import { Embedder } from "../../src/engine/embedder.ts";
import { defaultDbPath, MetricsStore, type BenchmarkRow } from "../../src/metrics/store.ts";
import { BERT_BASE, writeRandomBert, writeSentenceTransformers } from "./model/random_bert.ts";
import { QWEN3_0_6B, writeRandomQwen3 } from "./model/random_qwen3.ts";
import { defaultThreads, peerEmbed } from "./peer/llama_cpp.ts";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const INPUTS = Number(arg("inputs", "32"));
const TOKENS = Number(arg("tokens", "128"));
const REPS = Number(arg("reps", "5"));
const MODELS = arg("models", "bert-base,qwen3-embedding-0.6b").split(",");
const FORMATS = arg("formats", "f32,bf16,q8").split(",");
const PEER = !process.argv.includes("--no-peer");

interface Variant {
  model: string;
  format: string;
  vocab: number;
  write: (dir: string) => void;
  peer?: () => ReturnType<typeof peerEmbed>;
}

const VARIANTS: Variant[] = [
  { model: "bert-base", format: "f32", vocab: BERT_BASE.vocab, write: (d) => writeRandomBert(d, BERT_BASE) },
  ...([0, 8] as const).map(
    (bits): Variant => ({
      model: "qwen3-embedding-0.6b",
      format: bits === 0 ? "bf16" : `q${bits}`,
      vocab: 151936,
      write: (d) => {
        writeRandomQwen3(d, QWEN3_0_6B, bits);
        writeSentenceTransformers(d, QWEN3_0_6B.hiddenSize, "lasttoken");
      },
      ...(bits === 0 ? { peer: () => peerEmbed("qwen3-0.6b", "bf16", { prompt: TOKENS, reps: REPS }) } : {}),
    }),
  ),
];

/** The model directory, written once into the cache (random weights of a fixed seed). */
function modelDir(v: Variant): string {
  const root = join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "rmlx", "bench", "embed");
  const dir = join(root, `${v.model}-${v.format}`);
  if (existsSync(dir)) return dir;
  mkdirSync(root, { recursive: true });
  const tmp = `${dir}.partial`;
  rmSync(tmp, { recursive: true, force: true });
  v.write(tmp);
  renameSync(tmp, dir);
  return dir;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Seeded token ids away from the vocabulary's special ends. */
function inputs(vocab: number): number[][] {
  let x = 12345;
  return Array.from({ length: INPUTS }, () =>
    Array.from({ length: TOKENS }, () => {
      x = (x * 1103515245 + 12345) >>> 0;
      return 1000 + (x % (vocab - 2000));
    }),
  );
}

const rows: BenchmarkRow[] = [];
console.log(`embed: ${INPUTS} inputs x ${TOKENS} tokens per batch, median of ${REPS} runs, ${defaultThreads()} threads`);
console.log("model                 format  rmlx emb/s  rmlx tok/s  ms/batch  peer emb/s  rmlx/peer");
for (const v of VARIANTS.filter((x) => MODELS.includes(x.model) && FORMATS.includes(x.format))) {
  const e = Embedder.load(modelDir(v));
  // exactly TOKENS ids per input, the end token last where the pooling needs one
  const batch = inputs(v.vocab).map((ids) => (e.withEnd(ids).length > TOKENS ? e.withEnd(ids.slice(0, TOKENS - 1)) : ids));
  e.embed(batch);
  const times: number[] = [];
  for (let r = 0; r < REPS; r++) {
    const t0 = performance.now();
    e.embed(batch);
    times.push((performance.now() - t0) / 1000);
  }
  const s = median(times);
  const embPerS = INPUTS / s;
  let peerCol = "-";
  let ratio = "-";
  const row: BenchmarkRow = { name: "embed", shape: `${v.model} ${v.format} ${INPUTS}x${TOKENS}`, figure: embPerS, unit: "emb/s" };
  rows.push(row);
  if (PEER && v.peer) {
    const p = v.peer();
    if (p.ok) {
      const peerEmb = p.promptTps / TOKENS;
      row.peerName = "llama.cpp llama-bench -embd 1 bf16";
      row.peerFigure = peerEmb;
      peerCol = peerEmb.toFixed(2);
      ratio = (embPerS / peerEmb).toFixed(2);
    } else {
      peerCol = "n/a";
      console.log(`  peer: ${p.reason}`);
    }
  }
  console.log(
    `${v.model.padEnd(21)} ${v.format.padEnd(7)} ${embPerS.toFixed(2).padStart(10)}  ${(embPerS * TOKENS).toFixed(0).padStart(10)}  ${(s * 1000).toFixed(0).padStart(8)}  ${peerCol.padStart(10)}  ${ratio.padStart(9)}`,
  );
}
const be = getBackend();
const store = MetricsStore.open(defaultDbPath());
store.startRun({ kind: "bench", backend: be.name, device: be.device });
store.recordBenchmarks(rows);
store.close();
