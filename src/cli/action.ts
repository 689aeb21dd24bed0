import { RmlxError } from "../errors.ts";

/** Exit code for bad input (files, flags, models): one line on stderr, never a stack trace. */
export const EXIT_BAD_INPUT = 2;

/** Wraps a subcommand's action so that every failure becomes one line on stderr and a non-zero exit. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void> | void): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      reportAndExit(err);
    }
  };
}

export function reportAndExit(err: unknown): never {
  if (err instanceof RmlxError) {
    process.stderr.write(`rmlx: ${err.message}\n`);
    process.exit(err.code === "internal" || err.code === "native" ? 1 : EXIT_BAD_INPUT);
  }
  const msg = err instanceof Error ? err.message : String(err);
  process.stderr.write(`rmlx: internal error: ${msg}\n`);
  if (process.env.RMLX_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  process.exit(1);
}
