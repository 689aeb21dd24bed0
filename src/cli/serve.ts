import { Command, Option } from "commander";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { native } from "../backend/native/lib.ts";
import { BUILTIN_MODEL_NAME, builtinModelDir } from "../builtin/index.ts";
import { RmlxError } from "../errors.ts";
import type { EngineConfig } from "../engine/types.ts";
import { defaultDbPath } from "../metrics/store.ts";
import { parseCorsOrigins } from "../server/cors.ts";
import { loadConfig } from "../io/config.ts";
import { kvCodecProblemFor } from "../io/summary.ts";
import { parseKvCodec } from "../quant/kv_codec.ts";
import { lockSsdDir } from "../engine/kv/ssd_lock.ts";
import { clearSsdTmp } from "../engine/kv/ssd_store.ts";
import { discoverModels } from "../server/models.ts";
import { LOG_LEVELS, Logger, parseLogLevel } from "../server/log.ts";
import type { ServerDefaults } from "../server/sampling.ts";
import { startServer } from "../server/server.ts";
import { readChatTemplateFile } from "../text/chat_template.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { addBitnetOption, type BitnetFlags, modelOptionsFrom } from "./bitnet_option.ts";
import { addKvOption, kvCodecFrom, type KvFlags } from "./kv_option.ts";
import { DRAFT_KIND_HELP, DRAFT_POLICY_HELP, DRAFT_TOKENS_HELP, draftSettings, type DraftFlags } from "./draft_option.ts";
import { parseBytes, parseInteger, parseNumber, pick } from "./parse.ts";
import { addSpellings, type Spelling } from "./spellings.ts";

interface ServeFlags extends BackendFlags, KvFlags, DraftFlags, BitnetFlags {
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
  kvSsd?: string;
  kvSsdBudget?: string;
  db?: string;
  metrics?: boolean;
  cors?: string;
  temp?: string;
  topP?: string;
  topK?: string;
  minP?: string;
  maxTokens?: string;
  ctxSize?: string;
  chatTemplate?: string;
  logLevel?: string;
  promptOverflow?: string;
  verbose?: boolean;
}

function parsePromptOverflow(v: string): "error" | "truncate" {
  if (v === "error" || v === "truncate") return v;
  throw new RmlxError("invalid_argument", `--prompt-overflow must be error or truncate (got '${v}')`);
}

/** --temp, --top-p, --top-k, --min-p, --max-tokens (or their RMLX_* variables): only those given. */
function serverDefaults(f: ServeFlags): ServerDefaults {
  const d: ServerDefaults = {};
  const temp = pick(f.temp, "RMLX_TEMP");
  if (temp !== undefined) d.temperature = parseNumber(temp, "--temp", 0, 2);
  const topP = pick(f.topP, "RMLX_TOP_P");
  if (topP !== undefined) d.topP = parseNumber(topP, "--top-p", 0, 1);
  const topK = pick(f.topK, "RMLX_TOP_K");
  if (topK !== undefined) d.topK = parseInteger(topK, "--top-k", 0);
  const minP = pick(f.minP, "RMLX_MIN_P");
  if (minP !== undefined) d.minP = parseNumber(minP, "--min-p", 0, 1);
  const maxTokens = pick(f.maxTokens, "RMLX_MAX_TOKENS");
  if (maxTokens !== undefined) d.maxTokens = parseInteger(maxTokens, "--max-tokens", 1);
  return d;
}

function engineWorkerUrl(): string | URL {
  // A replacement engine (one that speaks the same messages) can be named for protocol tests.
  if (process.env.RMLX_ENGINE_WORKER) return process.env.RMLX_ENGINE_WORKER;
  // In the compiled binary the worker is a second entry point, addressed relative to the bundled source root
  // (import.meta.url keeps the source path in a bytecode build, so the entry point's path tells).
  if (import.meta.url.includes("$bunfs") || Bun.main.startsWith("/$bunfs/")) return "./engine/worker.ts";
  return new URL("../engine/worker.ts", import.meta.url);
}

const DEFAULT_SSD_BUDGET = "16GiB";

