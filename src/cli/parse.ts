// Flag values: numbers and sizes checked once, each problem one line naming the flag.
import { RmlxError } from "../errors.ts";

const UNITS: Record<string, number> = { "": 1, b: 1, k: 1e3, kb: 1e3, kib: 1024, m: 1e6, mb: 1e6, mib: 1024 ** 2, g: 1e9, gb: 1e9, gib: 1024 ** 3 };

/** "4GiB", "512m", "1e9" -> bytes. */
export function parseBytes(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new RmlxError("invalid_argument", `${what}: '${text}' is not a size (e.g. 4GiB, 512MB)`);
  return Math.floor(Number(m[1]) * unit);
}

export function parseInteger(text: string, what: string, min: number): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isInteger(n) || n < min) throw new RmlxError("invalid_argument", `${what}: '${text}' is not an integer >= ${min}`);
  return n;
}

/** A number within [min, max]. */
export function parseNumber(text: string, what: string, min = -Infinity, max = Infinity): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isFinite(n)) throw new RmlxError("invalid_argument", `${what}: '${text}' is not a number`);
  if (n < min || n > max) {
    const range = max === Infinity ? `>= ${min}` : `between ${min} and ${max}`;
    throw new RmlxError("invalid_argument", `${what}: ${text} is out of range (${range})`);
  }
  return n;
}

/** Flags win over RMLX_* environment variables, which win over defaults. */
export function pick(flag: string | undefined, env: string, dflt: string): string;
export function pick(flag: string | undefined, env: string): string | undefined;
export function pick(flag: string | undefined, env: string, dflt?: string): string | undefined {
  const fromEnv = process.env[env];
  return flag ?? (fromEnv === undefined || fromEnv === "" ? dflt : fromEnv);
}
