// Products and lookups through the backend (the kernels themselves are tested with the
// product library; here: shapes, dtypes, bias handling and routing through the executor).
import { describe, expect, test } from "bun:test";
import type { Tensor } from "../../src/backend/backend.ts";
import { RmlxError } from "../../src/errors.ts";
import { backend, bf16Truncated, expectClose, linearRef, randn, rng } from "./helpers.ts";

const be = backend();
const t = (data: Float32Array, shape: number[]) => be.fromArray(data, shape, "f32");

describe("linear", () => {
  const [M, K, N] = [5, 48, 24];
  const x = randn(M * K, 1);
  const w = randn(N * K, 2);
  const b = randn(N, 3);
  test("f32 weight, leading dims kept", () => {
    const y = be.linear(t(x, [1, M, K]), t(w, [N, K]));
    expect([...y.shape]).toEqual([1, M, N]);
    expectClose(be.toFloat32(y), linearRef(x, M, K, w, N), 1e-5, 1e-5);
  });
  test("bf16 weight with a bf16 bias", () => {
    const wb = bf16Truncated(w);
    const bb = bf16Truncated(b);
    const y = be.linear(t(x, [M, K]), be.fromArray(wb.bits, [N, K], "bf16"), be.fromArray(bb.bits, [N], "bf16"));
    expectClose(be.toFloat32(y), linearRef(x, M, K, wb.values, N, bb.values), 1e-4, 1e-4);
  });
  test("f32 bias on a bf16 weight is added separately", () => {
    const wb = bf16Truncated(w);
    const y = be.linear(t(x, [M, K]), be.fromArray(wb.bits, [N, K], "bf16"), t(b, [N]));
    expectClose(be.toFloat32(y), linearRef(x, M, K, wb.values, N, b), 1e-4, 1e-4);
  });
  test("mismatched input width throws", () => {
    expect(() => be.linear(t(x, [M * 2, K / 2]), t(w, [N, K]))).toThrow(RmlxError);
  });
});

describe("take", () => {
  test("rows of a bf16 table for ids of any shape", () => {
    const [V, D] = [10, 6];
    const tab = bf16Truncated(randn(V * D, 4));
    const ids = new Int32Array([3, 0, 9, 3]);
    const out = be.take(be.fromArray(tab.bits, [V, D], "bf16"), be.fromArray(ids, [2, 2], "i32"));
    expect([...out.shape]).toEqual([2, 2, D]);
    const ref = [...ids].flatMap((i) => [...tab.values.slice(i * D, i * D + D)]);
    expect([...be.toFloat32(out)]).toEqual(ref);
  });
  test("an id outside the table throws RmlxError", () => {
    const out = be.take(t(randn(12, 1), [3, 4]), be.fromArray(new Int32Array([3]), [1], "i32"));
    expect(() => be.toFloat32(out)).toThrow(RmlxError);
  });
});

describe("quantized", () => {
  test("affine 4-bit linear and take agree with dequantize", () => {
    // MLX affine layout: 8 nibbles per u32, low bits first; w = scale * q + bias per group of 32.
    const [N, K, group] = [4, 64, 32];
    const q = Array.from({ length: N * K }, (_, i) => (i * 7 + 3) % 16);
    const packed = new Uint32Array((N * K) / 8);
    q.forEach((v, i) => (packed[i >> 3]! |= v << (4 * (i & 7))));
    const scales = randn((N * K) / group, 5);
    const biases = randn((N * K) / group, 6);
    const deq = new Float32Array(N * K);
    for (let i = 0; i < N * K; i++) deq[i] = scales[Math.floor(i / group)]! * q[i]! + biases[Math.floor(i / group)]!;
    const qw = {
      w: be.fromArray(packed, [N, K / 8], "u32"),
      scales: t(scales, [N, K / group]),
      biases: t(biases, [N, K / group]),
      mode: "affine" as const,
      bits: 4,
      groupSize: group,
    };
    expectClose(be.toFloat32(be.dequantize(qw)), deq, 1e-5, 1e-5);
    const x = randn(3 * K, 7);
    expectClose(be.toFloat32(be.linear(t(x, [3, K]), qw)), linearRef(x, 3, K, deq, N), 1e-3, 1e-4);
    const rows = be.toFloat32(be.take(qw, be.fromArray(new Int32Array([2, 0]), [2], "i32")));
    expectClose(rows, [...deq.slice(2 * K, 3 * K), ...deq.slice(0, K)], 1e-5, 1e-5);
  });
});

