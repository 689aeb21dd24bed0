import { RmlxError } from "../errors.ts";
import type {
  ChatMessage,
  EmbedRequest,
  EngineConfig,
  EngineEvent,
  FromWorker,
  GenerateRequest,
  LoadedModelInfo,
  ToolSpec,
  SsdCounts,
  ToWorker,
} from "../engine/types.ts";

type DoneEvent = Extract<EngineEvent, { type: "done" }>;

/** What a generation had done when it ended without its "done" event. */
export interface Progress {
  promptTokens: number;
  cachedTokens: number;
  /** Of cachedTokens, those read back from the SSD tier. */
  cachedDiskTokens?: number;
  generatedTokens: number;
  /** Date.now() at the first generated token, if there was one. */
  firstTokenAt?: number;
}

/** How a generation ended: finished, cancelled (its client went away, or the server stopped), or failed. */
export type GenerationEnd =
  | { kind: "done"; done: DoneEvent }
  | { kind: "cancelled"; progress: Progress }
  | { kind: "failed"; code: string; progress: Progress };

/** One generation's events, in order; ends after its "done" or "error" event. */
export class GenerationStream implements AsyncIterable<EngineEvent> {
  private readonly queue: EngineEvent[] = [];
  private wake: (() => void) | null = null;
  private ended = false;
  private resolveEnded!: () => void;
  readonly progress: Progress = { promptTokens: 0, cachedTokens: 0, generatedTokens: 0 };
  /** Resolves when the generation has ended: done, failed or cancelled. */
  readonly whenEnded = new Promise<void>((r) => (this.resolveEnded = r));
  private endReason: string | undefined;

  constructor(
    readonly id: string,
    private readonly onCancel: (id: string) => void,
  ) {}

  /** How it ended: the engine's finish reason, "error" or "cancelled"; undefined while it runs. */
  get finishReason(): string | undefined {
    return this.endReason;
  }

  private finish(reason: string): void {
    this.endReason ??= reason;
    this.resolveEnded();
  }

  push(ev: EngineEvent): void {
    if (this.ended) return;
    if (ev.type === "started") {
      this.progress.promptTokens = ev.promptTokens;
      this.progress.cachedTokens = ev.cachedTokens;
      if (ev.cachedDiskTokens) this.progress.cachedDiskTokens = ev.cachedDiskTokens;
    } else if (ev.type === "delta" && ev.tokenIds.length > 0) {
      this.progress.firstTokenAt ??= Date.now();
      this.progress.generatedTokens += ev.tokenIds.length;
    }
    this.queue.push(ev);
    if (ev.type === "done" || ev.type === "error") {
      this.ended = true;
      this.finish(ev.type === "done" ? ev.finishReason : "error");
    }
    this.wake?.();
    this.wake = null;
  }

  /** Stops the generation and frees its cache; idempotent, a no-op once it has ended. */
  cancel(): void {
    if (this.ended) return;
    this.ended = true;
    this.finish("cancelled");
    this.onCancel(this.id);
    this.wake?.();
    this.wake = null;
  }

  async next(): Promise<EngineEvent | null> {
    while (this.queue.length === 0) {
      if (this.ended) return null;
      await new Promise<void>((r) => (this.wake = r));
    }
    return this.queue.shift()!;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<EngineEvent> {
    for (let ev = await this.next(); ev; ev = await this.next()) yield ev;
  }
}

export interface EngineStats {
  running: number;
  waiting: number;
  kvUsed: number;
  kvTotal: number;
  kvWindowUsed: number;
  kvWindowTotal: number;
  kvUsedBytes: number;
  kvTotalBytes: number;
  /** The SSD tier's block counts (--kv-ssd), absent without one. */
  ssd?: SsdCounts;
}

interface Pending<T> {
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

export interface TokenizeArgs {
  model: string;
  text?: string;
  messages?: ChatMessage[];
  tools?: ToolSpec[];
  templateKwargs?: Record<string, unknown>;
  addGenerationPrompt?: boolean;
}

/** The server's side of the engine worker: requests go out as messages, events come back per request id. */
export class EngineClient {
  private readonly worker: Worker;
  private readonly streams = new Map<string, GenerationStream>();
  private readonly rpcs = new Map<string, Pending<FromWorker>>();
  private readonly loads = new Map<string, Pending<{ contextLength: number; info?: LoadedModelInfo }>>();
  private readonly unloads = new Map<string, () => void>();
  private nextRid = 0;
  private dead: Error | null = null;
  stats: EngineStats = { running: 0, waiting: 0, kvUsed: 0, kvTotal: 0, kvWindowUsed: 0, kvWindowTotal: 0, kvUsedBytes: 0, kvTotalBytes: 0 };
  /** Called once per generation when it ends. */
  onEnd: ((id: string, end: GenerationEnd) => void) | null = null;

  constructor(workerUrl: string | URL, config: EngineConfig) {
    this.worker = new Worker(workerUrl);
    this.worker.onmessage = (e: MessageEvent<FromWorker>) => this.receive(e.data);
    this.worker.onerror = (e) => this.die(new RmlxError("internal", `engine worker failed: ${e.message}`));
    this.worker.addEventListener("close", () => this.die(new RmlxError("internal", "engine worker exited")));
    this.worker.postMessage({ type: "configure", config } satisfies ToWorker);
  }

