// What the scheduler tests share: requests, a harness that steps a Scheduler and gathers its events, prompts, and
// the text side of a test model (letters for token ids).
import { Scheduler, type SchedulerModel } from "../../src/engine/scheduler.ts";
import { DEFAULT_SAMPLING, type EngineConfig, type EngineEvent, type GenerateRequest } from "../../src/engine/types.ts";
import { StopStrings } from "../../src/text/stop.ts";

export const CONFIG: EngineConfig = { kvMemoryBytes: 0, maxRunning: 8, maxWaiting: 64, prefillChunk: 64, prefixCache: true };

/** A greedy request of token ids. */
export function request(id: string, prompt: number[], maxTokens: number, extra: Partial<GenerateRequest> = {}): GenerateRequest {
  return { id, model: "m", prompt, maxTokens, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], stopTokenIds: [], ...extra };
}

export function harness(model: SchedulerModel, config: Partial<EngineConfig> = {}) {
  const events: EngineEvent[] = [];
  const sched = new Scheduler(model, { ...CONFIG, ...config }, (e) => events.push(e));
  const run = (limit = 10_000) => {
    for (let i = 0; i < limit && sched.hasWork; i++) sched.step();
  };
  const tokensOf = (id: string) => events.flatMap((e) => (e.type === "delta" && e.id === id ? e.tokenIds : []));
  const doneOf = (id: string) => events.find((e) => e.type === "done" && e.id === id) as Extract<EngineEvent, { type: "done" }> | undefined;
  return { sched, events, run, tokensOf, doneOf };
}

export const prompt = (seed: number, n: number) => Array.from({ length: n }, (_, i) => (seed * 13 + i * 5) % 30);

/** Token id i reads as the letter 97 + i % 26. */
export const LETTERS = {
  newDetokenizer() {
    return { push: (id: number) => String.fromCharCode(97 + (id % 26)), flush: () => "" };
  },
  newStopFilter(stops: string[]) {
    return new StopStrings(stops);
  },
  tokenBytes(id: number) {
    return new TextEncoder().encode(String.fromCharCode(97 + (id % 26)));
  },
};
