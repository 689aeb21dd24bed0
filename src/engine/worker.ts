// The engine's Bun Worker: loads models, runs one continuous-batching scheduler per loaded model, and talks to the
// HTTP server only through the messages of types.ts, so HTTP never waits on compute. Between two steps the
// worker yields to its event loop, which is where new requests and cancellations come in.
import { getBackend } from "../backend/index.ts";
import { RmlxError } from "../errors.ts";
import { textModelType } from "../models/registry.ts";
import { promptOpensReasoning, reasoningTagsFor, THINK_TAGS } from "../text/reasoning.ts";
import { Detokenizer } from "../text/detokenizer.ts";
import { StopStrings } from "../text/stop.ts";
import { toolParserFor, type ToolParserKind } from "../text/tool_parsers.ts";
import { runStep } from "./forward_batch.ts";
import { ConstraintVocab, JsonConstraint } from "./json_constraint.ts";
import { KvCache, type BuiltStep } from "./kv_cache.ts";
import { Scheduler, type SchedulerModel } from "./scheduler.ts";
import { ForcedPythonicCall, ForcedToolCall, toolCallSchema } from "./tool_constraint.ts";
import { loadSession, type Session } from "./session.ts";
import type { ChatMessage, EngineConfig, FromWorker, GenerateRequest, LoadedModelInfo, ToolSpec, ToWorker } from "./types.ts";

declare const self: Worker;

const DEFAULT_KV_BYTES = 1024 ** 3;

let config: EngineConfig = { kvMemoryBytes: DEFAULT_KV_BYTES, maxRunning: 32, maxWaiting: 256, prefillChunk: 2048, prefixCache: true };

interface Loaded {
  session: Session;
  cache: KvCache;
  scheduler: Scheduler;
  info: LoadedModelInfo;
}

const models = new Map<string, Loaded>();
/** Which model each live request runs on, for cancellation. */
const owners = new Map<string, string>();

function post(msg: FromWorker): void {
  if (msg.type === "done" || msg.type === "error") owners.delete(msg.id);
  self.postMessage(msg);
}

function errorOf(e: unknown): { code: string; message: string } {
  if (e instanceof RmlxError) return { code: e.code, message: e.message };
  return { code: "internal", message: e instanceof Error ? e.message : String(e) };
}

function renderChat(s: Session, messages: ChatMessage[], tools: ToolSpec[] | undefined, kwargs: Record<string, unknown> | undefined, addGenerationPrompt: boolean): string {
  if (!s.template) throw new RmlxError("invalid_argument", "this model has no chat template; send a plain prompt to /v1/completions");
  return s.template.render({ messages, tools, addGenerationPrompt, kwargs });
}

/** The ids of <think> and </think> when each is one token (what thinking budgets need). */
function thinkTokens(s: Session): { open: number; close: number } | undefined {
  const open = s.tokenizer.encode(THINK_TAGS.open, { addSpecialTokens: false });
  const close = s.tokenizer.encode(THINK_TAGS.close, { addSpecialTokens: false });
  return open.length === 1 && close.length === 1 ? { open: open[0]!, close: close[0]! } : undefined;
}

function schedulerModel(s: Session, cache: KvCache, reasoning: boolean, toolParser: ToolParserKind | undefined): SchedulerModel {
  let vocab: ConstraintVocab | undefined;
  return {
    reasoningTokens: reasoning ? thinkTokens(s) : undefined,
    cache,
    contextLength: s.md.config.contextLength,
    eosTokenIds: s.stopTokenIds,
    encode(req: GenerateRequest) {
      if (req.messages) {
        const text = renderChat(s, req.messages, req.tools, req.templateKwargs, req.addGenerationPrompt ?? true);
        return { ids: s.tokenizer.encode(text, { addSpecialTokens: false }), startsInReasoning: reasoning && promptOpensReasoning(text) };
      }
      if (typeof req.prompt === "string") return { ids: s.tokenizer.encode(req.prompt), startsInReasoning: false };
      const ids = req.prompt ?? [];
      const bad = ids.find((t) => !Number.isInteger(t) || t < 0 || t >= s.model.vocabSize);
      if (bad !== undefined) throw new RmlxError("invalid_argument", `prompt token ${bad} is outside the vocabulary (${s.model.vocabSize})`);
      return { ids: [...ids], startsInReasoning: false };
    },
    forward: (step: BuiltStep, logitRows: Int32Array) => runStep(s.model, cache, step, logitRows),
    newDetokenizer: () => new Detokenizer(s.tokenizer),
    newStopFilter: (stops) => new StopStrings(stops),
    tokenBytes: (id) => s.tokenizer.tokenBytes(id),
    logitsProcessor(req) {
      const forced = req.requireToolCall && req.tools?.length ? toolParser : undefined;
      if (!req.jsonSchema && !forced) return null;
      vocab ??= new ConstraintVocab(s.tokenizer.allTokenBytes(), s.tokenizer.specialTokenIds, s.stopTokenIds);
      if (forced === "hermes") {
        const ids = (text: string) => s.tokenizer.encode(text, { addSpecialTokens: false });
        return new ForcedToolCall(toolCallSchema(req.tools!, "arguments"), vocab, ids("<tool_call>\n"), ids("\n</tool_call>"));
      }
      if (forced === "llama3_json") return new ForcedToolCall(toolCallSchema(req.tools!, "parameters"), vocab, [], []);
      if (forced === "pythonic") return new ForcedPythonicCall(req.tools!, vocab);
      return req.jsonSchema ? new JsonConstraint(req.jsonSchema, vocab) : null;
    },
  };
}