  private send(msg: ToWorker): void {
    if (this.dead) throw this.dead;
    this.worker.postMessage(msg);
  }

  private die(err: Error): void {
    if (this.dead) return;
    this.dead = err;
    for (const s of this.streams.values()) s.push({ type: "error", id: s.id, code: "internal", message: err.message });
    this.streams.clear();
    for (const p of [...this.rpcs.values(), ...this.loads.values()]) p.reject(err);
    this.rpcs.clear();
    this.loads.clear();
  }

  private receive(msg: FromWorker): void {
    switch (msg.type) {
      case "started":
      case "delta":
        this.streams.get(msg.id)?.push(msg);
        return;
      case "done":
      case "error": {
        const s = this.streams.get(msg.id);
        this.streams.delete(msg.id);
        s?.push(msg);
        if (s) this.onEnd?.(msg.id, msg.type === "done" ? { kind: "done", done: msg } : { kind: "failed", code: msg.code, progress: s.progress });
        return;
      }
      case "loaded":
        this.loads.get(msg.model)?.resolve({ contextLength: msg.contextLength, info: msg.info });
        this.loads.delete(msg.model);
        return;
      case "load_error":
        this.loads.get(msg.model)?.reject(new RmlxError(msg.code as never, msg.message));
        this.loads.delete(msg.model);
        return;
      case "unloaded":
        this.unloads.get(msg.model)?.();
        this.unloads.delete(msg.model);
        return;
      case "tokenized":
      case "detokenized":
      case "embedded":
        this.rpcs.get(msg.rid)?.resolve(msg);
        this.rpcs.delete(msg.rid);
        return;
      case "rpc_error":
        this.rpcs.get(msg.rid)?.reject(new RmlxError(msg.code as never, msg.message));
        this.rpcs.delete(msg.rid);
        return;
      case "stats":
        this.stats = {
          running: msg.running,
          waiting: msg.waiting,
          kvUsed: msg.kvUsed,
          kvTotal: msg.kvTotal,
          kvWindowUsed: msg.kvWindowUsed ?? 0,
          kvWindowTotal: msg.kvWindowTotal ?? 0,
          kvUsedBytes: msg.kvUsedBytes ?? 0,
          kvTotalBytes: msg.kvTotalBytes ?? 0,
          ...(msg.ssd ? { ssd: msg.ssd } : {}),
        };
        return;
    }
  }

  load(model: string, dir: string): Promise<{ contextLength: number; info?: LoadedModelInfo }> {
    return new Promise((resolve, reject) => {
      this.loads.set(model, { resolve, reject });
      try {
        this.send({ type: "load", model, dir });
      } catch (e) {
        this.loads.delete(model);
        reject(e as Error);
      }
    });
  }

  unload(model: string): Promise<void> {
    return new Promise((resolve) => {
      this.unloads.set(model, resolve);
      this.send({ type: "unload", model });
    });
  }

  generate(request: GenerateRequest): GenerationStream {
    const stream = new GenerationStream(request.id, (id) => {
      if (this.streams.delete(id)) this.onEnd?.(id, { kind: "cancelled", progress: stream.progress });
      if (!this.dead) this.worker.postMessage({ type: "cancel", id } satisfies ToWorker);
    });
    this.streams.set(request.id, stream);
    this.send({ type: "generate", request });
    return stream;
  }

  async tokenize(args: TokenizeArgs): Promise<{ tokens: number[]; text?: string }> {
    const rid = `t${this.nextRid++}`;
    const msg = await this.rpc(rid, { type: "tokenize", rid, ...args });
    if (msg.type !== "tokenized") throw new RmlxError("internal", "engine answered tokenize with the wrong message");
    return { tokens: msg.tokens, text: msg.text };
  }

  async detokenize(model: string, tokens: number[]): Promise<string> {
    const rid = `d${this.nextRid++}`;
    const msg = await this.rpc(rid, { type: "detokenize", rid, model, tokens });
    if (msg.type !== "detokenized") throw new RmlxError("internal", "engine answered detokenize with the wrong message");
    return msg.text;
  }

  async embed(model: string, request: EmbedRequest): Promise<{ embeddings: Float32Array[]; promptTokens: number }> {
    const rid = `e${this.nextRid++}`;
    const msg = await this.rpc(rid, { type: "embed", rid, model, request });
    if (msg.type !== "embedded") throw new RmlxError("internal", "engine answered embed with the wrong message");
    return { embeddings: msg.embeddings, promptTokens: msg.promptTokens };
  }

  private rpc(rid: string, msg: ToWorker): Promise<FromWorker> {
    return new Promise((resolve, reject) => {
      this.rpcs.set(rid, { resolve, reject });
      try {
        this.send(msg);
      } catch (e) {
        this.rpcs.delete(rid);
        reject(e as Error);
      }
    });
  }

  /** Generations still running. */
  get active(): number {
    return this.streams.size;
  }

  cancelAll(): void {
    for (const s of [...this.streams.values()]) s.cancel();
  }

  async shutdown(timeoutMs = 2000): Promise<void> {
    if (this.dead) return;
    const closed = new Promise<void>((r) => this.worker.addEventListener("close", () => r()));
    this.worker.postMessage({ type: "shutdown" } satisfies ToWorker);
    const timer = setTimeout(() => this.worker.terminate(), timeoutMs);
    await closed;
    clearTimeout(timer);
  }
}
