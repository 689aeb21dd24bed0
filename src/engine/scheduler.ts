// Continuous batching for one loaded model. Every step gathers all running sequences into ONE batched forward:
// the next prompt chunk of those still prefilling (within a per-step token budget) and one decode token of the
// others. Requests wait in a bounded queue; a request is admitted when the KV cache has room for its whole prompt;
// when decoding runs out of blocks the most recently admitted sequence is preempted (its blocks released, its
// tokens kept) and recomputed later. With prefix caching, full blocks are shared across requests by the hash of
// their token prefix, so a prompt that starts like an earlier one skips that part of the prefill. A hybrid model's
// recurrent state is kept with them as snapshots at the ends of prompt chunks: its chunks end on block boundaries,
// and one of them where the last whole block before the prompt's last token ends, the furthest a repeat can reuse.
import type { RowDraw } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { LaunchedIds } from "./forward_batch.ts";
import type { BuiltStep, KvCache, StepEntry } from "./kv/kv_cache.ts";
import { Sequence } from "./kv/kv_cache.ts";
import { allowedTokens, type LogitsProcessor, type MaskScratch } from "./logits_processor.ts";
import { PrefixCache, type PrefixTier } from "./kv/prefix_cache.ts";
import { Sampler, type SampledToken } from "./sampler.ts";
import { type Draft, type ProposeItem, type Speculator, type Verdict, verifyDraft } from "./speculative.ts";
import type { EngineConfig, EngineEvent, FinishReason, GenerateRequest, TokenLogprob } from "./types.ts";

/** The engine settings a scheduler reads (the CLI's in-process runs have no others). */
export type SchedulerConfig = Pick<EngineConfig, "maxRunning" | "maxWaiting" | "prefillChunk" | "prefixCache">;

/** Streaming text pieces out of token ids (src/text/detokenizer.ts fits). */
export interface TokenTextStream {
  push(tokenId: number): string;
  flush(): string;
}

/** Holds back text that may begin a stop string (src/text/stop.ts fits). */
export interface StopFilter {
  push(piece: string): { text: string; stop?: string };
  flush(): string;
}

/** What the scheduler needs of a loaded model, its tokenizer and its cache. */
export interface SchedulerModel {
  readonly cache: KvCache;
  readonly contextLength: number;
  readonly eosTokenIds: readonly number[];
  /** Prompt token ids of a request (chat template applied), and whether they end inside an open reasoning section. */
  encode(req: GenerateRequest): { ids: number[]; startsInReasoning: boolean };
  /** Runs one batched forward and returns f32 logits [logitRows.length, vocab], row-major, valid until the next. */
  forward(step: BuiltStep, logitRows: Int32Array): Float32Array;
  /**
   * The same step, returning only the token of each logits row, drawn where the logits are under one RowDraw per
   * row (Backend.drawRows), so that the logits are not copied out. Used when no row needs the host's sampler.
   */
  forwardDraw?(step: BuiltStep, logitRows: Int32Array, draws: readonly RowDraw[]): Int32Array;
  /** Whether forwardDraw is the cheaper way to pick a token at this temperature (else the host samples). */
  drawsAt?(temperature: number): boolean;
  /** The logits' width, where forwardDraw takes masks (RowDraw.allowed) for constrained rows. */
  readonly vocabSize?: number;
  /**
   * forwardDraw that returns before the device is done (backends that evaluate asynchronously), so that the next
   * step is recorded while this one computes; with `inputs` the step's tokens are an earlier launch's ids, still
   * on the device (the step's own token ids are then placeholders).
   */
  launchDraw?(step: BuiltStep, logitRows: Int32Array, draws: readonly RowDraw[], inputs?: LaunchedIds): LaunchedIds;
  /**
   * The same step, also returning the post-norm hidden states of hiddenRows [rows, hiddenSize] (valid until the
   * next step): what a drafter on the model's multi-token-prediction head reads.
   */
  forwardHidden?(step: BuiltStep, logitRows: Int32Array, hiddenRows: Int32Array): { logits: Float32Array; hidden: Float32Array };
  newDetokenizer(): TokenTextStream;
  newStopFilter(stops: string[]): StopFilter;
  /** The raw bytes of one token (for logprobs). */
  tokenBytes(id: number): Uint8Array;
  /** The request's output constraint; `startsInReasoning`: its prompt left a reasoning section open. */
  logitsProcessor?(req: GenerateRequest, prompt: { startsInReasoning: boolean }): LogitsProcessor | null;
  /**
   * The token ids of the reasoning tags (<think> and </think>; Gemma 4's two-token <|channel>thought and
   * <channel|>), when the model has them: needed for thinking budgets.
   */
  readonly reasoningTokens?: { open: readonly number[]; close: readonly number[] };
  /** Where prefix-cache entries go when they leave RAM (an SSD tier), if anywhere. */
  readonly prefixTier?: PrefixTier;
  /** A drafter that proposes tokens for the target to verify (speculative decoding). */
  readonly speculator?: Speculator;
}

