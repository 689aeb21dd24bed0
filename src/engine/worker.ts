// The engine's Bun Worker: loads models, runs one continuous-batching scheduler per loaded model, and talks to the
// HTTP server only through the messages of types.ts, so HTTP never waits on compute. Between two steps the
// worker yields to its event loop, which is where new requests and cancellations come in.
import { getBackend } from "../backend/index.ts";
import { RmlxError } from "../errors.ts";
import { isEmbeddingDir } from "../io/sentence_transformers.ts";
import { runEmbedRequest } from "./embed_request.ts";
import { Embedder } from "./embedder.ts";
import { KvCache } from "./kv/kv_cache.ts";
import { modelIdentity, SsdTier } from "./kv/ssd_tier.ts";
import { Scheduler } from "./scheduler.ts";
import { DEFAULT_DRAFT_TOKENS, loadDraft, loadMtpDraft, speculatorFor } from "./draft_model.ts";
import type { Speculator } from "./speculative.ts";
import { encodeToFit, loadSession, renderChat, sessionModel, type Session } from "./session.ts";
import type { EngineConfig, FromWorker, SsdCounts, ToWorker } from "./types.ts";

declare const self: Worker;

const DEFAULT_KV_BYTES = 1024 ** 3;

let config: EngineConfig = { kvMemoryBytes: DEFAULT_KV_BYTES, maxRunning: 32, maxWaiting: 256, prefillChunk: 2048, prefixCache: true };

interface Loaded {
  session: Session;
  cache: KvCache;
  scheduler: Scheduler;
  contextLength: number;
  tier: SsdTier | null;
  speculator?: Speculator;
}

const models = new Map<string, Loaded>();
/** SSD tier counts of models unloaded since the start, so that the server's counters never go back. */
const retiredSsd: SsdCounts = { written: 0, loaded: 0, dropped: 0, skipped: 0 };
/** Tiers of unloaded models still writing their last blocks. */
const closingTiers = new Set<SsdTier>();

function addSsd(to: SsdCounts, from: SsdCounts): void {
  to.written += from.written;
  to.loaded += from.loaded;
  to.dropped += from.dropped;
  to.skipped += from.skipped;
}
/** Embedding models: no cache and no scheduler; a request runs as one batch when it comes. */
const embedders = new Map<string, Embedder>();
/** Which model each live request runs on, for cancellation. */
const owners = new Map<string, string>();

/** Prompt lengths before a cut (--prompt-overflow truncate), told with the request's "started" event. */
const truncated = new Map<string, number>();

function post(msg: FromWorker): void {
  if (msg.type === "started" && truncated.has(msg.id)) {
    msg.truncatedFrom = truncated.get(msg.id);
    truncated.delete(msg.id);
  }
  if (msg.type === "done" || msg.type === "error") {
    owners.delete(msg.id);
    truncated.delete(msg.id);
  }
  self.postMessage(msg);
}

function errorOf(e: unknown): { code: string; message: string } {
  if (e instanceof RmlxError) return { code: e.code, message: e.message };
  return { code: "internal", message: e instanceof Error ? e.message : String(e) };
}

function loadEmbedder(name: string, dir: string): void {
  const e = Embedder.load(dir, getBackend());
  embedders.set(name, e);
  postEmbedderLoaded(name, e);
}

function postEmbedderLoaded(name: string, e: Embedder): void {
  const { pooling, normalize, dimension, maxTokens, prompts } = e.info;
  post({ type: "loaded", model: name, contextLength: maxTokens, info: { modelType: e.info.modelType, embedding: { pooling, normalize, dimension, maxTokens, prompts } } });
}

/** Caches whose pools are not all resident yet. */
const unpopulated = new Set<KvCache>();
/**
 * Bytes made resident between two looks at the message queue: on a VM whose host backs each page as it is first
 * touched (about 1.5 ms a MiB measured), a request that comes meanwhile waits at most some milliseconds.
 */
const POPULATE_PIECE = 4 << 20;
/**
 * How long a load may spend making its cache resident before it reports the model loaded. Zeroing pages runs at
 * several GB/s on bare metal, so a 1 GiB cache is resident at once; on a VM whose host backs the memory on first
 * touch (1-2 ms a MiB measured) the rest is done in idle time instead of delaying readiness by seconds.
 */
const LOAD_POPULATE_MS = 250;
let populating = false;

