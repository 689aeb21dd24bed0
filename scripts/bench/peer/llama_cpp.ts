// The benchmark peer: llama.cpp's own CPU backend, built by build_llama.sh into a cache directory. Benchmarks
// report their figures as ratios against these, measured in the same run on the same machine and threads.
//   peerMatmul    y = x @ W^T through ggml_mul_mat (ggml_matmul, our timing program linked against ggml)
//   peerOpsMatmul the same product timed by llama.cpp's test-backend-ops on its own fixed shapes (a cross-check)
//   peerGenerate  prompt and decode tokens/s of llama-bench on a random-weight GGUF of a benchmark model
// Every function returns { ok: false, reason } rather than throwing when the peer is not built or a run fails.
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { cpus, homedir } from "node:os";
import { join } from "node:path";
import { MODELS, type PeerModel, writeRandomModel } from "./random_gguf.ts";

export type PeerResult<T> = ({ ok: true } & T) | { ok: false; reason: string };
export type MatmulType = "q4_0" | "q8_0" | "mxfp4" | "tq1_0" | "tq2_0" | "bf16" | "f16" | "f32";
export type GenerateType = "q4_0" | "bf16" | "f16";
export { MODELS, type PeerModel };

export interface MatmulFigures {
  /** 2*m*n*k over the best time of one product. */
  gflops: number;
  usPerRun: number;
  /** Bytes of the weight matrix in its ggml type, block scales included. */
  weightBytes: number;
  /** weightBytes over the time: the figure of merit for decode shapes (m = 1). */
  weightGBs: number;
  threads: number;
}

export interface GenerateFigures {
  promptTps: number;
  decodeTps: number;
  /** Size of the GGUF that was benchmarked. */
  fileBytes: number;
  threads: number;
}

/** Where build_llama.sh puts the peer: $RMLX_PEER_DIR, else ~/.cache/rmlx/peer/llama.cpp. */
export function peerDir(): string {
  return process.env.RMLX_PEER_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "rmlx/peer/llama.cpp");
}

/** Same thread count as our kernels use by default: every core. */
export function defaultThreads(): number {
  return Number(process.env.RMLX_THREADS) || cpus().length;
}

function tool(name: string): string | null {
  const p = join(peerDir(), name);
  return existsSync(p) ? p : null;
}

const notBuilt = (name: string) => ({
  ok: false as const,
  reason: `llama.cpp peer not built (${name} missing in ${peerDir()}; run scripts/bench/peer/build_llama.sh)`,
});

function run(cmd: string[]): { ok: true; out: string } | { ok: false; reason: string } {
  const p = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (p.exitCode === 0) return { ok: true, out: p.stdout.toString() };
  const err = p.stderr.toString().trim().split("\n").slice(-3).join(" | ");
  return { ok: false, reason: `${cmd[0]!.split("/").pop()} exited ${p.exitCode}: ${err}` };
}

/**
 * Best time of y[m,n] = x[m,k] @ W[n,k]^T with W in `type` and x f32, as llama.cpp computes it (ggml_mul_mat on the
 * CPU backend; for quantized W it quantizes x to the matching dot type inside the timed product, as llama.cpp does).
 */
export function peerMatmul(
  shape: { m: number; n: number; k: number },
  type: MatmulType,
  opts: { threads?: number; budgetS?: number } = {},
): PeerResult<MatmulFigures> {
  const bin = tool("ggml_matmul");
  if (!bin) return notBuilt("ggml_matmul");
  const threads = opts.threads ?? defaultThreads();
  const { m, n, k } = shape;
  const r = run([bin, type, String(m), String(k), String(n), String(threads), String(opts.budgetS ?? 0.5)]);
  if (!r.ok) return r;
  const j = JSON.parse(r.out.trim()) as { seconds: number; weight_bytes: number };
  return {
    ok: true,
    gflops: (2 * m * n * k) / j.seconds / 1e9,
    usPerRun: j.seconds * 1e6,
    weightBytes: j.weight_bytes,
    weightGBs: j.weight_bytes / j.seconds / 1e9,
    threads,
  };
}

export interface OpsCase {
  case: string;
  m: number;
  n: number;
  k: number;
  usPerRun: number;
  gflops: number;
}

/**
 * MUL_MAT cases of `test-backend-ops perf` for one weight type (its fixed shapes: W 4096x14336 with n = 1..5, 8,
 * 512 rows of x, among others). test-backend-ops runs the CPU backend on half the cores, so compare these with
 * peerMatmul(..., { threads: max(1, cores/2) }).
 */
export function peerOpsMatmul(type: MatmulType, filter = "m=4096,n=1,k=14336,"): PeerResult<{ cases: OpsCase[] }> {
  const bin = tool("test-backend-ops");
  if (!bin) return notBuilt("test-backend-ops");
  const r = run([bin, "perf", "-b", "CPU", "-o", "MUL_MAT", "-p", `type_a=${type},type_b=f32,${filter}`]);
  if (!r.ok) return r;
  // Its csv output leaves the timings out, so read the console lines: "  MUL_MAT(<params>):  <runs> runs - <t> us/run - ...".
  const cases: OpsCase[] = [];
  for (const line of r.out.split("\n")) {
    const hit = line.match(/^\s*MUL_MAT\((.*)\):\s+\d+ runs -\s+([\d.]+) us\/run/);
    if (!hit) continue;
    const params = hit[1]!;
    const num = (key: string) => Number(params.match(new RegExp(`(?:^|,)${key}=(\\d+)`))?.[1]);
    // test-backend-ops calls the rows of W m and the rows of x n.
    const [m, n, k] = [num("n"), num("m"), num("k")];
    const us = Number(hit[2]);
    cases.push({ case: params, m, n, k, usPerRun: us, gflops: (2 * m * n * k) / us / 1e3 });
  }
  if (!cases.length) return { ok: false, reason: `test-backend-ops: no MUL_MAT case matched type_a=${type},${filter}` };
  return { ok: true, cases };
}