const NO_LOGITS = new Float32Array(0);
/** The token of a pipelined step's entry, which the step takes from the device instead. */
const ON_DEVICE = Int32Array.of(0);

/** A decode step started on the device whose tokens have not been taken yet, one row per owner. */
interface InFlight {
  ids: LaunchedIds;
  owners: Active[];
}

interface Active {
  req: GenerateRequest;
  seq: Sequence;
  /** Prompt and generated tokens; those past seq.length still have to go through the model. */
  tokens: number[];
  promptLen: number;
  maxTokens: number;
  generated: number;
  sampler: Sampler;
  detok: TokenTextStream;
  stop: StopFilter;
  processor: LogitsProcessor | null;
  cachedTokens: number;
  /** Of the cached tokens, those whose blocks came back from the prefix cache's tier. */
  tierTokens: number;
  startsInReasoning: boolean;
  /** Inside a reasoning section now, and how many tokens it has taken so far. */
  inReasoning: boolean;
  reasoningUsed: number;
  /** Tokens of a closing tag still to be emitted after a thinking budget ran out, in place of sampled ones. */
  forced: number[];
  started: boolean;
  submitMs: number;
  admitMs: number;
  firstTokenMs: number;
}

const utf8 = new TextDecoder("utf-8", { fatal: false });

export class Scheduler {
  private readonly waiting: Active[] = [];
  private readonly running: Active[] = [];
  readonly prefix: PrefixCache | null;
  private readonly spec: Speculator | null;
  /** Recurrent-state snapshots of the sequences verifying drafts this step (hybrid models). */
  private readonly snapshots = new Map<Active, number>();
  /**
   * The step still computing when decode steps are pipelined. Its sequences are already advanced past its input
   * tokens; its output tokens are taken by the next step() after that one has launched the step that follows.
   */
  private inFlight: InFlight | null = null;
  /** Mask buffers of a step's constrained rows drawn on the device, reused from step to step. */
  private readonly masks: MaskScratch[] = [];

  constructor(
    private readonly model: SchedulerModel,
    private readonly config: SchedulerConfig,
    private readonly emit: (ev: EngineEvent) => void,
  ) {
    const cache = model.cache;
    this.prefix = config.prefixCache
      ? new PrefixCache(cache.spaces, cache.blockSize, cache.rootHash, model.prefixTier ?? null, cache.snapshotBlocks)
      : null;
    this.spec = model.speculator ?? null;
  }

  get numRunning(): number {
    return this.running.length;
  }

  get numWaiting(): number {
    return this.waiting.length;
  }

  get hasWork(): boolean {
    return this.running.length > 0 || this.waiting.length > 0;
  }

  /** Queues a request; bad or unplaceable requests are answered at once with an error event. */
  submit(req: GenerateRequest): void {
    try {
      this.waiting.push(this.prepare(req));
    } catch (e) {
      const err = e instanceof RmlxError ? e : new RmlxError("internal", (e as Error).message);
      this.emit({ type: "error", id: req.id, code: err.code, message: err.message });
    }
  }

