// Prints the peer's own figures, so the ratios in the kernels and generate tables can be checked by hand.
//   bun scripts/bench/peer/main.ts [--matmul] [--ops] [--generate] [--models qwen3-0.6b,llama-3.2-1b]
//                                  [--types q4_0,bf16,f16] [--threads N] [--prompt 512] [--gen 128]
// With none of --matmul/--ops/--generate, all three run.
import { cpus, loadavg } from "node:os";
import {
  defaultThreads, type GenerateType, MODELS, type MatmulType, peerDir, peerGenerate, type PeerModel, peerMatmul,
  peerOpsMatmul,
} from "./llama_cpp.ts";

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(`--${name}`);
const opt = (name: string, dflt: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] ? argv[i + 1]! : dflt;
};
const all = !flag("matmul") && !flag("ops") && !flag("generate");
const threads = Number(opt("threads", String(defaultThreads())));
const f = (v: number, d = 1) => v.toFixed(d).padStart(9);

// Spinning thread pools (llama.cpp's OpenMP barriers, and ours) collapse when other processes hold the cores, so
// the load is printed beside the figures.
const load = () => `load average ${loadavg()[0]!.toFixed(1)} on ${cpus().length} cores`;
console.log(`llama.cpp peer in ${peerDir()}, ${threads} threads, ${load()}`);

if (all || flag("matmul")) {
  console.log("\nmatmul (ggml_mul_mat): y[m,n] = x[m,k] @ W[n,k]^T");
  console.log(`${"type".padEnd(7)}${"m x k @ n x k".padEnd(24)}${"us".padStart(9)}${"GFLOP/s".padStart(9)}${"GB/s W".padStart(9)}`);
  const decode: [number, number][] = [[4096, 4096], [14336, 4096]];
  const cases: [MatmulType, number, number, number][] = [];
  for (const [n, k] of decode)
    for (const t of ["q4_0", "q8_0", "mxfp4", "bf16", "f16", "f32"] as MatmulType[]) cases.push([t, 1, n, k]);
  for (const t of ["q4_0", "mxfp4", "bf16"] as MatmulType[]) cases.push([t, 512, 4096, 4096]);
  for (const [type, m, n, k] of cases) {
    const r = peerMatmul({ m, n, k }, type, { threads, budgetS: 0.4 });
    const label = `${m}x${k} @ ${n}x${k}`.padEnd(24);
    if (!r.ok) console.log(`${type.padEnd(7)}${label}${r.reason}`);
    else console.log(`${type.padEnd(7)}${label}${f(r.usPerRun, 0)}${f(r.gflops)}${m === 1 ? f(r.weightGBs) : ""}`);
  }
}

if (all || flag("ops")) {
  // test-backend-ops times on half the cores; ggml_matmul on the same count must agree with it.
  const half = Math.max(1, Math.floor(defaultThreads() / 2));
  console.log(`\ncross-check against test-backend-ops perf (its thread count: ${half})`);
  for (const type of ["q4_0", "bf16"] as MatmulType[]) {
    const ops = peerOpsMatmul(type);
    if (!ops.ok) {
      console.log(`${type.padEnd(7)}${ops.reason}`);
      continue;
    }
    for (const c of ops.cases) {
      const ours = peerMatmul({ m: c.m, n: c.n, k: c.k }, type, { threads: half, budgetS: 0.4 });
      const mine = ours.ok ? `${ours.usPerRun.toFixed(0)} us` : ours.reason;
      console.log(`${type.padEnd(7)}${`${c.m}x${c.k} @ ${c.n}x${c.k}`.padEnd(24)}test-backend-ops ${c.usPerRun.toFixed(0)} us, ggml_matmul ${mine}`);
    }
  }
}

if (all || flag("generate")) {
  const models = opt("models", Object.keys(MODELS).join(",")).split(",") as PeerModel[];
  const types = opt("types", "q4_0,bf16,f16").split(",") as GenerateType[];
  const prompt = Number(opt("prompt", "512"));
  const gen = Number(opt("gen", "128"));
  console.log(`\nllama-bench on random-weight GGUFs: prompt ${prompt} tokens, decode ${gen} tokens after it`);
  console.log(`${"model".padEnd(15)}${"type".padEnd(7)}${"prompt t/s".padStart(11)}${"decode t/s".padStart(11)}${"MiB".padStart(7)}`);
  for (const model of models)
    for (const type of types) {
      const r = peerGenerate(model, type, { prompt, gen, threads });
      if (!r.ok) console.log(`${model.padEnd(15)}${type.padEnd(7)}${r.reason}`);
      else
        console.log(`${model.padEnd(15)}${type.padEnd(7)}${f(r.promptTps, 1).padStart(11)}${f(r.decodeTps, 2).padStart(11)}${(r.fileBytes / 2 ** 20).toFixed(0).padStart(7)}`);
    }
}

console.log(`\n${load()}`);
