// `rmlx bench`: prompt and generation speed of one model directory, in the manner of mlx_lm.benchmark: a random
// prompt of -p tokens, then -g greedy decode steps with EOS ignored, repeated --reps times; medians reported. The
// request runs on the engine's Scheduler in this process, so the figures include what serving a request costs.
import type { Command } from "commander";
import { readFileSync } from "node:fs";
import { getBackend } from "../backend/index.ts";
import { builtinModelDir } from "../builtin/index.ts";
import { cacheForTokens, generate } from "../engine/generate.ts";
import { hostTimer } from "../engine/host_time.ts";
import { tokenModel } from "../engine/session.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";
import { RmlxError } from "../errors.ts";
import { openModelDir } from "../io/model_dir.ts";
import { MetricsStore, defaultDbPath } from "../metrics/store.ts";
import { loadModel } from "../models/registry.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { addBitnetOption, type BitnetFlags, modelOptionsFrom } from "./bitnet_option.ts";
import { addKvOption, kvCodecFrom, type KvFlags } from "./kv_option.ts";
import { defaultKvCodec } from "../engine/kv/codec.ts";

interface BenchFlags extends BackendFlags, KvFlags, BitnetFlags {
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
  addBitnetOption(addKvOption(addBackendOptions(
    program
      .command("bench")
      .description("Prompt and generation tokens/s of a model (random prompt, greedy, EOS ignored)")
      .option("-m, --model <dir>", "model directory (default: the built-in model)")
      .option("-p, --prompt <n>", "prompt tokens", "512")
      .option("-g, --gen <n>", "generated tokens", "128")
      .option("--reps <n>", "repetitions (medians are reported)", "3")
      .option("--json", "print one JSON object")
      .option("--db <path>", "metrics database (default: $RMLX_DB or ~/.rmlx/metrics.db)")
      .option("--no-metrics", "do not record the figures"),
  ))).action(
    action((f: BenchFlags) => {
      applyBackendFlags(f);
      const askedKv = kvCodecFrom(f);
      const promptLen = positiveInt("prompt", f.prompt);
      const gen = positiveInt("gen", f.gen);
      const reps = positiveInt("reps", f.reps);
      const dir = f.model ?? builtinModelDir();
      const be = getBackend();
      const md = openModelDir(dir);
      const model = loadModel(be, md, modelOptionsFrom(f));
      const kvQuant = askedKv ?? defaultKvCodec(model.backend);
      if (promptLen + gen > md.config.contextLength) {
        throw new RmlxError("context_length", `-p + -g = ${promptLen + gen} tokens; the model's context is ${md.config.contextLength}`);
      }
      // A fixed pseudo-random prompt: the same tokens on every run and machine.
      let x = 0x9e3779b9;
      const prompt = Array.from({ length: promptLen }, () => {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        return (x >>> 0) % model.vocabSize;
      });
      // -g decode steps: the token sampled after the last one is never fed back.
      const request = { prompt, maxTokens: gen + 1, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], stopTokenIds: [], ignoreEos: true };
      let kvBytesPerToken = 0;
      const promptTps: number[] = [];
      const genTps: number[] = [];
      const hostMs: number[] = [];
      for (let r = 0; r < reps; r++) {
        const cache = cacheForTokens(model, promptLen + gen, kvQuant);
        kvBytesPerToken = cache.bytesPerToken;
        try {
          const host = hostTimer(model.backend, tokenModel(model, cache));
          const out = generate(host.model, request);
          promptTps.push(out.promptTps);
          genTps.push(out.decodeTps);
          if (host.perStep() !== undefined) hostMs.push(host.perStep()!);
        } finally {
          cache.dispose();
        }
      }
      const result = {
        model: dir,
        backend: be.device,
        kv_quant: kvQuant,
        kv_dtype: kvQuant,
        kv_bytes_per_token: kvBytesPerToken,
        prompt_tokens: promptLen,
        generated_tokens: gen,
        reps,
        prompt_tps: median(promptTps),
        generation_tps: median(genTps),
        host_ms_per_step: hostMs.length > 0 ? median(hostMs) : null,
        peak_memory_bytes: peakRss(),
        peak_rss_bytes: peakRss(),
      };
      if (f.metrics) {
        const store = MetricsStore.open(defaultDbPath(f.db));
        store.startRun({ kind: "bench", backend: be.name, device: be.device, model: dir });
        const shape = `p${promptLen} g${gen} kv ${kvQuant}`;
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
          `kv cache: ${kvQuant}, ${kvBytesPerToken} bytes per token\n` +
          `prompt: ${promptLen} tokens, ${result.prompt_tps.toFixed(1)} tok/s\n` +
          `generation: ${gen} tokens, ${result.generation_tps.toFixed(1)} tok/s\n` +
          (result.host_ms_per_step !== null ? `host time per decode step: ${result.host_ms_per_step.toFixed(3)} ms\n` : "") +
          `peak memory: ${(result.peak_memory_bytes / 2 ** 30).toFixed(3)} GiB\n`,
      );
    }),
  );
}