  private prepare(req: GenerateRequest): Active {
    if (this.waiting.length >= this.config.maxWaiting) {
      throw new RmlxError("overloaded", `the queue is full (${this.waiting.length} requests waiting)`);
    }
    const sampler = new Sampler(req.sampling);
    const { ids, startsInReasoning } = this.model.encode(req);
    const ctx = this.model.contextLength;
    if (ids.length === 0) throw new RmlxError("invalid_argument", "the prompt is empty");
    if (ids.length >= ctx) {
      throw new RmlxError("context_length", `the prompt has ${ids.length} tokens; this model's context is ${ctx} tokens`);
    }
    const cache = this.model.cache;
    const blocks = Math.ceil((ids.length + 1) / cache.blockSize);
    if (blocks > cache.numBlocks) {
      throw new RmlxError(
        "context_length",
        `the prompt has ${ids.length} tokens; the KV cache budget holds ${cache.capacityTokens} (raise --kv-memory)`,
      );
    }
    return {
      req,
      seq: new Sequence(),
      tokens: [...ids],
      promptLen: ids.length,
      maxTokens: Math.max(0, Math.min(req.maxTokens, ctx - ids.length)),
      generated: 0,
      sampler,
      detok: this.model.newDetokenizer(),
      stop: this.model.newStopFilter(req.stop),
      processor: this.model.logitsProcessor?.(req, { startsInReasoning }) ?? null,
      cachedTokens: 0,
      tierTokens: 0,
      startsInReasoning,
      inReasoning: startsInReasoning,
      reasoningUsed: 0,
      forced: [],
      started: false,
      submitMs: performance.now(),
      admitMs: 0,
      firstTokenMs: 0,
    };
  }

  /** Stops a request wherever it is and frees its blocks; no event follows. */
  cancel(id: string): boolean {
    for (const list of [this.waiting, this.running]) {
      const i = list.findIndex((a) => a.req.id === id);
      if (i < 0) continue;
      const [a] = list.splice(i, 1);
      this.model.cache.release(a!.seq);
      this.spec?.release(a!);
      return true;
    }
    return false;
  }

  /** Ends every request with an error event (model unloading, engine shutting down). */
  abortAll(code: string, message: string): void {
    this.inFlight?.ids.drop();
    this.inFlight = null;
    for (const snap of this.snapshots.values()) this.model.cache.states?.dropSnapshot(snap);
    this.snapshots.clear();
    for (const a of [...this.running, ...this.waiting]) {
      this.model.cache.release(a.seq);
      this.spec?.release(a);
      this.emit({ type: "error", id: a.req.id, code, message });
    }
    this.running.length = 0;
    this.waiting.length = 0;
  }

  /** Moves waiting requests into the batch while the batch and the cache have room. */
  private admit(): void {
    const cache = this.model.cache;
    while (this.waiting.length > 0 && this.running.length < this.config.maxRunning) {
      const a = this.waiting[0]!;
      if (this.prefix) {
        // Keep at least one token to run, so the step yields the logits of the last prompt token.
        const m = this.prefix.match(a.tokens, Math.floor((a.tokens.length - 1) / cache.blockSize));
        cache.adopt(a.seq, m);
        if (!a.started) {
          a.cachedTokens = a.seq.length;
          // Blocks restored on an earlier try that had to wait are in RAM by now: they still count as the tier's.
          a.tierTokens = Math.min(a.cachedTokens, Math.max(a.tierTokens, m.fromTier * cache.blockSize));
        }
      }
      const pending = a.tokens.length - a.seq.length;
      // The sliding space is reserved one prefill chunk at a time, the main space for the whole prompt.
      const firstChunk = Math.min(pending, this.config.prefillChunk);
      const need = cache.needs(a.seq, pending + 1, firstChunk);
      // Leave one block of growth per running sequence so that admitting does not force a preemption at once.
      if (!cache.ensureFree(need, this.running.length)) {
        if (this.running.length > 0) {
          // Wait with nothing held: the matched blocks stay in the prefix cache, free to be evicted.
          cache.release(a.seq);
          break;
        }
        if (!cache.ensureFree(need)) {
          this.waiting.shift();
          cache.release(a.seq);
          this.emit({ type: "error", id: a.req.id, code: "overloaded", message: "the KV cache cannot hold this request" });
          continue;
        }
      }
      this.waiting.shift();
      cache.reserve(a.seq, pending, firstChunk);
      if (!a.started) a.admitMs = performance.now();
      this.running.push(a);
      if (!a.started) {
        a.started = true;
        this.emit({
          type: "started",
          id: a.req.id,
          promptTokens: a.promptLen,
          cachedTokens: a.cachedTokens,
          ...(a.tierTokens > 0 ? { cachedDiskTokens: a.tierTokens } : {}),
          startsInReasoning: a.startsInReasoning,
        });
      }
    }
  }