function load(name: string, dir: string): void {
  if (isEmbeddingDir(dir)) return loadEmbedder(name, dir);
  const session = loadSession(dir, getBackend(), { chatTemplate: config.chatTemplate, modelOptions: config.modelOptions });
  const cache = new KvCache(session.model.backend, session.model.layers, {
    memoryBytes: config.kvMemoryBytes || DEFAULT_KV_BYTES,
    codec: config.kvQuant,
    windowed: true,
    sizing: { sequences: config.maxRunning, stepTokens: config.prefillChunk },
    // A hybrid target keeps a snapshot of each speculating sequence's state through its verification step.
    stateSlots: config.draftModel || config.draftMtp ? 2 * config.maxRunning : config.maxRunning,
  });
  const full = sessionModel(session, cache);
  // --ctx-size caps the context below the model's own.
  const contextLength = Math.min(full.contextLength, config.contextLength || Infinity);
  const tier = ssdTierFor(name, dir, cache);
  const model = { ...full, contextLength, ...(tier ? { prefixTier: tier } : {}) };
  if (config.promptOverflow === "truncate") {
    model.encode = (req) => {
      const { truncatedFrom, ...e } = encodeToFit(session, req, contextLength);
      if (truncatedFrom !== undefined) truncated.set(req.id, truncatedFrom);
      return e;
    };
  }
  let speculator: Speculator | undefined;
  try {
    if (config.draftModel || config.draftMtp) {
      const draft = config.draftMtp ? loadMtpDraft(session) : loadDraft(session, config.draftModel!);
      const k = config.draftTokens ?? DEFAULT_DRAFT_TOKENS;
      speculator = speculatorFor(draft, k, cache.capacityTokens, config.maxRunning, config.draftFixed);
    }
  } catch (e) {
    if (tier) void tier.store.close();
    cache.dispose();
    throw e;
  }
  const scheduler = new Scheduler({ ...model, speculator }, config, post);
  models.set(name, { session, cache, scheduler, contextLength: model.contextLength, tier, speculator });
  // A server's cache lives as long as its model: its pages are touched at load for a bounded time, then while the
  // worker is idle, not in its steps.
  const until = performance.now() + LOAD_POPULATE_MS;
  let more = true;
  while (more && performance.now() < until) more = cache.populateStep(POPULATE_PIECE);
  postLoaded(name, models.get(name)!);
  if (more) {
    unpopulated.add(cache);
    void populateIdle();
  }
}

/** The model's SSD tier under --kv-ssd; none without a prefix cache. */
function ssdTierFor(name: string, dir: string, cache: KvCache): SsdTier | null {
  const ssd = config.kvSsd;
  if (!ssd || !config.prefixCache) return null;
  const warn = (m: string) => process.stderr.write(`rmlx: warning: ${m}\n`);
  try {
    return new SsdTier(cache, { dir: ssd.dir, budgetBytes: ssd.budgetBytes, modelId: modelIdentity(dir), warn: (m) => warn(`${name}: ${m}`) });
  } catch (e) {
    // An unreadable index or directory costs the tier, not the model.
    warn(`${name}: the SSD tier in ${ssd.dir} is off: ${(e as Error).message}`);
    return null;
  }
}

/** Offers a model's RAM prefix entries to its SSD tier and waits until they are written. */
async function keepPrefixes(m: Loaded): Promise<void> {
  if (!m.tier) return;
  await m.scheduler.prefix?.keepAllPaced();
  await m.tier.store.close();
}

function postLoaded(name: string, m: Loaded): void {
  post({ type: "loaded", model: name, contextLength: m.contextLength, info: m.session.info });
}

