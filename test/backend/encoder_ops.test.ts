// The encoder ops: the exact GELU, and attention of each sequence of a padding-free batch over its own tokens
// (causal or bidirectional, with or without a window), against plain f64 formulas.
import { describe, expect, test } from "bun:test";
import { composedVarlenAttention } from "../../src/backend/varlen.ts";
import { backend, expectClose, randn } from "./helpers.ts";

const be = backend();

/** Attention of token i of a sequence over the keys its mask lets it see, all in f64. */
function reference(q: Float32Array, k: Float32Array, v: Float32Array, seqStart: number[], H: number, Hkv: number, D: number, causal: boolean, window: number): Float32Array {
  const T = seqStart[seqStart.length - 1]!;
  const out = new Float32Array(T * H * D);
  const scale = 1 / Math.sqrt(D);
  for (let s = 0; s + 1 < seqStart.length; s++) {
    const s0 = seqStart[s]!;
    const n = seqStart[s + 1]! - s0;
    for (let i = 0; i < n; i++) {
      for (let h = 0; h < H; h++) {
        const kh = Math.floor(h / (H / Hkv));
        const seen: number[] = [];
        for (let j = 0; j < n; j++) {
          const d = i - j;
          const ok = causal ? d >= 0 && (window === 0 || d < window) : window === 0 || Math.abs(d) < window;
          if (ok) seen.push(j);
        }
        const scores = seen.map((j) => {
          let dot = 0;
          for (let x = 0; x < D; x++) dot += q[((s0 + i) * H + h) * D + x]! * k[((s0 + j) * Hkv + kh) * D + x]!;
          return dot * scale;
        });
        const m = Math.max(...scores);
        const e = scores.map((x) => Math.exp(x - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let x = 0; x < D; x++) {
          let acc = 0;
          seen.forEach((j, c) => (acc += (e[c]! / z) * v[((s0 + j) * Hkv + kh) * D + x]!));
          out[((s0 + i) * H + h) * D + x] = acc;
        }
      }
    }
  }
  return out;
}

describe("varlenAttention", () => {
  const cases = [
    { name: "bidirectional", causal: false, window: 0 },
    { name: "causal", causal: true, window: 0 },
    { name: "bidirectional window 3", causal: false, window: 3 },
    { name: "causal window 4", causal: true, window: 4 },
  ];
  for (const c of cases) {
    test(`${c.name}, GQA, sequences of 1, 9, 0 and 14 tokens`, () => {
      const seqStart = [0, 1, 10, 10, 24];
      const T = 24;
      const H = 4;
      const Hkv = 2;
      const D = 16;
      const q = randn(T * H * D, 1);
      const k = randn(T * Hkv * D, 2);
      const v = randn(T * Hkv * D, 3);
      const opts = { scale: 1 / Math.sqrt(D), causal: c.causal, window: c.window };
      const args = [be.fromArray(q, [T, H, D], "f32"), be.fromArray(k, [T, Hkv, D], "f32"), be.fromArray(v, [T, Hkv, D], "f32"), Int32Array.from(seqStart), opts] as const;
      const want = reference(q, k, v, seqStart, H, Hkv, D, c.causal, c.window);
      expectClose(be.toFloat32(be.varlenAttention(...args)), want, 2e-5, 2e-5);
      // the mlx backend's form, from general ops
      expectClose(be.toFloat32(composedVarlenAttention(be, ...args)), want, 2e-5, 2e-5);
    });
  }

  test("a batch equals its sequences one by one", () => {
    const H = 2;
    const D = 8;
    const q = randn(12 * H * D, 4);
    const k = randn(12 * H * D, 5);
    const v = randn(12 * H * D, 6);
    const run = (s0: number, s1: number, seqStart: number[]) =>
      be.toFloat32(
        be.varlenAttention(
          be.fromArray(q.slice(s0 * H * D, s1 * H * D), [s1 - s0, H, D], "f32"),
          be.fromArray(k.slice(s0 * H * D, s1 * H * D), [s1 - s0, H, D], "f32"),
          be.fromArray(v.slice(s0 * H * D, s1 * H * D), [s1 - s0, H, D], "f32"),
          Int32Array.from(seqStart),
          { scale: 0.3, causal: false },
        ),
      );
    const both = run(0, 12, [0, 5, 12]);
    expect(Array.from(both.slice(0, 5 * H * D))).toEqual(Array.from(run(0, 5, [0, 5])));
    expect(Array.from(both.slice(5 * H * D))).toEqual(Array.from(run(5, 12, [0, 7])));
  });

  test("bad batches are refused", () => {
    const x = be.fromArray(new Float32Array(4 * 2 * 8), [4, 2, 8], "f32");
    expect(() => be.varlenAttention(x, x, x, Int32Array.from([0, 3]), { scale: 1, causal: false })).toThrow(/seqStart must run from 0 to 4/);
    expect(() => be.varlenAttention(x, x, x, Int32Array.from([0, 3, 2, 4]), { scale: 1, causal: false })).toThrow(/falls/);
    const k = be.fromArray(new Float32Array(4 * 3 * 8), [4, 3, 8], "f32");
    expect(() => be.varlenAttention(x, k, k, Int32Array.from([0, 4]), { scale: 1, causal: false })).toThrow(/not \[T,H,D\]/);
  });
});

describe("gelu", () => {
  test("equals 0.5 x (1 + erf(x / sqrt 2)) at known points", () => {
    // Phi(x) from tables of the standard normal CDF
    const xs = [-3, -1, -0.5, 0, 0.5, 1, 2, 3];
    const phi = [0.0013498980316301, 0.15865525393145707, 0.3085375387259869, 0.5, 0.6914624612740131, 0.8413447460685429, 0.9772498680518208, 0.9986501019683699];
    const out = be.toFloat32(be.gelu(be.fromArray(Float32Array.from(xs), [xs.length], "f32")));
    expectClose(out, xs.map((x, i) => x * phi[i]!), 1e-6, 1e-6);
  });
});
