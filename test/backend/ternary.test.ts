// BitNet b1.58's ops through the backend: ternaryLinear against transformers' BitLinear / AutoBitLinear formulas
// computed here (per row s = 127 / max(max|x|, 1e-5), xq = clamp(round half to even (x * s), -128, 127), all in
// f32; integer products with t in {-1, 0, 1}; then / (scale * s), or / s * scale), and relu2Mul against relu(g)^2 * u
// in float64. The products are exact integers and the scaling rounds the same way, so ternaryLinear must match
// bit for bit. Weights are packed here as transformers' pack_weights does: byte (r, k) holds t + 1 of rows
// r + i * out/4 in bits 2i..2i+1.
import { describe, expect, test } from "bun:test";
import { RmlxError } from "../../src/errors.ts";
import { backend, bf16Truncated, expectClose, randn, rng } from "./helpers.ts";

const be = backend();
const fr = Math.fround;
/** An f32 value, as the weight_scale tensors hold. */
const SCALE = fr(0.0371);

function randomTernary(N: number, K: number, seed: number): Int8Array {
  const r = rng(seed);
  return Int8Array.from({ length: N * K }, () => Math.floor(r() * 3) - 1);
}

function pack(t: Int8Array, N: number, K: number): Uint8Array {
  const R = N / 4;
  const out = new Uint8Array(R * K);
  for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) out[(n % R) * K + k]! |= (t[n * K + k]! + 1) << (2 * Math.floor(n / R));
  return out;
}

function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  return v - f === 0.5 ? (f % 2 === 0 ? f : f + 1) : Math.round(v);
}

function bitLinear(x: Float32Array, K: number, t: Int8Array, N: number, scale: number, divide: boolean): Float32Array {
  const M = x.length / K;
  const y = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    let amax = 0;
    for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(x[m * K + k]!));
    const s = fr(127 / Math.max(amax, fr(1e-5)));
    const q = Array.from({ length: K }, (_, k) => Math.min(127, Math.max(-128, roundHalfEven(fr(x[m * K + k]! * s)))));
    for (let n = 0; n < N; n++) {
      let d = 0;
      for (let k = 0; k < K; k++) d += q[k]! * t[n * K + k]!;
      y[m * N + n] = divide ? fr(d / fr(scale * s)) : fr(fr(d / s) * scale);
    }
  }
  return y;
}

function ternary(t: Int8Array, N: number, K: number, scale = SCALE, divide = false) {
  return { packed: be.fromArray(pack(t, N, K), [N / 4, K], "u8"), scale, divide };
}

describe("ternaryLinear", () => {
  // in_features: multiples of 128, 64 and 32 (each affine group size MLX has) and of none; one as wide as BitNet 2B's
  const SHAPES: [number, number, number][] = [
    [1, 128, 8],
    [3, 192, 16],
    [4, 96, 12],
    [5, 100, 36],
    [2, 2560, 16],
    [37, 64, 4],
  ];
  for (const [M, K, N] of SHAPES) {
    test(`M=${M} K=${K} N=${N}: the formula bit for bit, scale multiplied and divided`, () => {
      const x = randn(M * K, M * 31 + K, 3);
      // a row of zeros: its scale is 127/1e-5 and every product zero
      if (M > 2) x.fill(0, K, 2 * K);
      const t = randomTernary(N, K, N + K);
      for (const divide of [false, true]) {
        const y = be.ternaryLinear(be.fromArray(x, [M, K], "f32"), ternary(t, N, K, SCALE, divide));
        expect([...y.shape]).toEqual([M, N]);
        expect(Array.from(be.toFloat32(y))).toEqual(Array.from(bitLinear(x, K, t, N, SCALE, divide)));
      }
    });
  }

  test("x * s exactly halfway between integers rounds to even", () => {
    // max|x| = 127 makes s = 1, so x itself is rounded: 2.5 -> 2, -3.5 -> -4, 0.5 -> 0, 1.5 -> 2, -1.5 -> -2
    const K = 32;
    const x = new Float32Array(K);
    x.set([127, 2.5, -3.5, 0.5, 1.5, -1.5]);
    const N = 8;
    // row n reads x[n + 1] alone (and row 0 reads x[0]), so each output is one rounded value times the scale
    const t = new Int8Array(N * K);
    for (let n = 0; n < N; n++) t[n * K + Math.min(n, K - 1)] = 1;
    const y = be.toFloat32(be.ternaryLinear(be.fromArray(x, [1, K], "f32"), ternary(t, N, K, 1)));
    expect(Array.from(y.subarray(0, 6))).toEqual([127, 2, -4, 0, 2, -2]);
  });

  test("leading dims are kept, bf16 input is read as f32, and the weight's unpacked form is reused", () => {
    const [K, N] = [64, 8];
    const xb = bf16Truncated(randn(2 * 3 * K, 7));
    const t = randomTernary(N, K, 8);
    const w = ternary(t, N, K);
    const want = Array.from(bitLinear(xb.values, K, t, N, SCALE, false));
    for (let i = 0; i < 2; i++) {
      const y = be.ternaryLinear(be.fromArray(xb.bits, [2, 3, K], "bf16"), w);
      expect([...y.shape]).toEqual([2, 3, N]);
      expect(Array.from(be.toFloat32(y))).toEqual(want);
    }
  });

  test("no rows in, no rows out", () => {
    const y = be.ternaryLinear(be.fromArray(new Float32Array(0), [0, 64], "f32"), ternary(randomTernary(4, 64, 9), 4, 64));
    expect([...y.shape]).toEqual([0, 4]);
    expect(be.toFloat32(y).length).toBe(0);
  });

  test("a weight that is not packed uint8 [out/4, in], or an input of another width, is refused with the shapes", () => {
    const w = ternary(randomTernary(8, 64, 10), 8, 64);
    const x = be.fromArray(randn(2 * 32, 11), [2, 32], "f32");
    expect(() => be.ternaryLinear(x, w)).toThrow(RmlxError);
    expect(() => be.ternaryLinear(x, w)).toThrow("[2, 32]");
    const notPacked = { packed: be.fromArray(randn(2 * 64, 12), [2, 64], "f32"), scale: 1, divide: false };
    expect(() => be.ternaryLinear(be.fromArray(randn(64, 13), [1, 64], "f32"), notPacked)).toThrow("is not packed uint8");
  });
});

describe("relu2Mul", () => {
  test("relu(gate)^2 * up", () => {
    const n = 3 * 50;
    const g = randn(n, 14, 3);
    const u = randn(n, 15, 2);
    const y = be.relu2Mul(be.fromArray(g, [3, 50], "f32"), be.fromArray(u, [3, 50], "f32"));
    expect([...y.shape]).toEqual([3, 50]);
    const want = Array.from(g, (v, i) => Math.max(v, 0) ** 2 * u[i]!);
    expectClose(be.toFloat32(y), want, 1e-6, 1e-6);
  });

  test("gate and up of different shapes are refused", () => {
    expect(() => be.relu2Mul(be.fromArray(randn(6, 16), [2, 3], "f32"), be.fromArray(randn(6, 17), [3, 2], "f32"))).toThrow("relu2Mul: gate [2, 3] and up [3, 2] differ");
  });
});
