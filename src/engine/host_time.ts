// The host's share of a decode step, for benchmarks: the time from the end of one decode step to the end of the
// next (sampling, detokenizing, building and recording the step, reading the logits back) less the time the
// backend spent computing. Prefill steps are left out.
import type { Backend } from "../backend/backend.ts";
import type { BuiltStep } from "./kv/kv_cache.ts";
import type { SchedulerModel } from "./scheduler.ts";

export interface StepMeter {
  /** The model to run: the given one, its forward metered. */
  model: SchedulerModel;
  /** Mean growth of the reading per decode step; undefined before two decode steps or where nothing is read. */
  perStep(): number | undefined;
}

/**
 * How much a reading (a clock, a call counter) grows from the end of one decode step to the end of the next, on
 * average; a step whose every token has a logits row is a decode step.
 */
export function decodeStepMeter(m: SchedulerModel, read: () => number): StepMeter {
  let last = -1;
  let total = 0;
  let steps = 0;
  const after = (step: BuiltStep, rows: Int32Array) => {
    const now = read();
    const decode = step.tokens.length === rows.length;
    if (decode && last >= 0) {
      total += now - last;
      steps++;
    }
    last = decode ? now : -1;
  };
  // Each way of running a step is followed by a reading; the step and its rows lead every one's arguments.
  const metered = <A extends [BuiltStep, Int32Array, ...unknown[]], R>(run: (...a: A) => R) =>
    (...a: A): R => {
      const out = run(...a);
      after(a[0], a[1]);
      return out;
    };
  const model: SchedulerModel = { ...m, forward: metered(m.forward.bind(m)) };
  if (m.forwardDraw) model.forwardDraw = metered(m.forwardDraw.bind(m));
  if (m.launchDraw) model.launchDraw = metered(m.launchDraw.bind(m));
  return { model, perStep: () => (steps > 0 ? total / steps : undefined) };
}

/** Host milliseconds per decode step: wall time less the backend's compute time. */
export function hostTimer(be: Backend, m: SchedulerModel): StepMeter {
  if (be.computeMs === undefined) return { model: m, perStep: () => undefined };
  return decodeStepMeter(m, () => performance.now() - be.computeMs!);
}
