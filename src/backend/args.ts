// What both backends check and walk the same way: argument errors, axes and shapes, and the tensors a scope's
// result keeps alive.
import { RmlxError } from "../errors.ts";

export const fmt = (s: readonly number[]) => `[${s.join(", ")}]`;

export function invalid(msg: string): never {
  throw new RmlxError("invalid_argument", msg);
}

export function normAxis(axis: number, ndim: number, what: string): number {
  const a = axis < 0 ? axis + ndim : axis;
  if (!Number.isInteger(a) || a < 0 || a >= ndim) invalid(`${what}: axis ${axis} out of range for rank ${ndim}`);
  return a;
}

export function checkShape(shape: readonly number[], what: string): void {
  for (const d of shape) if (!Number.isInteger(d) || d < 0) invalid(`${what}: bad shape ${fmt(shape)}`);
}

/** Tensors of class T reachable from a scope's result: the value itself, or inside arrays and plain objects. */
export function collectTensors<T>(value: unknown, cls: abstract new (...args: never[]) => T, out: T[] = [], depth = 0): T[] {
  if (value instanceof cls) out.push(value);
  else if (depth < 6 && value !== null && typeof value === "object") {
    if (Array.isArray(value)) for (const v of value) collectTensors(v, cls, out, depth + 1);
    else if (Object.getPrototypeOf(value) === Object.prototype)
      for (const v of Object.values(value as Record<string, unknown>)) collectTensors(v, cls, out, depth + 1);
  }
  return out;
}