  /** Releases the most recently admitted sequence other than `keep` and queues it first for recomputation. */
  private preempt(keep: Active): boolean {
    for (let i = this.running.length - 1; i >= 0; i--) {
      const a = this.running[i]!;
      if (a === keep) continue;
      this.running.splice(i, 1);
      this.model.cache.release(a.seq);
      this.spec?.releaseKv(a);
      this.waiting.unshift(a);
      return true;
    }
    return false;
  }

  /** Room for n more tokens of a, preempting others as needed; false when even that cannot make room. */
  private reserveOrPreempt(a: Active, n: number): boolean {
    for (;;) {
      try {
        this.model.cache.reserve(a.seq, n);
        return true;
      } catch (e) {
        if (!(e instanceof RmlxError && e.code === "overloaded")) throw e;
        if (!this.preempt(a)) return false;
      }
    }
  }

  /** Runs one batched forward over everything running; false when there was nothing to do. */
  step(): boolean {
    if (this.inFlight && this.stepInFlight()) return true;
    this.admit();
    if (this.running.length === 0) return false;
    const cache = this.model.cache;
    const entries: StepEntry[] = [];
    const owners: Active[] = [];
    const prefilling: boolean[] = [];
    let budget = this.config.prefillChunk;
    // Decoding sequences first (one token each), then prompt chunks within the step's token budget.
    const order = [...this.running].sort((x, y) => x.tokens.length - x.seq.length - (y.tokens.length - y.seq.length));
    for (const a of order) {
      if (!this.running.includes(a)) continue;
      const pending = a.tokens.length - a.seq.length;
      const n = pending === 1 ? 1 : this.chunkEnd(a, Math.min(pending, budget)) - a.seq.length;
      if (n <= 0) continue;
      if (pending > 1) budget -= n;
      if (!this.reserveOrPreempt(a, n)) {
        // Alone and still out of blocks: the cache budget ends this sequence as a context limit would.
        this.finish(a, "length");
        continue;
      }
      entries.push({ seq: a.seq, tokens: Int32Array.from(a.tokens.slice(a.seq.length, a.seq.length + n)) });
      owners.push(a);
      prefilling.push(pending > 1);
    }
    // Entries of sequences preempted while building the step are dropped.
    for (let i = owners.length - 1; i >= 0; i--) {
      if (!this.running.includes(owners[i]!)) {
        owners.splice(i, 1);
        entries.splice(i, 1);
        prefilling.splice(i, 1);
      }
    }
    if (entries.length === 0) return this.running.length > 0;
    const drafts = this.spec ? this.speculate(entries, owners) : [];
    const built = cache.buildStep(entries);
    // Logit rows: the last token of each entry that ends its pending tokens, every token of a speculating one.
    const rows: number[] = [];
    const firstRow: number[] = [];
    const hasRow: boolean[] = [];
    let decodeOnly = true;
    let drafted = 0;
    for (let i = 0; i < entries.length; i++) {
      const k = drafts[i]?.tokens.length ?? 0;
      drafted += k;
      if (entries[i]!.tokens.length !== k + 1) decodeOnly = false;
      firstRow[i] = rows.length;
      hasRow[i] = owners[i]!.seq.length + entries[i]!.tokens.length - k === owners[i]!.tokens.length;
      if (hasRow[i]) for (let r = built.lastRows[i]! - k; r <= built.lastRows[i]!; r++) rows.push(r);
    }
    // A drafter on the model's own MTP head reads the target's hidden state of every token of the sequences
    // that may speculate.
    const hiddenRows: number[] = [];
    const firstHidden: number[] = [];
    if (this.spec?.wantsHidden && this.model.forwardHidden) {
      for (let i = 0; i < entries.length; i++) {
        firstHidden[i] = -1;
        if (!this.speculable(owners[i]!)) continue;
        firstHidden[i] = hiddenRows.length;
        for (let r = built.lastRows[i]! - entries[i]!.tokens.length + 1; r <= built.lastRows[i]!; r++) hiddenRows.push(r);
      }
    }
    const t0 = performance.now();
    let logits: Float32Array;
    let hidden: Float32Array = NO_LOGITS;
    let deviceIds: Int32Array | null = null;
    if (hiddenRows.length > 0) {
      ({ logits, hidden } = this.model.forwardHidden!(built, Int32Array.from(rows), Int32Array.from(hiddenRows)));
    } else {
      const onDevice = this.model.forwardDraw && rows.length > 0 && drafted === 0 && owners.every((a, i) => !hasRow[i] || this.drawsOnDevice(a));
      if (this.model.launchDraw && drafted === 0 && owners.every((a, i) => hasRow[i] && this.pipelined(a))) {
        // No row needs the host to pick its token: start the step and take its tokens while the next one computes.
        const ids = this.model.launchDraw(built, Int32Array.from(rows), owners.map((a) => a.sampler.rowDraw()));
        cache.advance(entries, this.prefix ? { prefix: this.prefix, tokens: owners.map((a) => a.tokens), snapshot: cache.states ? prefilling : undefined } : undefined);
        this.inFlight = { ids, owners };
        return true;
      }
      const draws = onDevice ? owners.flatMap((a, i) => (hasRow[i] ? [this.rowDraw(a, i)] : [])) : [];
      deviceIds = onDevice ? this.model.forwardDraw!(built, Int32Array.from(rows), draws) : null;
      logits = deviceIds ? NO_LOGITS : this.model.forward(built, Int32Array.from(rows));
    }
    if (this.spec && decodeOnly) this.spec.observeStep(performance.now() - t0, drafted);
    const vocab = rows.length > 0 ? logits.length / rows.length : 0;
    let rowData = logits;
    const row = (r: number) => rowData.subarray(r * vocab, (r + 1) * vocab);
    const verdicts = drafts.map((d, i) => (d ? this.verify(owners[i]!, d, firstRow[i]!, row) : null));
    if (hiddenRows.length > 0) {
      // The hidden states of the tokens the target keeps: all of an entry's, or a speculating one's last token
      // and the accepted proposals.
      const H = hidden.length / hiddenRows.length;
      for (let i = 0; i < entries.length; i++) {
        const h = firstHidden[i]!;
        if (h < 0) continue;
        const n = verdicts[i] ? verdicts[i]!.accepted + 1 : entries[i]!.tokens.length;
        this.spec!.observe(owners[i]!, owners[i]!.seq.length, hidden.subarray(h * H, (h + n) * H), n, owners[i]!.tokens);
      }
    }
    // A speculating entry keeps its last token and the accepted proposals; the blocks past them go back.
    const kept = entries.map((e, i) => (verdicts[i] ? { seq: e.seq, tokens: e.tokens.subarray(0, verdicts[i].accepted + 1) } : e));
    const offerTokens = owners.map((a, i) => (verdicts[i] ? [...a.tokens, ...verdicts[i].tokens.slice(0, verdicts[i].accepted)] : a.tokens));
    const rerun = this.restoreRejected(owners, verdicts, drafts);
    const advanced = kept.filter((_, i) => !rerun.has(i));
    const snapshot = cache.states ? prefilling.filter((_, i) => !rerun.has(i)) : undefined;
    const offer = this.prefix ? { prefix: this.prefix, tokens: offerTokens.filter((_, i) => !rerun.has(i)), snapshot } : undefined;
    cache.advance(advanced, offer);
    if (rerun.size > 0) {
      // The recurrent state went back to before the step: run the kept tokens again (no logits needed; the
      // step's logits are kept apart first, since a forward may reuse their buffer).
      rowData = logits.slice();
      const again = [...rerun].map((i) => kept[i]!);
      this.model.forward(cache.buildStep(again), new Int32Array(0));
      cache.advance(again);
    }
    for (let i = 0; i < entries.length; i++) {
      const a = owners[i]!;
      const v = verdicts[i];
      if (v) {
        cache.truncate(a.seq, a.seq.length);
        this.spec!.settle(a, a.tokens.length + v.accepted, drafts[i]!.tokens.length, v.accepted);
        for (const token of v.tokens) if (!this.take(a, { token, logprob: NaN, top: [] })) break;
      } else if (deviceIds && hasRow[i]) {
        this.takeSampled(a, { token: deviceIds[firstRow[i]!]!, logprob: NaN, top: [] });
      } else if (hasRow[i]) {
        this.sampleNext(a, row(firstRow[i]!));
      }
    }
    return this.hasWork;
  }

