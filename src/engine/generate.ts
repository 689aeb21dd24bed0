import type { DType } from "../backend/backend.ts";
// Single-request generation (the CLI's generate and chat): chunked prefill, then one decode step per token
// until an EOS / stop token, a stop string or the token limit; text streams out through the incremental
// detokenizer with stop strings held back.
import { RmlxError } from "../errors.ts";
import type { Model } from "../models/model.ts";
import type { Detokenizer } from "../text/detokenizer.ts";
import { StopStrings } from "../text/stop.ts";
import { forwardBatch, logitsRow } from "./forward_batch.ts";
import { KvCache, Sequence } from "./kv_cache.ts";
import { Sampler, type SampledToken } from "./sampler.ts";
import type { SamplingParams } from "./types.ts";

export const PREFILL_CHUNK = 2048;

export interface GenerateOptions {
  maxTokens: number;
  sampling: SamplingParams;
  /** Tokens that end generation without being part of the output (EOS and extra stop ids). */
  stopTokenIds?: Iterable<number>;
  stopStrings?: readonly string[];
  /** Needed for text output and stop strings. */
  detokenizer?: Detokenizer;
  /** Called with each piece of finished text (stop strings already cut). */
  onText?: (text: string) => void;
  onToken?: (t: SampledToken) => void;
  prefillChunk?: number;
}

export interface GenerateResult {
  tokenIds: number[];
  text: string;
  finishReason: "stop" | "length";
  stoppedBy?: string | number;
  promptTokens: number;
  /** Prefill time, up to the first sampled token. */
  promptMs: number;
  /** Time of the decode steps after the first token. */
  decodeMs: number;
  promptTps: number;
  decodeTps: number;
}

/** A cache just large enough for one sequence of n tokens prefilled stepTokens at a time. */
export function cacheForTokens(model: Model, n: number, blockSize = 16, stepTokens = PREFILL_CHUNK, dtype: DType = "f32"): KvCache {
  return new KvCache(model.backend, model.layers, {
    blockSize,
    dtype,
    numBlocks: Math.max(1, Math.ceil(n / blockSize)),
    windowed: true,
    sizing: { sequences: 1, stepTokens },
  });
}

export function generate(model: Model, cache: KvCache, promptIds: readonly number[], opts: GenerateOptions): GenerateResult {
  if (promptIds.length === 0) throw new RmlxError("invalid_argument", "the prompt is empty");
  const ctx = model.config.contextLength;
  if (promptIds.length >= ctx) {
    throw new RmlxError("context_length", `the prompt has ${promptIds.length} tokens; the model's context is ${ctx}`);
  }
  const maxTokens = Math.min(opts.maxTokens, ctx - promptIds.length);
  const stopIds = new Set(opts.stopTokenIds ?? []);
  const stops = new StopStrings(opts.stopStrings ?? []);
  if ((opts.stopStrings?.length ?? 0) > 0 && !opts.detokenizer) {
    throw new RmlxError("internal", "stop strings need a detokenizer");
  }
  const sampler = new Sampler(opts.sampling);
  const chunk = opts.prefillChunk ?? PREFILL_CHUNK;
  const seq = new Sequence();
  const history: number[] = [...promptIds];
  const out: number[] = [];
  let text = "";
  const emit = (piece: string) => {
    if (piece.length === 0) return;
    text += piece;
    opts.onText?.(piece);
  };

  try {
    const t0 = performance.now();
    let row: Float32Array | undefined;
    for (let i = 0; i < promptIds.length; i += chunk) {
      const part = Int32Array.from(promptIds.slice(i, i + chunk));
      const last = i + chunk >= promptIds.length;
      const r = forwardBatch(model, cache, [{ seq, tokens: part }], last ? "last" : "none");
      if (last) row = logitsRow(r, 0);
    }
    let next = sampler.sample(row!, history);
    const t1 = performance.now();
    let steps = 0;
    let finishReason: GenerateResult["finishReason"] = "length";
    let stoppedBy: string | number | undefined;
    while (out.length < maxTokens) {
      opts.onToken?.(next);
      const tok = next.token;
      if (stopIds.has(tok)) {
        finishReason = "stop";
        stoppedBy = tok;
        break;
      }
      out.push(tok);
      history.push(tok);
      if (opts.detokenizer) {
        const r = stops.push(opts.detokenizer.push(tok));
        emit(r.text);
        if (r.stop !== undefined) {
          finishReason = "stop";
          stoppedBy = r.stop;
          break;
        }
      }
      if (out.length >= maxTokens) break;
      const r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.of(tok) }]);
      steps++;
      next = sampler.sample(logitsRow(r, 0), history);
    }
    if (opts.detokenizer && typeof stoppedBy !== "string") {
      const r = stops.push(opts.detokenizer.flush());
      emit(r.text);
      if (r.stop !== undefined) {
        finishReason = "stop";
        stoppedBy = r.stop;
      } else emit(stops.flush());
    }
    const t2 = performance.now();
    const promptMs = t1 - t0;
    const decodeMs = t2 - t1;
    const result: GenerateResult = {
      tokenIds: out,
      text,
      finishReason,
      promptTokens: promptIds.length,
      promptMs,
      decodeMs,
      promptTps: promptMs > 0 ? (promptIds.length * 1000) / promptMs : 0,
      decodeTps: decodeMs > 0 && steps > 0 ? (steps * 1000) / decodeMs : 0,
    };
    if (stoppedBy !== undefined) result.stoppedBy = stoppedBy;
    return result;
  } finally {
    cache.release(seq);
  }
}
