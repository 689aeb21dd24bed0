// What the scheduler tests share: requests, a harness that steps a Scheduler and gathers its events, prompts, the
// text side of a test model (letters for token ids), and a backend for a cache whose "K/V" is the token ids.
import type { Backend, KvPool } from "../../src/backend/backend.ts";
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

/**
 * The backend of a KvCache whose pools are bookkeeping only and whose contents live in `store` (a token id a
 * slot): a block copy copies there, through `run` (a device queue's, where the copy must wait its turn).
 */
export function storeBackend(store: Int32Array, blockSize: number, run: (copy: () => void) => void = (copy) => copy()): Backend {
  return {
    createKvPool: (nb: number, bs: number, kvHeads: number, headDim: number) =>
      ({ k: {}, v: {}, numBlocks: nb, blockSize: bs, kvHeads, headDim }) as unknown as KvPool,
    copyBlock: (_p: KvPool, src: number, dst: number) => run(() => store.copyWithin(dst * blockSize, src * blockSize, (src + 1) * blockSize)),
  } as unknown as Backend;
}