  /**
   * The in-flight step's turn: when every sequence of it goes on decoding with its tokens picked on the device,
   * the next step is launched first (its inputs the in-flight tokens, still on the device), then the in-flight
   * tokens are read and taken, so the host's work overlaps the device's; a sequence that stops (EOS, a stop
   * string) has cost one step of work that is dropped, as in mlx-lm. Otherwise the tokens are taken and false
   * says a plain step follows.
   */
  private stepInFlight(): boolean {
    const f = this.inFlight!;
    this.inFlight = null;
    const cache = this.model.cache;
    const again =
      this.waiting.length === 0 &&
      this.running.length === f.owners.length &&
      f.owners.every((a) => this.running.includes(a) && this.pipelined(a) && a.generated + 1 < a.maxTokens) &&
      f.owners.every((a) => this.reserveNext(a));
    let next: InFlight | null = null;
    if (again) {
      const built = cache.buildStep(f.owners.map((a) => ({ seq: a.seq, tokens: ON_DEVICE })));
      next = { ids: this.model.launchDraw!(built, built.lastRows, f.owners.map((a) => a.sampler.rowDraw()), f.ids), owners: f.owners };
    }
    const ids = f.ids.read();
    f.ids.drop();
    f.owners.forEach((a, i) => {
      if (this.running.includes(a)) this.takeSampled(a, { token: ids[i]!, logprob: NaN, top: [] });
    });
    if (!next) return false;
    const live = f.owners.filter((a) => this.running.includes(a));
    if (live.length === 0) {
      next.ids.drop();
      return true;
    }
    const entries = live.map((a) => ({ seq: a.seq, tokens: ON_DEVICE }));
    cache.advance(entries, this.prefix ? { prefix: this.prefix, tokens: live.map((a) => a.tokens) } : undefined);
    this.inFlight = next;
    return true;
  }

