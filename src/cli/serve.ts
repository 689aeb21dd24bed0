import { Command, Option } from "commander";
import { native } from "../backend/native/lib.ts";
import { BUILTIN_MODEL_NAME, builtinModelDir } from "../builtin/index.ts";
import { RmlxError } from "../errors.ts";
import type { EngineConfig } from "../engine/types.ts";
import { defaultDbPath } from "../metrics/store.ts";
import { parseCorsOrigins } from "../server/cors.ts";
import { loadConfig } from "../io/config.ts";
import { kvCodecProblemFor } from "../io/summary.ts";
import { parseKvCodec } from "../engine/kv/codec.ts";
import { discoverModels } from "../server/models.ts";
import { startServer } from "../server/server.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { addKvOption, kvCodecFrom, type KvFlags } from "./kv_option.ts";

interface ServeFlags extends BackendFlags, KvFlags {
  model?: string[];
  alias?: string[];
  strictModelNames?: boolean;
  host?: string;
  port?: string;
  apiKey?: string;
  idleUnload?: string;
  kvMemory?: string;
  maxRunning?: string;
  maxWaiting?: string;
  prefillChunk?: string;
  prefixCache?: boolean;
  db?: string;
  metrics?: boolean;
  cors?: string;
}

const UNITS: Record<string, number> = { "": 1, b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 1024 ** 2, g: 1e9, gb: 1e9, gib: 1024 ** 3 };

/** "4GiB", "512m", "1e9" -> bytes. */
export function parseBytes(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new RmlxError("invalid_argument", `${what}: '${text}' is not a size (e.g. 4GiB, 512MB)`);
  return Math.floor(Number(m[1]) * unit);
}

function parseInteger(text: string, what: string, min: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new RmlxError("invalid_argument", `${what}: '${text}' is not an integer >= ${min}`);
  return n;
}

/** Flags win over RMLX_* environment variables, which win over defaults. */
function pick(flag: string | undefined, env: string, dflt: string): string {
  return flag ?? process.env[env] ?? dflt;
}

function engineWorkerUrl(): string | URL {
  // A replacement engine (one that speaks the same messages) can be named for protocol tests.
  if (process.env.RMLX_ENGINE_WORKER) return process.env.RMLX_ENGINE_WORKER;
  // In the compiled binary the worker is a second entry point, addressed relative to the bundled source root.
  if (import.meta.url.includes("$bunfs")) return "./engine/worker.ts";
  return new URL("../engine/worker.ts", import.meta.url);
}

