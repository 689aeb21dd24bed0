// Running the model over the paged cache. runStep is the one place a built step meets the model: the Scheduler
// (through its SchedulerModel, for the server's worker and the CLI alike) and forwardBatch both go through it.
// forwardBatch is the unscheduled form for callers that place the tokens themselves and may want the logits of
// every token: conversion checks, the model tests' teacher forcing and the step benchmarks of scripts/bench.
import { RmlxError } from "../errors.ts";
import type { Backend, RowDraw, Tensor } from "../backend/backend.ts";
import type { Model } from "../models/model.ts";
import type { BuiltStep, KvCache, StepEntry } from "./kv/kv_cache.ts";

/**
 * Runs one built step and returns f32 logits [logitRows.length, vocab], row-major; tensors end with the step.
 * With `out` long enough the logits are written into it (a view of it is returned): steps that reuse one buffer
 * allocate nothing per step for them.
 */
export function runStep(model: Model, cache: KvCache, built: BuiltStep, logitRows: Int32Array, out?: Float32Array): Float32Array {
  const be = model.backend;
  return be.scope(() => be.toFloat32(model.forward(cache.forwardStep(built, logitRows)), out));
}

/**
 * runStep that also returns the post-norm hidden states of hiddenRows [rows, hiddenSize] (models with
 * forwardHidden: what a multi-token-prediction head reads).
 */
export function runStepHidden(
  model: Model,
  cache: KvCache,
  built: BuiltStep,
  logitRows: Int32Array,
  hiddenRows: Int32Array,
  out?: Float32Array,
): { logits: Float32Array; hidden: Float32Array } {
  if (!model.forwardHidden) throw new RmlxError("internal", "this model does not give its hidden states");
  const be = model.backend;
  return be.scope(() => {
    const f = model.forwardHidden!(cache.forwardStep(built, logitRows), hiddenRows);
    return { logits: be.toFloat32(f.logits, out), hidden: be.toFloat32(f.hidden) };
  });
}

/**
 * Runs one built step and returns one token per logits row, i32 [logitRows.length], drawn where the logits are
 * (Backend.drawRows, one RowDraw per row), so that only token ids come back.
 */
export function runStepDraw(model: Model, cache: KvCache, built: BuiltStep, logitRows: Int32Array, draws: readonly RowDraw[]): Int32Array {
  const be = model.backend;
  return be.scope(() => be.toInt32(drawOn(be, model.forward(cache.forwardStep(built, logitRows)), draws)));
}

/** Token ids a launched step is still computing on the device. */
export interface LaunchedIds {
  /** i32 [rows]: the input of a step launched after this one. */
  readonly tensor: Tensor;
  /** Waits for the ids and copies them out. */
  read(): Int32Array;
  /** Lets go of the tensor (a step that read it as input keeps what it needs). */
  drop(): void;
}

/**
 * runStepDraw without waiting: the step is started on the device and its ids come back as a handle, so that the
 * host records the next step while this one computes (mlx-lm's decode loop). With `inputs`, the step's token ids
 * are those of an earlier launch, still on the device.
 */
export function launchStepDraw(
  model: Model,
  cache: KvCache,
  built: BuiltStep,
  logitRows: Int32Array,
  draws: readonly RowDraw[],
  inputs?: LaunchedIds,
): LaunchedIds {
  const be = model.backend;
  if (!be.evalAsync) throw new RmlxError("internal", `the ${be.name} backend cannot launch a step without waiting`);
  const ids = be.scope(() => {
    const step = cache.forwardStep(built, logitRows);
    if (inputs) step.tokenIds = inputs.tensor;
    const t = drawOn(be, model.forward(step), draws);
    be.evalAsync!(t);
    return t;
  });
  return { tensor: ids, read: () => be.toInt32(ids), drop: () => be.dispose(ids) };
}

function drawOn(be: Backend, logits: Tensor, draws: readonly RowDraw[]): Tensor {
  if (!be.drawRows) throw new RmlxError("internal", `the ${be.name} backend cannot draw tokens where the logits are`);
  return be.drawRows(logits, draws);
}

/** Which new tokens of each entry need logits: the last one (its next-token row), all of them, or none. */
export type LogitsWanted = "last" | "all" | "none";

export interface BatchResult {
  /** f32 [rows, vocab], row-major: one row per entry with "last", one per token with "all", none with "none". */
  logits: Float32Array;
  vocab: number;
}

/**
 * Reserves cache room for every entry (all or nothing: RmlxError("overloaded") leaves the sequences as they
 * were), runs the step, and advances the sequences.
 */
export function forwardBatch(model: Model, cache: KvCache, entries: readonly StepEntry[], wanted: LogitsWanted = "last"): BatchResult {
  if (entries.length === 0) throw new RmlxError("internal", "forwardBatch needs at least one entry");
  cache.reserveStep(entries);
  const built = cache.buildStep(entries);
  let rows: Int32Array;
  if (wanted === "all") rows = Int32Array.from({ length: built.tokens.length }, (_, i) => i);
  else if (wanted === "last") rows = built.lastRows;
  else rows = new Int32Array(0);
  const logits = runStep(model, cache, built, rows);
  cache.advance(entries);
  return { logits, vocab: model.vocabSize };
}

/** Row r of a result's logits (a view, no copy). */
export function logitsRow(r: BatchResult, row: number): Float32Array {
  return r.logits.subarray(row * r.vocab, (row + 1) * r.vocab);
}
