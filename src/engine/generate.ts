// One request run to its end in this process, on the same Scheduler the server's worker steps: the CLI's
// generate, chat and bench. The scheduler's events are gathered into one result; text streams out as it comes.
import { RmlxError, type ErrorCode } from "../errors.ts";
import type { Model } from "../models/model.ts";
import type { KvCodec } from "../quant/kv_codec.ts";
import { KvCache } from "./kv/kv_cache.ts";
import { Scheduler, type SchedulerModel } from "./scheduler.ts";
import type { FinishReason, GenerateRequest } from "./types.ts";

const PREFILL_CHUNK = 2048;

export interface GenerateResult {
  /** Generated tokens, without the stop token that ended them. */
  tokenIds: number[];
  /** Their text, stop strings cut. */
  text: string;
  finishReason: FinishReason;
  stoppedBy?: string | number;
  promptTokens: number;
  /** Prompt tokens per second of prefill, up to the first sampled token. */
  promptTps: number;
  /** Tokens per second of the decode steps after the first token. */
  decodeTps: number;
  /** With a draft model: tokens it proposed and how many the target kept. */
  speculative?: { draftTokens: number; acceptedTokens: number };
}

export interface GenerateOptions {
  /** Called with each piece of finished text (stop strings already cut). */
  onText?: (text: string) => void;
  /** Most prompt tokens per step. */
  prefillChunk?: number;
}

/**
 * A cache just large enough for one sequence of n tokens, prefilled PREFILL_CHUNK tokens at a time; stateSlots:
 * recurrent-state slots of a hybrid model (2 with a draft model: one for the snapshot a verification step keeps);
 * codec: KvCache's default (the backend's, defaultKvCodec) when undefined.
 */
export function cacheForTokens(model: Model, n: number, codec?: KvCodec | string, stateSlots = 1): KvCache {
  const blockSize = 16;
  return new KvCache(model.backend, model.layers, {
    blockSize,
    codec,
    numBlocks: Math.max(1, Math.ceil(n / blockSize)),
    windowed: true,
    sizing: { sequences: 1, stepTokens: PREFILL_CHUNK },
    stateSlots,
  });
}

/** One request on a scheduler of its own, its events gathered into a result. */
function startRun(model: SchedulerModel, request: Omit<GenerateRequest, "id" | "model">, opts: GenerateOptions) {
  const tokenIds: number[] = [];
  let text = "";
  let promptTokens = 0;
  const submittedAt = performance.now();
  let firstTokenAt: number | undefined;
  let result: GenerateResult | undefined;
  let failure: RmlxError | undefined;
  const config = { maxRunning: 1, maxWaiting: 1, prefillChunk: opts.prefillChunk ?? PREFILL_CHUNK, prefixCache: false };
  const scheduler = new Scheduler(model, config, (ev) => {
    switch (ev.type) {
      case "started":
        promptTokens = ev.promptTokens;
        return;
      case "delta":
        if (ev.tokenIds.length > 0) firstTokenAt ??= performance.now();
        tokenIds.push(...ev.tokenIds);
        if (ev.text.length > 0) {
          text += ev.text;
          opts.onText?.(ev.text);
        }
        return;
      case "done":
        result = {
          tokenIds,
          text,
          finishReason: ev.finishReason,
          promptTokens: ev.usage.promptTokens,
          promptTps: ev.timing.promptTps,
          decodeTps: ev.timing.decodeTps,
        };
        if (ev.stoppedBy !== undefined) result.stoppedBy = ev.stoppedBy;
        if (ev.speculative) result.speculative = ev.speculative;
        return;
      case "error":
        failure = new RmlxError(ev.code as ErrorCode, ev.message);
        return;
    }
  });
  scheduler.submit({ ...request, id: "generate", model: "" });
  return {
    /** One step; false once the request has ended. An error the step throws gives the request's blocks back first. */
    step(): boolean {
      try {
        return scheduler.step();
      } catch (e) {
        // The caller may keep using the cache: give the request's blocks back before the error goes up.
        scheduler.abortAll("internal", "generation failed");
        throw e;
      }
    },
    /** Stops the request where it is: what it made so far, finishReason "cancelled". */
    cancel(): GenerateResult {
      scheduler.cancel("generate");
      const now = performance.now();
      const perS = (n: number, ms: number) => (ms > 0 ? (n * 1000) / ms : 0);
      const promptTps = firstTokenAt === undefined ? 0 : perS(promptTokens, firstTokenAt - submittedAt);
      const decodeTps = firstTokenAt === undefined ? 0 : perS(tokenIds.length - 1, now - firstTokenAt);
      return { tokenIds, text, finishReason: "cancelled", promptTokens, promptTps, decodeTps };
    },
    result(): GenerateResult {
      if (failure) throw failure;
      if (!result) throw new RmlxError("internal", "the scheduler ended without finishing the request");
      return result;
    },
  };
}

/** Runs one request to its end; an error the scheduler reports is thrown. */
export function generate(model: SchedulerModel, request: Omit<GenerateRequest, "id" | "model">, opts: GenerateOptions = {}): GenerateResult {
  const run = startRun(model, request, opts);
  while (run.step());
  return run.result();
}

/**
 * As generate(), but yielding to the event loop between steps, so that `signal` can stop the request (Ctrl-C in
 * `rmlx chat`): a stopped request returns what it made so far, with finishReason "cancelled".
 */
export async function generateAsync(
  model: SchedulerModel,
  request: Omit<GenerateRequest, "id" | "model">,
  opts: GenerateOptions & { signal?: AbortSignal } = {},
): Promise<GenerateResult> {
  const run = startRun(model, request, opts);
  for (;;) {
    if (opts.signal?.aborted) return run.cancel();
    if (!run.step()) break;
    await new Promise<void>((r) => setImmediate(r));
  }
  return run.result();
}