export function register(program: Command): void {
  addKvOption(addBackendOptions(program.command("serve")))
    .description("Serve OpenAI- and Anthropic-compatible APIs")
    .option("-m, --model <dir>", `model directory, or a directory of model directories (repeatable; env RMLX_MODEL, ':'-separated; default: the built-in model, served as ${BUILTIN_MODEL_NAME})`, (v: string, prev: string[] = []) => [...prev, v])
    .option(
      "--alias <name>",
      "serve a model under this name instead of its directory's; repeatable: the i-th --alias names the i-th --model, which must be one model directory (env RMLX_ALIAS, ','-separated)",
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option(
      "--strict-model-names",
      "answer only requests naming a served model (404 otherwise); by default a single served model answers any name, or none (env RMLX_STRICT_MODEL_NAMES=1)",
    )
    .option("--host <addr>", "address to listen on (env RMLX_HOST)", undefined)
    .option("-p, --port <n>", "port to listen on (env RMLX_PORT)", undefined)
    .option("--api-key <key>", "require this key as 'Authorization: Bearer' or 'x-api-key' on every route but /health (env RMLX_API_KEY)")
    .option("--idle-unload <s>", "unload a model after this many idle seconds, 0 = never (env RMLX_IDLE_UNLOAD)")
    .option("--kv-memory <size>", "KV cache budget per model, e.g. 2GiB (env RMLX_KV_MEMORY; default 1GiB)")
    .option("--max-running <n>", "most sequences in one batch (env RMLX_MAX_RUNNING; default 32)")
    .option("--max-waiting <n>", "most queued requests; more are refused with 429 (env RMLX_MAX_WAITING; default 256)")
    .option("--prefill-chunk <n>", "most prompt tokens per step (env RMLX_PREFILL_CHUNK; default 2048)")
    .addOption(new Option("--no-prefix-cache", "do not reuse KV blocks of shared prompt prefixes (env RMLX_PREFIX_CACHE=0)"))
    .option("--cors <origins>", "let browsers call from these origins: '*' or a comma-separated list (env RMLX_CORS; default off)")
    .option("--db <path>", "metrics database each request is recorded in (env RMLX_DB; default ~/.rmlx/metrics.db)")
    .option("--no-metrics", "record nothing in the metrics database")
    .addHelpText(
      "after",
      "\nModels are addressed by directory name, or by --alias. The OpenAI routes answer with and without /v1\n(/v1/chat/completions and /chat/completions, ...). Defaults: --host 127.0.0.1, --port 8080, --idle-unload 0.\nStops gracefully on SIGINT/SIGTERM.",
    )
    .action(
      action(async (flags: ServeFlags) => {
        applyBackendFlags(flags);
        // The engine worker loads the native library only with its first model; a bad RMLX_ISA must stop the
        // server here instead, before it answers as if it could compute.
        if (process.env.RMLX_ISA && process.env.RMLX_BACKEND !== "mlx") native();
        const modelPaths = flags.model ?? (process.env.RMLX_MODEL ? process.env.RMLX_MODEL.split(":").filter(Boolean) : []);
        const aliases = flags.alias ?? (process.env.RMLX_ALIAS ? process.env.RMLX_ALIAS.split(",") : []);
        if (modelPaths.length === 0) {
          modelPaths.push(builtinModelDir());
          if (aliases.length === 0) aliases.push(BUILTIN_MODEL_NAME);
        }
        const models = discoverModels(modelPaths, aliases);
        const kvQuant = kvCodecFrom(flags);
        // A codec some model's head_dim cannot take stops the server here, not at that model's first request.
        for (const [name, dir] of models) {
          let config;
          try {
            config = loadConfig(dir);
          } catch {
            continue;  // an unreadable config is reported when the model loads
          }
          const why = kvCodecProblemFor(config, parseKvCodec(kvQuant));
          if (why) throw new RmlxError("invalid_argument", `--kv-quant ${kvQuant}: model '${name}': ${why} (f32, f16 and bf16 take any head_dim)`);
        }
        const port = parseInteger(pick(flags.port, "RMLX_PORT", "8080"), "--port", 0);
        if (port > 65535) throw new RmlxError("invalid_argument", `--port: ${port} is not a port`);
        const engine: EngineConfig = {
          kvMemoryBytes: parseBytes(pick(flags.kvMemory, "RMLX_KV_MEMORY", "1GiB"), "--kv-memory"),
          maxRunning: parseInteger(pick(flags.maxRunning, "RMLX_MAX_RUNNING", "32"), "--max-running", 1),
          maxWaiting: parseInteger(pick(flags.maxWaiting, "RMLX_MAX_WAITING", "256"), "--max-waiting", 0),
          prefillChunk: parseInteger(pick(flags.prefillChunk, "RMLX_PREFILL_CHUNK", "2048"), "--prefill-chunk", 16),
          kvQuant,
          prefixCache: flags.prefixCache === false ? false : process.env.RMLX_PREFIX_CACHE !== "0",
          backend: process.env.RMLX_BACKEND,
          mlxLib: process.env.RMLX_MLX_C_LIB,
          gemv: process.env.RMLX_GEMV,
        };
        const server = await startServer({
          host: pick(flags.host, "RMLX_HOST", "127.0.0.1"),
          port,
          apiKey: flags.apiKey ?? process.env.RMLX_API_KEY ?? undefined,
          models,
          strictModelNames: flags.strictModelNames ?? process.env.RMLX_STRICT_MODEL_NAMES === "1",
          idleUnloadS: parseInteger(pick(flags.idleUnload, "RMLX_IDLE_UNLOAD", "0"), "--idle-unload", 0),
          engine,
          workerUrl: engineWorkerUrl(),
          metricsDb: flags.metrics === false ? null : defaultDbPath(flags.db),
          cors: flags.cors !== undefined || process.env.RMLX_CORS ? parseCorsOrigins(pick(flags.cors, "RMLX_CORS", "")) : undefined,
        });
        process.stderr.write(`rmlx: serving ${[...models.keys()].join(", ")} on ${server.url}\n`);
        let stopping = false;
        const stop = async () => {
          if (stopping) return;
          stopping = true;
          process.stderr.write("rmlx: shutting down\n");
          await server.stop();
          process.exit(0);
        };
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
      }),
    );
}
