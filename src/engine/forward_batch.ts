// One batched forward: any set of sequences, each adding some tokens (a prefill chunk or one decode token),
// run as a single model step over the paged cache. The CLI's generate loop and the server's scheduler both
// drive the model through this function.
import { RmlxError } from "../errors.ts";
import type { Model } from "../models/model.ts";
import type { KvCache, Sequence } from "./kv_cache.ts";

export interface BatchEntry {
  seq: Sequence;
  tokens: Int32Array;
  /** Which of this entry's new tokens need logits: its last (default), all of them, or none. */
  logits?: "last" | "all" | "none";
}

export interface BatchResult {
  /** f32 [rows, vocab], row-major. */
  logits: Float32Array;
  vocab: number;
  /** Per entry: its first row in logits, or -1 when it asked for none. With "last", that row is its only one. */
  firstRow: Int32Array;
}

/**
 * Reserves cache room for every entry (all or nothing: RmlxError("overloaded") leaves the sequences as they
 * were), runs the step inside a backend scope, reads back the wanted logits and advances the sequences.
 */
export function forwardBatch(model: Model, cache: KvCache, entries: readonly BatchEntry[]): BatchResult {
  if (entries.length === 0) throw new RmlxError("internal", "forwardBatch needs at least one entry");
  cache.reserveStep(entries);
  const built = cache.buildStep(entries);

  const rows: number[] = [];
  const firstRow = new Int32Array(entries.length).fill(-1);
  let start = 0;
  for (let s = 0; s < entries.length; s++) {
    const e = entries[s]!;
    const mode = e.logits ?? "last";
    if (mode === "all") {
      firstRow[s] = rows.length;
      for (let i = 0; i < e.tokens.length; i++) rows.push(start + i);
    } else if (mode === "last") {
      firstRow[s] = rows.length;
      rows.push(built.lastRows[s]!);
    }
    start += e.tokens.length;
  }
  // A step always computes at least one row of logits: its evaluation is what runs the cache writes.
  const wanted = rows.length;
  if (wanted === 0) rows.push(built.lastRows[entries.length - 1]!);

  const be = model.backend;
  const logits = be.scope(() =>
    be.toFloat32(
      model.forward(cache.forwardStep(built, Int32Array.from(rows))),
    ),
  );
  cache.advance(entries);
  return { logits: wanted === 0 ? new Float32Array(0) : logits, vocab: model.vocabSize, firstRow };
}

/** Row r of a result's logits (a view, no copy). */
export function logitsRow(r: BatchResult, row: number): Float32Array {
  return r.logits.subarray(row * r.vocab, (row + 1) * r.vocab);
}