// Each product run(x) makes, for 1, 3 and 31 rows of x (K columns), evaluated together equals the same product
// evaluated on its own, bit for bit.
function expectSameAsAlone(run: (x: Tensor) => Tensor[], K: number): void {
  for (const M of [1, 3, 31]) {
    const x = randn(M * K, M);
    const alone = run(t(x, [M, K])).map((y) => be.toFloat32(y));
    const ys = run(t(x, [M, K]));
    be.eval(...ys);
    const together = ys.map((y) => be.toFloat32(y));
    for (let i = 0; i < ys.length; i++)
      expect({ M, i, same: together[i]!.every((v, j) => v === alone[i]![j]) }).toEqual({ M, i, same: true });
  }
}

describe("quantized products sharing x", () => {
  // A layer's q/k/v (or gate/up) projections recorded one after another over the same x run as one product of
  // several weights in the native executor; each must come out exactly as when it runs alone.
  const K = 256;
  const qweight = (N: number, bits: number, group: number, seed: number) => {
    const r = rng(seed);
    const words = new Uint32Array((N * K * bits) / 32);
    for (let i = 0; i < words.length; i++) words[i] = Math.floor(r() * 2 ** 32) >>> 0;
    return {
      w: be.fromArray(words, [N, (K * bits) / 32], "u32"),
      scales: t(randn((N * K) / group, seed + 1, 0.05), [N, K / group]),
      biases: t(randn((N * K) / group, seed + 2, 0.1), [N, K / group]),
      mode: "affine" as const,
      bits,
      groupSize: group,
    };
  };
  for (const [bits, group] of [[4, 64], [8, 32], [4, 128]] as const)
    test(`affine ${bits}-bit g${group}: one to 31 rows of x, weights of 16 to 56 rows`, () => {
      const ws = [qweight(48, bits, group, 10), qweight(16, bits, group, 20), qweight(56, bits, group, 30)];
      // a different group size breaks the run: the last weight runs on its own
      const other = qweight(24, bits, group === 64 ? 32 : 64, 40);
      // biases join a run (f32 here, bf16 for the second weight)
      const b0 = t(randn(48, 50), [48]);
      const b1 = be.fromArray(bf16Truncated(randn(16, 51)).bits, [16], "bf16");
      const run = (xt: Tensor) => [
        ...ws.map((w) => be.linear(xt, w)),
        be.linear(xt, other),
        be.linear(xt, ws[0]!, b0),
        be.linear(xt, ws[1]!, b1),
        be.linear(xt, ws[2]!),
      ];
      expectSameAsAlone(run, K);
    });
});

describe("dense products sharing x", () => {
  // The same for float weights: runs of one dtype go together (biases too, as Qwen2's q/k/v have), a change of
  // dtype ends the run.
  const K = 200;
  const dense = (N: number, dtype: "bf16" | "f16" | "f32", seed: number) => {
    const w = randn(N * K, seed, 0.1);
    if (dtype === "f32") return t(w, [N, K]);
    if (dtype === "bf16") return be.fromArray(bf16Truncated(w).bits, [N, K], "bf16");
    return be.astype(t(w, [N, K]), "f16");
  };
  for (const dtype of ["bf16", "f16", "f32"] as const)
    test(`${dtype}: one to 31 rows of x, weights of 5 to 72 rows`, () => {
      const ws = [dense(72, dtype, 10), dense(16, dtype, 20), dense(5, dtype, 30)];
      const other = dense(24, dtype === "f32" ? "bf16" : "f32", 40);
      // in the weight's dtype, so that the bias goes into the product's record
      const bias = dtype === "f32" ? t(randn(16, 50), [16]) : be.astype(t(randn(16, 50), [16]), dtype);
      const run = (xt: Tensor) => [
        ...ws.map((w) => be.linear(xt, w)),
        be.linear(xt, other),
        be.linear(xt, ws[1]!, bias),
        be.linear(xt, ws[2]!),
      ];
      expectSameAsAlone(run, K);
    });
});

describe("gatherMatmul", () => {
  test("float experts, one input row per token", () => {
    const [T, topk, E, N, K] = [3, 2, 4, 5, 16];
    const x = randn(T * K, 8);
    const w = randn(E * N * K, 9);
    const idx = new Int32Array([0, 3, 2, 2, 1, 0]);
    const out = be.gatherMatmul(t(x, [T, K]), t(w, [E, N, K]), be.fromArray(idx, [T, topk], "i32"));
    expect([...out.shape]).toEqual([T, topk, N]);
    const ref: number[] = [];
    for (let p = 0; p < T * topk; p++)
      ref.push(...linearRef(x.slice(Math.floor(p / topk) * K, Math.floor(p / topk) * K + K), 1, K, w.slice(idx[p]! * N * K, (idx[p]! + 1) * N * K), N));
    expectClose(be.toFloat32(out), ref, 1e-5, 1e-5);
  });
});
