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
  const model: SchedulerModel = {
    ...m,
    forward(step, rows) {
      const logits = m.forward(step, rows);
      after(step, rows);
      return logits;
    },
  };
  const draw = m.forwardDraw?.bind(m);
  if (draw)
    model.forwardDraw = (step, rows, draws) => {
      const ids = draw(step, rows, draws);
      after(step, rows);
      return ids;
    };
  const launch = m.launchDraw?.bind(m);
  if (launch)
    model.launchDraw = (step, rows, draws, inputs) => {
      const ids = launch(step, rows, draws, inputs);
      after(step, rows);
      return ids;
    };
  return { model, perStep: () => (steps > 0 ? total / steps : undefined) };
}

/** Host milliseconds per decode step: wall time less the backend's compute time. */
export function hostTimer(be: Backend, m: SchedulerModel): StepMeter {
  if (be.computeMs === undefined) return { model: m, perStep: () => undefined };
  return decodeStepMeter(m, () => performance.now() - be.computeMs!);
}
