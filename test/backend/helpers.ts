// Shared test helpers: a seeded generator, closeness checks and plain-TS reference ops on row-major arrays.
import { expect } from "bun:test";
import { MlxBackend } from "../../src/backend/mlx/backend.ts";
import { NativeBackend } from "../../src/backend/native/backend.ts";
import { contiguousStrides } from "../../src/backend/native/layout.ts";
import { mulberry32 } from "../rng.ts";

let shared: NativeBackend | undefined;
/** The backend under test: native, or mlx when RMLX_TEST_BACKEND=mlx (test/backend/mlx.test.ts runs the op tests so). */
export function backend(): NativeBackend {
  shared ??= process.env.RMLX_TEST_BACKEND === "mlx" ? (new MlxBackend() as unknown as NativeBackend) : new NativeBackend();
  return shared;
}

export const rng = mulberry32;

export function randn(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

export function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** max |a - b| <= atol + rtol * |b| elementwise, with the worst index in the message. */
export function expectClose(a: ArrayLike<number>, b: ArrayLike<number>, atol = 1e-5, rtol = 1e-5): void {
  expect(a.length).toBe(b.length);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < a.length; i++) {
    const excess = Math.abs(a[i]! - b[i]!) - (atol + rtol * Math.abs(b[i]!));
    if (!(excess <= worstExcess)) {
      worstExcess = Number.isNaN(excess) ? Infinity : excess;
      worst = i;
    }
  }
  if (worst >= 0) throw new Error(`mismatch at ${worst}: got ${a[worst]}, expected ${b[worst]} (atol ${atol}, rtol ${rtol})`);
}

/** y[M, N] = x[M, K] @ w[N, K]^T (+ bias), as MLX's linear layers compute it. */
export function linearRef(x: Float32Array, M: number, K: number, w: Float32Array, N: number, bias?: Float32Array): Float32Array {
  const y = new Float32Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k]! * w[n * K + k]!;
      y[m * N + n] = s + (bias ? bias[n]! : 0);
    }
  return y;
}

/** Index arithmetic for row-major tensors. */
export const strides = contiguousStrides;

export function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = i % shape[d]!;
    i = Math.floor(i / shape[d]!);
  }
  return idx;
}

/** Elementwise op with numpy broadcasting, computed index by index. */
export function refBroadcast(
  a: Float32Array,
  as: number[],
  b: Float32Array,
  bs: number[],
  f: (x: number, y: number) => number,
): { data: Float32Array; shape: number[] } {
  const n = Math.max(as.length, bs.length);
  const pa = [...Array(n - as.length).fill(1), ...as];
  const pb = [...Array(n - bs.length).fill(1), ...bs];
  const shape = pa.map((d, i) => Math.max(d, pb[i]!));
  const sa = strides(pa);
  const sb = strides(pb);
  const out = new Float32Array(size(shape));
  for (let i = 0; i < out.length; i++) {
    const idx = unravel(i, shape);
    let ia = 0;
    let ib = 0;
    for (let d = 0; d < n; d++) {
      ia += (pa[d] === 1 ? 0 : idx[d]!) * sa[d]!;
      ib += (pb[d] === 1 ? 0 : idx[d]!) * sb[d]!;
    }
    out[i] = f(a[ia]!, b[ib]!);
  }
  return { data: out, shape };
}

/**
 * bf16 test weights: x truncated to bf16 bits, and the f32 values those bits stand for. Truncation gives exactly
 * representable weights without relying on the code under test.
 */
export function bf16Truncated(x: Float32Array): { bits: Uint16Array; values: Float32Array } {
  const u = new Uint32Array(x.buffer.slice(0));
  const bits = new Uint16Array(x.length);
  const values = new Float32Array(x.length);
  const vu = new Uint32Array(values.buffer);
  for (let i = 0; i < x.length; i++) {
    bits[i] = u[i]! >>> 16;
    vu[i] = bits[i]! << 16;
  }
  return { bits, values };
}