/** The random-weight GGUF of a benchmark model in `type`, written (and quantized) on first use into the cache. */
export function peerModelFile(model: PeerModel, type: GenerateType, threads = defaultThreads()): PeerResult<{ path: string }> {
  const dir = join(peerDir(), "models");
  const path = join(dir, `${model}-${type}.gguf`);
  if (existsSync(path)) return { ok: true, path };
  mkdirSync(dir, { recursive: true });
  const tmp = `${path}.partial`;
  if (type === "q4_0") {
    // Quantized from the f16 file with --pure, so every matrix (the tied embedding/head too) is Q4_0, as an MLX
    // 4-bit model quantizes every matrix; llama-quantize's default would keep the head at Q6_K.
    const quantize = tool("llama-quantize");
    if (!quantize) return notBuilt("llama-quantize");
    const src = peerModelFile(model, "f16", threads);
    if (!src.ok) return src;
    const r = run([quantize, "--pure", src.path, tmp, "Q4_0", String(threads)]);
    if (!r.ok) {
      rmSync(tmp, { force: true });
      return r;
    }
  } else {
    writeRandomModel(tmp, model, type);
  }
  renameSync(tmp, path);
  return { ok: true, path };
}

interface BenchRow {
  n_prompt: number;
  n_gen: number;
  n_depth?: number;
  avg_ts: number;
  model_size: number;
}

function llamaBench(bin: string, args: string[]): PeerResult<{ rows: BenchRow[] }> {
  const r = run([bin, ...args, "-o", "json"]);
  if (!r.ok) return r;
  try {
    return { ok: true, rows: JSON.parse(r.out) as BenchRow[] };
  } catch {
    return { ok: false, reason: "llama-bench: output is not JSON" };
  }
}

/**
 * llama-bench on the random-weight GGUF of `model`: prompt tokens/s of a `prompt`-token prefill from an empty
 * context, and decode tokens/s of `gen` tokens after a `prompt`-token context, as our generate benchmark measures
 * (llama-bench's -d puts the context in place before the timed run). One warm-up and `reps` timed runs each.
 */
export function peerGenerate(
  model: PeerModel,
  type: GenerateType,
  opts: { prompt?: number; gen?: number; threads?: number; reps?: number } = {},
): PeerResult<GenerateFigures> {
  const bin = tool("llama-bench");
  if (!bin) return notBuilt("llama-bench");
  if (!(model in MODELS)) return { ok: false, reason: `unknown peer model ${model}` };
  const { prompt = 512, gen = 128, reps = 1 } = opts;
  const threads = opts.threads ?? defaultThreads();
  const file = peerModelFile(model, type, threads);
  if (!file.ok) return file;
  const common = ["-m", file.path, "-t", String(threads), "-r", String(reps)];
  const pp = llamaBench(bin, [...common, "-p", String(prompt), "-n", "0"]);
  if (!pp.ok) return pp;
  const tg = llamaBench(bin, [...common, "-p", "0", "-n", String(gen), "-d", String(prompt)]);
  if (!tg.ok) return tg;
  const p = pp.rows.find((row) => row.n_prompt === prompt && row.n_gen === 0);
  const g = tg.rows.find((row) => row.n_gen === gen);
  if (!p || !g) return { ok: false, reason: "llama-bench: expected rows missing from its output" };
  return { ok: true, promptTps: p.avg_ts, decodeTps: g.avg_ts, fileBytes: Bun.file(file.path).size, threads };
}

/**
 * llama-bench in embedding mode (-embd 1) on the random-weight GGUF of `model`: tokens/s of one `prompt`-token
 * sequence run through the stack with its embeddings kept, one sequence per run. One warm-up and `reps` timed runs.
 */
export function peerEmbed(
  model: PeerModel,
  type: GenerateType,
  opts: { prompt?: number; threads?: number; reps?: number } = {},
): PeerResult<{ promptTps: number; threads: number }> {
  const bin = tool("llama-bench");
  if (!bin) return notBuilt("llama-bench");
  if (!(model in MODELS)) return { ok: false, reason: `unknown peer model ${model}` };
  const { prompt = 128, reps = 3 } = opts;
  const threads = opts.threads ?? defaultThreads();
  const file = peerModelFile(model, type, threads);
  if (!file.ok) return file;
  const r = llamaBench(bin, ["-m", file.path, "-t", String(threads), "-r", String(reps), "-p", String(prompt), "-n", "0", "-embd", "1"]);
  if (!r.ok) return r;
  const row = r.rows.find((x) => x.n_prompt === prompt && x.n_gen === 0);
  if (!row) return { ok: false, reason: "llama-bench: expected row missing from its output" };
  return { ok: true, promptTps: row.avg_ts, threads };
}