function load(name: string, dir: string): void {
  const session = loadSession(dir, getBackend());
  const cache = new KvCache(session.model.backend, session.model.layers, {
    memoryBytes: config.kvMemoryBytes || DEFAULT_KV_BYTES,
    dtype: config.kvDtype ?? "f32",
    windowed: true,
    sizing: { sequences: config.maxRunning, stepTokens: config.prefillChunk },
  });
  const modelType = textModelType(session.md);
  const chatTemplate = session.template?.source(true);
  const reasoning = reasoningTagsFor({ modelType, chatTemplate }) !== undefined;
  const toolParser = toolParserFor({ modelType, chatTemplate });
  const info: LoadedModelInfo = { modelType, toolParser, reasoning };
  const scheduler = new Scheduler(schedulerModel(session, cache, reasoning, toolParser), config, post);
  models.set(name, { session, cache, scheduler, info });
  post({ type: "loaded", model: name, contextLength: session.md.config.contextLength, info });
}

function unload(name: string): void {
  const m = models.get(name);
  if (m) {
    m.scheduler.abortAll("not_found", `model '${name}' was unloaded`);
    m.cache.dispose();
    models.delete(name);
  }
  post({ type: "unloaded", model: name });
}

function stats(): void {
  let running = 0;
  let waiting = 0;
  let kvUsed = 0;
  let kvTotal = 0;
  let kvWindowUsed = 0;
  let kvWindowTotal = 0;
  for (const m of models.values()) {
    running += m.scheduler.numRunning;
    waiting += m.scheduler.numWaiting;
    kvUsed += m.cache.allocator.numUsed;
    kvTotal += m.cache.numBlocks;
    kvWindowUsed += m.cache.windowAllocator?.numUsed ?? 0;
    kvWindowTotal += m.cache.windowAllocator?.numBlocks ?? 0;
  }
  post({ type: "stats", running, waiting, kvUsed, kvTotal, kvWindowUsed, kvWindowTotal });
}

let looping = false;

/** Steps every model with work until none has any, yielding to incoming messages between steps. */
async function loop(): Promise<void> {
  if (looping) return;
  looping = true;
  try {
    for (;;) {
      let busy = false;
      for (const [name, m] of models) {
        if (!m.scheduler.hasWork) continue;
        busy = true;
        try {
          m.scheduler.step();
        } catch (e) {
          const { code, message } = errorOf(e);
          m.scheduler.abortAll(code, `${name}: ${message}`);
        }
      }
      stats();
      if (!busy) break;
      await new Promise<void>((r) => setImmediate(r));
    }
  } finally {
    looping = false;
  }
}

function handle(msg: ToWorker): void {
  switch (msg.type) {
    case "configure":
      config = msg.config;
      if (config.backend !== undefined) process.env.RMLX_BACKEND = config.backend;
      if (config.mlxLib !== undefined) process.env.RMLX_MLX_C_LIB = config.mlxLib;
      if (config.gemv !== undefined) process.env.RMLX_GEMV = config.gemv;
      return;
    case "load":
      try {
        if (!models.has(msg.model)) load(msg.model, msg.dir);
        else post({ type: "loaded", model: msg.model, contextLength: models.get(msg.model)!.session.md.config.contextLength, info: models.get(msg.model)!.info });
      } catch (e) {
        post({ type: "load_error", model: msg.model, ...errorOf(e) });
      }
      return;
    case "unload":
      unload(msg.model);
      return;
    case "generate": {
      const m = models.get(msg.request.model);
      if (!m) {
        post({ type: "error", id: msg.request.id, code: "not_found", message: `model '${msg.request.model}' is not loaded` });
        return;
      }
      owners.set(msg.request.id, msg.request.model);
      m.scheduler.submit(msg.request);
      void loop();
      return;
    }
    case "cancel": {
      const name = owners.get(msg.id);
      owners.delete(msg.id);
      if (name) models.get(name)?.scheduler.cancel(msg.id);
      stats();
      return;
    }
    case "tokenize": {
      const m = models.get(msg.model);
      try {
        if (!m) throw new RmlxError("not_found", `model '${msg.model}' is not loaded`);
        const s = m.session;
        if (msg.messages) {
          const text = renderChat(s, msg.messages, msg.tools, msg.templateKwargs, msg.addGenerationPrompt ?? true);
          post({ type: "tokenized", rid: msg.rid, tokens: s.tokenizer.encode(text, { addSpecialTokens: false }), text });
        } else {
          post({ type: "tokenized", rid: msg.rid, tokens: s.tokenizer.encode(msg.text ?? "") });
        }
      } catch (e) {
        post({ type: "rpc_error", rid: msg.rid, ...errorOf(e) });
      }
      return;
    }
    case "detokenize": {
      const m = models.get(msg.model);
      try {
        if (!m) throw new RmlxError("not_found", `model '${msg.model}' is not loaded`);
        const vocab = m.session.model.vocabSize;
        const bad = msg.tokens.find((t) => t >= vocab);
        if (bad !== undefined) throw new RmlxError("invalid_argument", `token ${bad} is outside the vocabulary (${vocab})`);
        post({ type: "detokenized", rid: msg.rid, text: m.session.tokenizer.decode(msg.tokens) });
      } catch (e) {
        post({ type: "rpc_error", rid: msg.rid, ...errorOf(e) });
      }
      return;
    }
    case "shutdown":
      for (const m of models.values()) m.scheduler.abortAll("cancelled", "the server is shutting down");
      process.exit(0);
  }
}

self.onmessage = (e: MessageEvent<ToWorker>) => handle(e.data);