  /** Whether a's next token may be picked on the device and fed to the next step without the host seeing it. */
  private pipelined(a: Active): boolean {
    return (
      !this.spec && !a.processor && this.drawsOnDevice(a) && a.forced.length === 0 && !(a.req.thinkingBudget !== undefined && this.model.reasoningTokens)
    );
  }

  /** Whether a's tokens are picked where the logits are (a constrained one's through its mask). */
  private drawsOnDevice(a: Active): boolean {
    return (!a.processor || this.model.vocabSize !== undefined) && a.sampler.drawable && (this.model.drawsAt?.(a.req.sampling.temperature) ?? false);
  }

  /**
   * a's next pick as made on the device: its sampler's draw, and its constraint's mask (in place of apply), in the
   * step's i-th mask buffer.
   */
  private rowDraw(a: Active, i: number): RowDraw {
    const d = a.sampler.rowDraw();
    if (!a.processor) return d;
    const scratch = (this.masks[i] ??= { row: new Float32Array(0), allowed: new Uint8Array(0) });
    const allowed = allowedTokens(a.processor, this.model.vocabSize!, scratch);
    return allowed ? { ...d, allowed } : d;
  }

  /** Room for one more token of a without preempting anyone. */
  private reserveNext(a: Active): boolean {
    try {
      this.model.cache.reserve(a.seq, 1);
      return true;
    } catch (e) {
      if (e instanceof RmlxError && e.code === "overloaded") return false;
      throw e;
    }
  }

  /**
   * Where a's prompt chunk of n tokens ends. With a prefix cache, a hybrid's chunk ends on a block boundary (unless
   * that leaves nothing, or it is the last) and never runs past the last whole block before the final token, so
   * that its recurrent state can be kept there.
   */
  private chunkEnd(a: Active, n: number): number {
    const start = a.seq.length;
    const end = start + n;
    if (!this.prefix || !this.model.cache.states) return end;
    const bs = this.model.cache.blockSize;
    const aligned = Math.floor(end / bs) * bs;
    const stop = end < a.tokens.length && aligned > start ? aligned : end;
    const last = Math.floor((a.tokens.length - 1) / bs) * bs;
    return start < last && stop > last ? last : stop;
  }

