// The server's log on stderr: start-up, the ready line and problems at `info` (the default); one line per request
// at `debug` (-v); request bodies as well at `trace`, to see what a client sends.
import { AsyncLocalStorage } from "node:async_hooks";
import { RmlxError } from "../errors.ts";
import type { GenerationStream } from "./engine_client.ts";

export const LOG_LEVELS = ["error", "warn", "info", "debug", "trace"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function parseLogLevel(v: string): LogLevel {
  if ((LOG_LEVELS as readonly string[]).includes(v)) return v as LogLevel;
  throw new RmlxError("invalid_argument", `--log-level must be one of ${LOG_LEVELS.join(", ")} (got '${v}')`);
}

export class Logger {
  private readonly rank: number;

  constructor(
    level: LogLevel = "info",
    private readonly write: (line: string) => void = (line) => process.stderr.write(line),
  ) {
    this.rank = LOG_LEVELS.indexOf(level);
  }

  enabled(level: LogLevel): boolean {
    return LOG_LEVELS.indexOf(level) <= this.rank;
  }

  log(level: LogLevel, message: string): void {
    if (this.enabled(level)) this.write(`rmlx: ${message}\n`);
  }

  error = (m: string) => this.log("error", m);
  warn = (m: string) => this.log("warn", m);
  info = (m: string) => this.log("info", m);
  debug = (m: string) => this.log("debug", m);
  trace = (m: string) => this.log("trace", m);
}

/** What one HTTP request did, gathered while it runs: the generations it started. */
class RequestNote {
  readonly streams: GenerationStream[] = [];
  model: string | undefined;
}

const current = new AsyncLocalStorage<RequestNote>();

/** Called where a generation starts, so that the request's log line can count its tokens. */
export function noteGeneration(model: string, stream: GenerationStream): void {
  const note = current.getStore();
  if (!note) return;
  note.model ??= model;
  note.streams.push(stream);
}

const ms = (n: number) => `${Math.round(n)} ms`;

/** "POST /v1/messages 200 rmlx-default: 14 prompt tokens (8 cached), 30 generated, ttft 31 ms, 666.7 tok/s, length; 76 ms" */
function requestLine(req: Request, status: number, note: RequestNote, startedAt: number, endedAt: number): string {
  const head = `${req.method} ${new URL(req.url).pathname} ${status}${note.model ? ` ${note.model}` : ""}`;
  const parts: string[] = [];
  if (note.streams.length > 0) {
    let prompt = 0;
    let cached = 0;
    let generated = 0;
    let first = Infinity;
    const finishes = new Set<string>();
    for (const s of note.streams) {
      const p = s.progress;
      prompt += p.promptTokens;
      cached += p.cachedTokens;
      generated += p.generatedTokens;
      if (p.firstTokenAt !== undefined) first = Math.min(first, p.firstTokenAt);
      finishes.add(s.finishReason ?? "error");
    }
    parts.push(`${prompt} prompt tokens${cached ? ` (${cached} cached)` : ""}`, `${generated} generated`);
    if (first !== Infinity) {
      parts.push(`ttft ${ms(first - startedAt)}`);
      const decodeS = (endedAt - first) / 1000;
      if (generated > 1 && decodeS > 0) parts.push(`${((generated - 1) / decodeS).toFixed(1)} tok/s`);
    }
    parts.push([...finishes].join(","));
  }
  return `${head}: ${parts.length ? `${parts.join(", ")}; ` : ""}${ms(endedAt - startedAt)}`;
}

/**
 * Runs a request handler with a note of its own and logs one line when the request is over: at once for a plain
 * response, when its generations end for a streamed one (tokens, time to first token, decode speed, total time).
 */
export async function logged(log: Logger, req: Request, handle: (req: Request) => Promise<Response>): Promise<Response> {
  if (!log.enabled("debug")) return handle(req);
  const startedAt = Date.now();
  if (log.enabled("trace") && req.method !== "GET" && req.body) {
    const body = await req.clone().text();
    log.trace(`${req.method} ${new URL(req.url).pathname} body: ${body}`);
  }
  const note = new RequestNote();
  const res = await current.run(note, () => handle(req));
  const done = () => log.debug(requestLine(req, res.status, note, startedAt, Date.now()));
  if (note.streams.every((s) => s.finishReason !== undefined)) done();
  else void Promise.all(note.streams.map((s) => s.whenEnded)).then(done);
  return res;
}
