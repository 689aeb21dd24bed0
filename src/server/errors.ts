import { RmlxError, type ErrorCode } from "../errors.ts";

/** Which API's error body a route answers with. */
export type ApiFlavor = "openai" | "anthropic";

interface HttpErrorExtra {
  /** The request field at fault (OpenAI's `param`). */
  param?: string;
  /** A machine-readable code (OpenAI's `code`). */
  code?: string;
  /** Seconds, sent as Retry-After. */
  retryAfter?: number;
}

/** An error on its way to an HTTP response; everything thrown in a handler ends up as one of these. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: HttpErrorExtra = {},
  ) {
    super(message);
    this.name = "HttpError";
  }
}

const OPENAI_TYPE: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  404: "not_found_error",
  413: "invalid_request_error",
  422: "invalid_request_error",
  429: "rate_limit_exceeded",
  503: "service_unavailable",
};

const ANTHROPIC_TYPE: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  404: "not_found_error",
  413: "request_too_large",
  422: "invalid_request_error",
  429: "rate_limit_error",
  503: "overloaded_error",
};

/** Seconds a client is told to wait after a 429. */
const RETRY_AFTER_S = 1;

export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof RmlxError) return fromCode(err.code, err.message);
  const msg = err instanceof Error ? err.message : String(err);
  return new HttpError(500, `internal error: ${msg}`);
}

/** Maps an error code (an RmlxError's, or one sent by the engine worker) to an HTTP error. */
export function fromCode(code: string, message: string): HttpError {
  const status = new RmlxError(code as ErrorCode, message).httpStatus ?? 500;
  if (status === 429) return new HttpError(429, message, { code: "overloaded", retryAfter: RETRY_AFTER_S });
  if (code === "context_length") return new HttpError(400, message, { code: "context_length_exceeded", param: "messages" });
  if (status === 404) return new HttpError(404, message, { code: "model_not_found", param: "model" });
  return new HttpError(status, message, { code });
}

function errorBody(flavor: ApiFlavor, e: HttpError): Record<string, unknown> {
  if (flavor === "anthropic") {
    return { type: "error", error: { type: ANTHROPIC_TYPE[e.status] ?? "api_error", message: e.message } };
  }
  return {
    error: {
      message: e.message,
      type: OPENAI_TYPE[e.status] ?? "server_error",
      param: e.extra.param ?? null,
      code: e.extra.code ?? null,
    },
  };
}

export function errorResponse(flavor: ApiFlavor, err: unknown): Response {
  const e = toHttpError(err);
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (e.extra.retryAfter !== undefined) headers["retry-after"] = String(e.extra.retryAfter);
  return new Response(JSON.stringify(errorBody(flavor, e)), { status: e.status, headers });
}

/** Anthropic routes answer in Anthropic's error format; everything else in OpenAI's. */
export function flavorOf(path: string): ApiFlavor {
  return path.startsWith("/v1/messages") ? "anthropic" : "openai";
}