/** --kv-ssd and --kv-ssd-budget: the directory, locked for this process (until exit), and its budget. */
function ssdTier(f: ServeFlags, prefixCache: boolean): { dir: string; budgetBytes: number } | undefined {
  const dir = pick(f.kvSsd, "RMLX_KV_SSD");
  const budget = pick(f.kvSsdBudget, "RMLX_KV_SSD_BUDGET");
  if (dir === undefined || dir === "") {
    if (budget !== undefined && f.kvSsdBudget !== undefined) throw new RmlxError("invalid_argument", "--kv-ssd-budget needs --kv-ssd");
    return undefined;
  }
  if (!prefixCache) throw new RmlxError("invalid_argument", "--kv-ssd needs the prefix cache (drop --no-prefix-cache)");
  const budgetBytes = parseBytes(budget ?? DEFAULT_SSD_BUDGET, "--kv-ssd-budget");
  const abs = resolve(dir);
  const release = lockSsdDir(abs);
  process.on("exit", release);
  clearSsdTmp(abs);
  return { dir: abs, budgetBytes };
}

/** performance.now() counts from the start of the process. */
const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

// vLLM's, llama-server's and mlx_lm.server's spellings of serve's flags.
const SERVE_SPELLINGS: Spelling[] = [
  { flags: "--max-model-len <n>", key: "maxModelLen", ours: "ctxSize", ourFlag: "--ctx-size" },
  { flags: "--served-model-name <name>", key: "servedModelName", ours: "alias", ourFlag: "--alias", repeatable: true },
  { flags: "-a <name>", key: "a", ours: "alias", ourFlag: "--alias", repeatable: true },
  { flags: "--max-num-seqs <n>", key: "maxNumSeqs", ours: "maxRunning", ourFlag: "--max-running" },
  { flags: "--parallel <n>", key: "parallel", ours: "maxRunning", ourFlag: "--max-running" },
  { flags: "--chat-template-file <file>", key: "chatTemplateFile", ours: "chatTemplate", ourFlag: "--chat-template" },
  { flags: "--model-draft <dir>", key: "modelDraft", ours: "draftModel", ourFlag: "--draft-model" },
  { flags: "--num-draft-tokens <k>", key: "numDraftTokens", ours: "draftTokens", ourFlag: "--draft-tokens" },
  { flags: "--draft-max <k>", key: "draftMax", ours: "draftTokens", ourFlag: "--draft-tokens" },
];

