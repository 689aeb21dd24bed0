import type { EngineEvent, GenerateRequest, TokenLogprob } from "../engine/types.ts";
import type { EngineClient, GenerationStream } from "./engine_client.ts";
import type { RequestJournal } from "./journal.ts";
import { fromCode, HttpError } from "./errors.ts";
import type { ModelEntry, ModelManager, ModelUse } from "./models.ts";
import type { ChatOutputParser } from "../text/output.ts";
import { noteGeneration, type Logger } from "./log.ts";
import type { ServerDefaults } from "./sampling.ts";
import { mergeShaped, type Shaped } from "./output.ts";

export type Started = Extract<EngineEvent, { type: "started" }>;
export type Done = Extract<EngineEvent, { type: "done" }>;

/** What the route handlers share. */
export interface ServerContext {
  engine: EngineClient;
  models: ModelManager;
  journal?: RequestJournal;
  /** --temp, --top-p, --top-k, --min-p, --max-tokens. */
  defaults?: ServerDefaults;
  log?: Logger;
}

export function newId(prefix: string): string {
  return `${prefix}${crypto.randomUUID().replaceAll("-", "").slice(0, 24)}`;
}

/**
 * Sends a request to the engine and waits for its first event, so that a request refused by the engine (prompt too
 * long, queue full) becomes an HTTP error before any response byte is sent.
 */
export async function startGeneration(
  ctx: ServerContext,
  req: GenerateRequest,
  api: string,
  signal?: AbortSignal,
): Promise<{ stream: GenerationStream; started: Started }> {
  ctx.journal?.begin(req.id, api, req.model);
  const stream = ctx.engine.generate(req);
  noteGeneration(req.model, stream);
  // A client that leaves while its request still waits in the engine's queue cancels it there.
  signal?.addEventListener("abort", () => stream.cancel(), { once: true });
  const first = await stream.next();
  if (!first) throw new HttpError(500, "engine ended the request without an answer");
  if (first.type === "error") throw fromCode(first.code, first.message);
  if (first.type !== "started") {
    stream.cancel();
    throw new HttpError(500, `engine answered with '${first.type}' before 'started'`);
  }
  if (first.truncatedFrom !== undefined) {
    const m = ctx.models.models.get(req.model);
    ctx.log?.warn(
      `${req.model}: a prompt of ${first.truncatedFrom} tokens was cut to ${first.promptTokens} to fit the context of ` +
        `${m?.contextLength} tokens (older turns, then tools, then the end of the system message; --prompt-overflow error refuses instead)`,
    );
  }
  return { stream, started: first };
}

/** Starts several generations (n > 1); when one is refused, the ones already started are cancelled. */
export async function startAll(
  ctx: ServerContext,
  reqs: GenerateRequest[],
  api: string,
  signal?: AbortSignal,
): Promise<{ stream: GenerationStream; started: Started }[]> {
  const settled = await Promise.allSettled(reqs.map((r) => startGeneration(ctx, r, api, signal)));
  const failed = settled.find((s) => s.status === "rejected");
  if (!failed) return settled.map((s) => (s as PromiseFulfilledResult<{ stream: GenerationStream; started: Started }>).value);
  for (const s of settled) if (s.status === "fulfilled") s.value.stream.cancel();
  throw failed.reason;
}

export interface Collected {
  started: Started;
  shaped: Shaped;
  tokenIds: number[];
  logprobs: TokenLogprob[];
  done: Done;
}

/** Runs one generation to its end (non-streaming responses); a client that goes away cancels it. */
export async function collect(
  ctx: ServerContext,
  req: GenerateRequest,
  api: string,
  shaperFor: (started: Started) => ChatOutputParser,
  signal?: AbortSignal,
): Promise<Collected> {
  if (signal?.aborted) throw new HttpError(499, "the client went away");
  const { stream, started } = await startGeneration(ctx, req, api, signal);
  const shaper = shaperFor(started);
  let shaped: Shaped = { reasoning: "", content: "", toolCalls: [] };
  const tokenIds: number[] = [];
  const logprobs: TokenLogprob[] = [];
  try {
    for await (const ev of stream) {
      if (ev.type === "delta") {
        shaped = mergeShaped(shaped, shaper.feed(ev.text));
        tokenIds.push(...ev.tokenIds);
        if (ev.logprobs) logprobs.push(...ev.logprobs);
      } else if (ev.type === "error") {
        throw fromCode(ev.code, ev.message);
      } else if (ev.type === "done") {
        shaped = mergeShaped(shaped, shaper.flush(ev.finishReason === "length"));
        return { started, shaped, tokenIds, logprobs, done: ev };
      }
    }
  } finally {
    stream.cancel();
  }
  throw new HttpError(500, "engine stream ended without a result");
}

/** Runs several generations (n > 1) together; when one fails, or the client goes away, all are cancelled. */
export async function collectAll(
  ctx: ServerContext,
  reqs: GenerateRequest[],
  api: string,
  shaperFor: (req: GenerateRequest) => (started: Started) => ChatOutputParser,
  signal?: AbortSignal,
): Promise<Collected[]> {
  const ac = new AbortController();
  const abort = () => ac.abort();
  signal?.addEventListener("abort", abort, { once: true });
  try {
    return await Promise.all(
      reqs.map((r) =>
        collect(ctx, r, api, shaperFor(r), ac.signal).catch((e) => {
          ac.abort();
          throw e;
        }),
      ),
    );
  } finally {
    signal?.removeEventListener("abort", abort);
  }
}

/** Holds the model a request asks for (see ModelManager.resolve) loaded for the duration of `fn`. */
export async function withModel<T>(ctx: ServerContext, name: string | null | undefined, fn: (m: ModelEntry) => Promise<T>, use: ModelUse = "any"): Promise<T> {
  const m = await ctx.models.acquire(name, use);
  try {
    return await fn(m);
  } finally {
    ctx.models.release(m);
  }
}
