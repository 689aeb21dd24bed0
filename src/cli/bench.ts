// `rmlx bench`: prompt and generation speed of one model directory, in the manner of mlx_lm.benchmark: a random
// prompt of -p tokens, then -g greedy tokens with EOS ignored, repeated --reps times; medians reported.
import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { getBackend } from "../backend/index.ts";
import { builtinModelDir } from "../builtin/index.ts";
import { forwardBatch, logitsRow } from "../engine/forward_batch.ts";
import { cacheForTokens } from "../engine/generate.ts";
import { Sequence } from "../engine/kv_cache.ts";
import { RmlxError } from "../errors.ts";
import { openModelDir } from "../io/model_dir.ts";
import { MetricsStore, defaultDbPath } from "../metrics/store.ts";
import { loadModel } from "../models/registry.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { addKvOption, kvDtypeFrom, type KvFlags } from "./kv_option.ts";

interface BenchFlags extends BackendFlags, KvFlags {
  model?: string;
  prompt: string;
  gen: string;
  reps: string;
  json?: boolean;
  db?: string;
  metrics: boolean;
}

function positiveInt(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new RmlxError("invalid_argument", `--${name} must be a positive integer (got '${v}')`);
  return n;
}

/** Peak resident set of this process (Linux), in bytes; 0 where /proc is absent. */
function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export function register(program: Command): void {
  addKvOption(addBackendOptions(
    program
      .command("bench")
      .description("Prompt and generation tokens/s of a model (random prompt, greedy, EOS ignored)")
      .option("--model <dir>", "model directory (default: the built-in model)")
      .option("-p, --prompt <n>", "prompt tokens", "512")
      .option("-g, --gen <n>", "generated tokens", "128")
      .option("--reps <n>", "repetitions (medians are reported)", "3")
      .option("--json", "print one JSON object")
      .option("--db <path>", "metrics database (default: $RMLX_DB or ~/.rmlx/metrics.db)")
      .option("--no-metrics", "do not record the figures"),
  )).action(
    action((f: BenchFlags) => {
      applyBackendFlags(f);
      const kvDtype = kvDtypeFrom(f);
      const promptLen = positiveInt("prompt", f.prompt);
      const gen = positiveInt("gen", f.gen);
      const reps = positiveInt("reps", f.reps);
      const dir = f.model ?? builtinModelDir();
      const be = getBackend();
      const md = openModelDir(dir);
      const model = loadModel(be, md);
      if (promptLen + gen > md.config.contextLength) {
        throw new RmlxError("context_length", `-p + -g = ${promptLen + gen} tokens; the model's context is ${md.config.contextLength}`);
      }
      // A fixed pseudo-random prompt: the same tokens on every run and machine.
      let x = 0x9e3779b9;
      const prompt = Int32Array.from({ length: promptLen }, () => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return (x >>> 0) % model.vocabSize;
      });
      const promptTps: number[] = [];
      const genTps: number[] = [];
      for (let r = 0; r < reps; r++) {
        const cache = cacheForTokens(model, promptLen + gen, undefined, undefined, kvDtype);
        const seq = new Sequence();
        const t0 = performance.now();
        let out = forwardBatch(model, cache, [{ seq, tokens: prompt }]);
        const t1 = performance.now();
        for (let i = 0; i < gen; i++) {
          const row = logitsRow(out, 0);
          let best = 0;
          for (let j = 1; j < row.length; j++) if (row[j]! > row[best]!) best = j;
          out = forwardBatch(model, cache, [{ seq, tokens: Int32Array.of(best) }]);
        }
        const t2 = performance.now();
        cache.dispose();
        promptTps.push(promptLen / ((t1 - t0) / 1000));
        genTps.push(gen / ((t2 - t1) / 1000));
      }
      const result = {
        model: dir,
        backend: be.device,
        kv_dtype: kvDtype,
        prompt_tokens: promptLen,
        generated_tokens: gen,
        reps,
        prompt_tps: median(promptTps),
        generation_tps: median(genTps),
        peak_memory_bytes: peakRss(),
      };
      if (f.metrics) {
        const store = MetricsStore.open(defaultDbPath(f.db));
        store.startRun({ kind: "bench", backend: be.name, device: be.device, model: dir });
        const shape = `p${promptLen} g${gen} kv ${kvDtype}`;
        store.recordBenchmarks([
          { name: `rmlx bench prompt ${md.config.modelType}`, shape, figure: result.prompt_tps, unit: "tok/s" },
          { name: `rmlx bench generation ${md.config.modelType}`, shape, figure: result.generation_tps, unit: "tok/s" },
        ]);
        store.close();
      }
      if (f.json) {
        process.stdout.write(JSON.stringify(result) + "\n");
        return;
      }
      process.stdout.write(
        `model: ${dir}\nbackend: ${be.device}\n` +
          `kv cache: ${kvDtype}\n` +
          `prompt: ${promptLen} tokens, ${result.prompt_tps.toFixed(1)} tok/s\n` +
          `generation: ${gen} tokens, ${result.generation_tps.toFixed(1)} tok/s\n` +
          `peak memory: ${(result.peak_memory_bytes / 2 ** 30).toFixed(3)} GiB\n`,
      );
    }),
  );
}