  /**
   * Hybrid models: each speculating sequence's state snapshot goes back in place where the target rejected a
   * proposal (the step's state has absorbed tokens that are not kept), and is dropped where it kept them all.
   * Returns the entries whose kept tokens must run again.
   */
  private restoreRejected(owners: Active[], verdicts: (Verdict | null)[], drafts: (Draft | null)[]): Set<number> {
    const rerun = new Set<number>();
    const states = this.model.cache.states;
    if (!states) return rerun;
    verdicts.forEach((v, i) => {
      const a = owners[i]!;
      const snap = this.snapshots.get(a);
      if (!v || snap === undefined) return;
      this.snapshots.delete(a);
      if (v.accepted === drafts[i]!.tokens.length) return states.dropSnapshot(snap);
      states.restore(a.seq, snap);
      rerun.add(i);
    });
    return rerun;
  }

  /** Whether a request may speculate: constrained, logprob and thinking-budget requests run plain steps. */
  private speculable(a: Active): boolean {
    const p = a.req.sampling;
    if (a.processor || p.logprobs || (p.topLogprobs ?? 0) > 0) return false;
    return !(a.req.thinkingBudget !== undefined && this.model.reasoningTokens);
  }

  /**
   * Draft tokens for the decoding entries whose sequences speculate this step, appended to their entries (the
   * target's cache gets room for them first); the drafts by entry, null where there are none.
   */
  private speculate(entries: StepEntry[], owners: Active[]): (Draft | null)[] {
    const spec = this.spec!;
    const out: (Draft | null)[] = entries.map(() => null);
    if (!spec.beginStep()) return out;
    const decoding = (i: number) => entries[i]!.tokens.length === 1 && owners[i]!.tokens.length - owners[i]!.seq.length === 1;
    let batch = 0;
    for (let i = 0; i < entries.length; i++) if (decoding(i)) batch++;
    const items: ProposeItem[] = [];
    const at: number[] = [];
    for (let i = 0; i < entries.length; i++) {
      const a = owners[i]!;
      if (!decoding(i) || !this.speculable(a)) continue;
      const k = spec.plan(a, a.req.sampling, a.tokens.length, a.generated, a.maxTokens - a.generated, batch);
      if (k === 0) continue;
      try {
        this.model.cache.reserve(a.seq, k + 1);
      } catch (e) {
        if (e instanceof RmlxError && e.code === "overloaded") continue;
        throw e;
      }
      const states = this.model.cache.states;
      if (states) {
        const snap = states.snapshot(a.seq);
        if (snap === undefined) continue;
        this.snapshots.set(a, snap);
      }
      items.push({ key: a, tokens: a.tokens, k });
      at.push(i);
    }
    if (items.length === 0) return out;
    spec.propose(items, (key) => (key as Active).req.sampling).forEach((d, j) => {
      const i = at[j]!;
      if (!d || d.tokens.length === 0) {
        const snap = this.snapshots.get(owners[i]!);
        if (snap !== undefined) this.model.cache.states!.dropSnapshot(snap);
        this.snapshots.delete(owners[i]!);
        return;
      }
      out[i] = d;
      entries[i] = { seq: entries[i]!.seq, tokens: Int32Array.from([entries[i]!.tokens[0]!, ...d.tokens]) };
    });
    return out;
  }

  /** The target's verdict on a's draft, from its logit rows first .. first + k. */
  private verify(a: Active, d: Draft, first: number, row: (r: number) => Float32Array): Verdict {
    const k = d.tokens.length;
    const history = new Int32Array(a.tokens.length + k);
    history.set(a.tokens);
    history.set(d.tokens, a.tokens.length);
    const rows = Array.from({ length: k + 1 }, (_, j) => row(first + j));
    return verifyDraft(a.sampler, rows, history, a.tokens.length, d);
  }

  private sampleNext(a: Active, row: Float32Array): void {
    a.processor?.apply(row);
    this.take(a, a.forced.length > 0 || this.overBudget(a) ? this.forcedClose(a) : a.sampler.sample(row, a.tokens));
  }

  /** Takes a token picked on the device, unless a forced close of the reasoning section comes first. */
  private takeSampled(a: Active, s: SampledToken): void {
    this.take(a, a.forced.length > 0 || this.overBudget(a) ? this.forcedClose(a) : s);
  }