function unload(name: string): void {
  embedders.delete(name);
  const m = models.get(name);
  if (m) {
    m.scheduler.abortAll("not_found", `model '${name}' was unloaded`);
    // The blocks are copied out before the pools go; the files are written after.
    m.scheduler.prefix?.keepAll();
    const tier = m.tier;
    if (tier) {
      closingTiers.add(tier);
      void tier.store.close().finally(() => {
        closingTiers.delete(tier);
        addSsd(retiredSsd, tier.store.stats);
      });
    }
    unpopulated.delete(m.cache);
    m.cache.dispose();
    m.speculator?.dispose();
    models.delete(name);
    // The model's weight copies (Backend.weightBuffer) are freed with their tensors: collect them soon (outside
    // this frame, which still holds the model), since the collector does not see their size.
    setImmediate(() => Bun.gc(true));
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
  let kvUsedBytes = 0;
  let kvTotalBytes = 0;
  const ssd = { ...retiredSsd };
  for (const t of closingTiers) addSsd(ssd, t.store.stats);
  for (const m of models.values()) {
    if (m.tier) addSsd(ssd, m.tier.store.stats);
    running += m.scheduler.numRunning;
    waiting += m.scheduler.numWaiting;
    kvUsed += m.cache.allocator.numUsed;
    kvTotal += m.cache.numBlocks;
    kvWindowUsed += m.cache.windowAllocator?.numUsed ?? 0;
    kvWindowTotal += m.cache.windowAllocator?.numBlocks ?? 0;
    kvUsedBytes += m.cache.usedBytes;
    kvTotalBytes += m.cache.memoryBytes;
  }
  post({ type: "stats", running, waiting, kvUsed, kvTotal, kvWindowUsed, kvWindowTotal, kvUsedBytes, kvTotalBytes, ...(config.kvSsd ? { ssd } : {}) });
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
  void populateIdle();
}

/** Makes the caches' pools resident a piece at a time while no model has work; loop() calls it again when done. */
async function populateIdle(): Promise<void> {
  if (populating) return;
  populating = true;
  try {
    while (!looping && unpopulated.size > 0) {
      if ([...models.values()].some((m) => m.scheduler.hasWork)) return;
      const cache = unpopulated.values().next().value!;
      if (!cache.populateStep(POPULATE_PIECE)) unpopulated.delete(cache);
      await new Promise<void>((r) => setImmediate(r));
    }
  } finally {
    populating = false;
  }
}

function handle(msg: ToWorker): void {
  switch (msg.type) {
    case "configure":
      config = msg.config;
      if (config.backend !== undefined) process.env.RMLX_BACKEND = config.backend;
      if (config.mlxLib !== undefined) process.env.RMLX_MLX_C_LIB = config.mlxLib;
      if (config.gemv !== undefined) process.env.RMLX_GEMV = config.gemv;
      if (config.gemm !== undefined) process.env.RMLX_GEMM = config.gemm;
      if (config.computeDtype !== undefined) process.env.RMLX_COMPUTE_DTYPE = config.computeDtype;
      if (config.mmapWeights) process.env.RMLX_MMAP_WEIGHTS = "1";
      if (config.threads !== undefined) process.env.RMLX_THREADS = config.threads;
      return;
    case "load":
      try {
        const m = models.get(msg.model);
        const e = embedders.get(msg.model);
        if (m) postLoaded(msg.model, m);
        else if (e) postEmbedderLoaded(msg.model, e);
        else load(msg.model, msg.dir);
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
      truncated.delete(msg.id);
      if (name) models.get(name)?.scheduler.cancel(msg.id);
      stats();
      return;
    }
    case "embed": {
      const e = embedders.get(msg.model);
      try {
        if (!e) throw new RmlxError(models.has(msg.model) ? "invalid_argument" : "not_found", `model '${msg.model}' is not a loaded embedding model`);
        post({ type: "embedded", rid: msg.rid, ...runEmbedRequest(e, msg.request) });
      } catch (e) {
        post({ type: "rpc_error", rid: msg.rid, ...errorOf(e) });
      }
      return;
    }
    case "tokenize": {
      const em = embedders.get(msg.model);
      if (em) {
        try {
          if (msg.messages) throw new RmlxError("invalid_argument", `model '${msg.model}' is an embedding model: it has no chat template`);
          post({ type: "tokenized", rid: msg.rid, tokens: em.tokenize(msg.text ?? "") });
        } catch (e) {
          post({ type: "rpc_error", rid: msg.rid, ...errorOf(e) });
        }
        return;
      }
      const m = models.get(msg.model);
      try {
        if (!m) throw new RmlxError("not_found", `model '${msg.model}' is not loaded`);
        const s = m.session;
        if (msg.messages) {
          const { text, ids } = renderChat(s, { ...msg, messages: msg.messages });
          post({ type: "tokenized", rid: msg.rid, tokens: ids, text });
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
      const em = embedders.get(msg.model);
      try {
        if (em) {
          post({ type: "detokenized", rid: msg.rid, text: em.tokenizer.decode(msg.tokens) });
          return;
        }
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
      void Promise.all([...models.values()].map(keepPrefixes)).finally(() => process.exit(0));
      return;
  }
}

self.onmessage = (e: MessageEvent<ToWorker>) => handle(e.data);