export function register(program: Command): void {
  addSpellings(addBitnetOption(addKvOption(addBackendOptions(program.command("serve")))), SERVE_SPELLINGS)
    .description("Serve OpenAI- and Anthropic-compatible APIs")
    .argument("[models...]", "model directories, as -m takes them (vLLM's 'serve MODEL')")
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
    .option("--host <addr>", "address to listen on (env RMLX_HOST; default 127.0.0.1)")
    .option("--port <n>", "port to listen on, 0 for any free one (env RMLX_PORT; default 8080; no short form: -p is a prompt elsewhere)")
    .option("--api-key <key>", "require this key as 'Authorization: Bearer' or 'x-api-key' on every route but /health (env RMLX_API_KEY)")
    .option("--temp <t>", "temperature of requests that name none (env RMLX_TEMP; default: the model's generation_config.json, else 1)")
    .option("--top-p <p>", "top_p of requests that name none (env RMLX_TOP_P; default: generation_config.json, else 1)")
    .option("--top-k <k>", "top_k of requests that name none, 0 = off (env RMLX_TOP_K; default: generation_config.json, else off)")
    .option("--min-p <p>", "min_p of requests that name none, 0 = off (env RMLX_MIN_P; default: generation_config.json, else off)")
    .option("--max-tokens <n>", "max_tokens of OpenAI requests that name none (env RMLX_MAX_TOKENS; default: the rest of the context; 16 on /v1/completions)")
    .option("-c, --ctx-size <n>", "most tokens of context per sequence, below each model's own limit (env RMLX_CTX_SIZE; default: the model's)")
    .option(
      "--prompt-overflow <policy>",
      "a prompt longer than the context: error (a 400) or truncate (drop older turns, then tools, then the end of the system message, keeping the newest user turn; logged) (env RMLX_PROMPT_OVERFLOW; default: truncate for the built-in model, whose context is 1024 tokens, error otherwise)",
    )
    .option("--chat-template <file>", "a chat template (Jinja, or JSON with chat_template) used instead of each model's own (env RMLX_CHAT_TEMPLATE)")
    .option("--idle-unload <s>", "unload a model after this many idle seconds, 0 = never (env RMLX_IDLE_UNLOAD; default 0)")
    .option("--kv-memory <size>", "KV cache budget per model, e.g. 2GiB (env RMLX_KV_MEMORY; default 1GiB)")
    .option("--max-running <n>", "most sequences in one batch (env RMLX_MAX_RUNNING; default 32)")
    .option("--max-waiting <n>", "most queued requests; more are refused with 429 (env RMLX_MAX_WAITING; default 256)")
    .option("--prefill-chunk <n>", "most prompt tokens per step (env RMLX_PREFILL_CHUNK; default 2048)")
    .addOption(new Option("--no-prefix-cache", "do not reuse KV blocks of shared prompt prefixes (env RMLX_PREFIX_CACHE=0)"))
    .option(
      "--kv-ssd <dir>",
      "keep prefix-cache blocks leaving RAM (and, at shutdown, those in RAM) in this directory, and reuse them across restarts; one server per directory (env RMLX_KV_SSD; default off; not for models with recurrent state)",
    )
    .option("--kv-ssd-budget <size>", `most bytes of blocks in the --kv-ssd directory, over all models; least recently used go first (env RMLX_KV_SSD_BUDGET; default ${DEFAULT_SSD_BUDGET})`)
    .option("--cors <origins>", "let browsers call from these origins: '*' or a comma-separated list (env RMLX_CORS; default off)")
    .option("--db <path>", "metrics database each request is recorded in (env RMLX_DB; default ~/.rmlx/metrics.db)")
    .option("--no-metrics", "record nothing in the metrics database")
    .option(
      "--log-level <level>",
      `what is logged on stderr: ${LOG_LEVELS.join(", ")}; info (the default) logs start-up and the ready line, debug also one line per request, trace also request bodies (env RMLX_LOG_LEVEL)`,
    )
    .option("-v, --verbose", "log one line per request (--log-level debug)")
    .option("--draft-model <dir>", "a smaller model with the same tokenizer that proposes tokens for each served model to verify (env RMLX_DRAFT_MODEL)")
    .option("--draft-kind <kind>", DRAFT_KIND_HELP)
    .option("--draft-tokens <k>", DRAFT_TOKENS_HELP)
    .option("--draft-policy <p>", DRAFT_POLICY_HELP)
    .addHelpText(
      "after",
      "\nModels are addressed by directory name, or by --alias. The OpenAI routes answer with and without /v1\n" +
        "(/v1/chat/completions and /chat/completions, ...). A request's own sampling fields win over --temp and the\n" +
        "others, which win over the model's generation_config.json. Prints 'rmlx: ready: ...' when /health answers 200.\n" +
        "Stops gracefully on SIGINT/SIGTERM.",
    )
    .action(
      action(async (positional: string[], flags: ServeFlags) => {
        applyBackendFlags(flags);
        // The engine worker loads the native library only with its first model; a bad RMLX_ISA must stop the
        // server here instead, before it answers as if it could compute.
        if (process.env.RMLX_ISA && process.env.RMLX_BACKEND !== "mlx") native();
        const log = new Logger(flags.verbose ? "debug" : parseLogLevel(pick(flags.logLevel, "RMLX_LOG_LEVEL", "info")));
        const given = [...(flags.model ?? []), ...positional];
        const modelPaths = given.length > 0 ? given : process.env.RMLX_MODEL ? process.env.RMLX_MODEL.split(":").filter(Boolean) : [];
        const aliases = flags.alias ?? (process.env.RMLX_ALIAS ? process.env.RMLX_ALIAS.split(",") : []);
        const builtin = modelPaths.length === 0;
        if (builtin) {
          modelPaths.push(builtinModelDir());
          if (aliases.length === 0) aliases.push(BUILTIN_MODEL_NAME);
        }
        const models = discoverModels(modelPaths, aliases);
        const kvQuant = kvCodecFrom(flags);
        // A codec some model's head_dim cannot take stops the server here, not at that model's first request (the
        // default ones, f32 or the activations' 16-bit dtype, take any).
        if (kvQuant !== undefined) for (const [name, dir] of models) {
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
        const ctxSize = pick(flags.ctxSize, "RMLX_CTX_SIZE");
        const templateFile = pick(flags.chatTemplate, "RMLX_CHAT_TEMPLATE");
        const engine: EngineConfig = {
          kvMemoryBytes: parseBytes(pick(flags.kvMemory, "RMLX_KV_MEMORY", "1GiB"), "--kv-memory"),
          maxRunning: parseInteger(pick(flags.maxRunning, "RMLX_MAX_RUNNING", "32"), "--max-running", 1),
          maxWaiting: parseInteger(pick(flags.maxWaiting, "RMLX_MAX_WAITING", "256"), "--max-waiting", 0),
          prefillChunk: parseInteger(pick(flags.prefillChunk, "RMLX_PREFILL_CHUNK", "2048"), "--prefill-chunk", 16),
          ...(kvQuant !== undefined ? { kvQuant } : {}),
          prefixCache: flags.prefixCache === false ? false : process.env.RMLX_PREFIX_CACHE !== "0",
          backend: process.env.RMLX_BACKEND,
          mlxLib: process.env.RMLX_MLX_C_LIB,
          gemv: process.env.RMLX_GEMV,
          gemm: process.env.RMLX_GEMM,
          computeDtype: process.env.RMLX_COMPUTE_DTYPE,
          mmapWeights: process.env.RMLX_MMAP_WEIGHTS === "1",
          threads: process.env.RMLX_THREADS,
          modelOptions: modelOptionsFrom(flags),
        };
        // The built-in model's context cannot hold what agents send (Claude Code's tools alone are ~30k tokens).
        engine.promptOverflow = parsePromptOverflow(pick(flags.promptOverflow, "RMLX_PROMPT_OVERFLOW", builtin ? "truncate" : "error"));
        if (ctxSize !== undefined) engine.contextLength = parseInteger(ctxSize, "--ctx-size", 1);
        const kvSsd = ssdTier(flags, engine.prefixCache);
        if (kvSsd) engine.kvSsd = kvSsd;
        if (templateFile !== undefined) engine.chatTemplate = readChatTemplateFile(templateFile);
        const draft = draftSettings(flags);
        if (draft) {
          if (draft.kind === "model") {
            if (!existsSync(join(draft.dir, "config.json"))) throw new RmlxError("invalid_argument", `--draft-model ${draft.dir}: no config.json there`);
            engine.draftModel = draft.dir;
          } else {
            engine.draftMtp = true;
          }
          engine.draftTokens = draft.tokens;
          engine.draftFixed = draft.fixed;
        }
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
          defaults: serverDefaults(flags),
          log,
        });
        let stopping = false;
        const stop = async () => {
          if (stopping) return;
          stopping = true;
          log.info("shutting down");
          await server.stop();
          process.exit(0);
        };
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
        const names = [...models.keys()];
        if (names.length === 1) log.info(`loading ${names[0]} from ${models.get(names[0]!)}; listening on ${server.url}`);
        try {
          await server.ready;
        } catch (e) {
          // The only model cannot be served: say why and stop, rather than answer every request with the error.
          throw new RmlxError(e instanceof RmlxError ? e.code : "bad_model", `cannot load ${names[0]}: ${(e as Error).message}`);
        }
        const loaded = names.length === 1 ? "" : " (each loads on first use)";
        log.info(`ready: serving ${names.join(", ")} on ${server.url}${loaded} after ${seconds(performance.now())}`);
      }),
    );
}