  /** Appends a chosen token to a's output; false when it ended the request. */
  private take(a: Active, s: SampledToken): boolean {
    const req = a.req;
    this.trackReasoning(a, s.token);
    if (a.generated === 0) a.firstTokenMs = performance.now();
    a.generated++;
    const isEos = !req.ignoreEos && this.model.eosTokenIds.includes(s.token);
    if (isEos || req.stopTokenIds.includes(s.token)) return this.finish(a, "stop", s.token);
    if (a.processor && !a.processor.accept(s.token)) return this.finish(a, "stop");
    a.tokens.push(s.token);
    const piece = a.stop.push(a.detok.push(s.token));
    const logprobs = req.sampling.logprobs ? [this.logprob(s)] : undefined;
    this.emit({ type: "delta", id: req.id, text: piece.text, tokenIds: [s.token], logprobs });
    if (piece.stop !== undefined) return this.finish(a, "stop", piece.stop);
    if (a.generated >= a.maxTokens) return this.finish(a, "length");
    return true;
  }

  /** The request's thinking budget is spent while its reasoning section is still open. */
  private overBudget(a: Active): boolean {
    const budget = a.req.thinkingBudget;
    return budget !== undefined && this.model.reasoningTokens !== undefined && a.inReasoning && a.reasoningUsed >= budget;
  }

  /** The next token of a forced close of the reasoning section, in place of a sampled token. */
  private forcedClose(a: Active): SampledToken {
    if (a.forced.length === 0) a.forced = [...this.model.reasoningTokens!.close];
    return { token: a.forced.shift()!, logprob: 0, top: [] };
  }

  /** Follows the reasoning section over the tokens so far (the newest, `token`, not yet in a.tokens). */
  private trackReasoning(a: Active, token: number): void {
    const tags = this.model.reasoningTokens;
    if (!tags) return;
    if (endsWith(a.tokens, token, tags.open)) {
      a.inReasoning = true;
      a.reasoningUsed = 0;
    } else if (endsWith(a.tokens, token, tags.close)) {
      a.inReasoning = false;
    } else if (a.inReasoning) {
      a.reasoningUsed++;
    }
  }

  private logprob(s: { token: number; logprob: number; top: { token: number; logprob: number }[] }): TokenLogprob {
    const entry = (id: number, lp: number) => {
      const bytes = this.model.tokenBytes(id);
      return { token: utf8.decode(bytes), logprob: lp, bytes: [...bytes] };
    };
    return { ...entry(s.token, s.logprob), top: s.top.map((t) => entry(t.token, t.logprob)) };
  }

  private finish(a: Active, reason: FinishReason, stoppedBy?: string | number): false {
    const tail = a.stop.push(a.detok.flush()).text + a.stop.flush();
    if (tail) this.emit({ type: "delta", id: a.req.id, text: tail, tokenIds: [] });
    this.running.splice(this.running.indexOf(a), 1);
    this.model.cache.release(a.seq);
    const speculative = this.spec?.counts(a);
    this.spec?.release(a);
    const end = performance.now();
    const prefillMs = Math.max(1e-3, a.firstTokenMs - a.admitMs);
    const decodeMs = Math.max(1e-3, end - a.firstTokenMs);
    this.emit({
      type: "done",
      id: a.req.id,
      finishReason: reason,
      stoppedBy,
      usage: {
        promptTokens: a.promptLen,
        completionTokens: a.generated,
        cachedTokens: a.cachedTokens,
        ...(a.tierTokens > 0 ? { cachedDiskTokens: a.tierTokens } : {}),
      },
      timing: {
        queuedMs: a.admitMs - a.submitMs,
        ttftMs: a.firstTokenMs - a.submitMs,
        promptTps: ((a.promptLen - a.cachedTokens) * 1000) / prefillMs,
        decodeTps: a.generated > 1 ? ((a.generated - 1) * 1000) / decodeMs : 0,
      },
      ...(speculative ? { speculative } : {}),
    });
    return false;
  }
}

/** Whether tokens followed by `last` end with the tag's ids. */
function endsWith(tokens: readonly number[], last: number, tag: readonly number[]): boolean {
  const n = tag.length;
  if (n === 0 || tag[n - 1] !== last || tokens.length < n - 1) return false;
  for (let i = 0; i < n - 1; i++) if (tokens[tokens.length - (n - 1) + i] !== tag[i]) return false;
  return true;
}
