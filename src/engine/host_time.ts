// The host's share of a decode step, for benchmarks: the time from the end of one decode step to the end of the
// next (sampling, detokenizing, building and recording the step, reading the logits back) less the time the
// backend spent computing. Prefill steps are left out.
import type { Backend } from "../backend/backend.ts";
import type { SchedulerModel } from "./scheduler.ts";

export interface HostTimer {
  /** The model to run: the given one, its forward timed. */
  model: SchedulerModel;
  /** Mean host milliseconds per decode step; undefined before two decode steps or where the backend cannot tell. */
  perStep(): number | undefined;
}

export function hostTimer(be: Backend, m: SchedulerModel): HostTimer {
  if (be.computeMs === undefined) return { model: m, perStep: () => undefined };
  let last = -1;
  let total = 0;
  let steps = 0;
  const model: SchedulerModel = {
    ...m,
    forward(step, rows) {
      const c0 = be.computeMs!;
      const logits = m.forward(step, rows);
      const now = performance.now();
      // every token of the step has a logits row: a decode step
      const decode = step.tokens.length === rows.length;
      if (decode && last >= 0) {
        total += now - last - (be.computeMs! - c0);
        steps++;
      }
      last = decode ? now : -1;
      return logits;
    },
  };
  return { model, perStep: () => (steps > 0 ? total / steps : undefined) };
}
