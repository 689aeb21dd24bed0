/** The one error type thrown inside rmlx. The code decides the HTTP status and the CLI exit code. */
export type ErrorCode =
  | "invalid_argument"
  | "not_found"
  | "bad_model"
  | "unsupported"
  | "native"
  | "overloaded"
  | "unauthorized"
  | "context_length"
  | "internal";

const HTTP_STATUS: Record<ErrorCode, number> = {
  invalid_argument: 400,
  context_length: 400,
  unauthorized: 401,
  not_found: 404,
  bad_model: 422,
  unsupported: 422,
  overloaded: 429,
  native: 500,
  internal: 500,
};

export class RmlxError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "RmlxError";
  }

  get httpStatus(): number {
    return HTTP_STATUS[this.code];
  }
}

export function fail(code: ErrorCode, message: string): never {
  throw new RmlxError(code, message);
}
