import { describe, expect, test } from "bun:test";
import { RmlxError } from "../../src/errors.ts";
import { backend, expectClose, randn, size, strides, unravel } from "./helpers.ts";

const be = backend();
const t = (data: Float32Array, shape: number[]) => be.fromArray(data, shape, "f32");

describe("shape ops", () => {
  test("reshape infers -1 and shares memory", () => {
    const x = randn(24, 1);
    const r = be.reshape(t(x, [2, 3, 4]), [4, -1]);
    expect([...r.shape]).toEqual([4, 6]);
    expect([...be.toFloat32(r)]).toEqual([...x]);
    expect(() => be.reshape(t(x, [2, 3, 4]), [5, -1])).toThrow(/\[2, 3, 4\]/);
  });

  for (const [shape, axes] of [
    [[2, 3], [1, 0]],
    [[2, 3, 4], [2, 0, 1]],
    [[2, 3, 4, 5], [0, 2, 1, 3]],
    [[5, 1, 7], [1, 2, 0]],
  ] as [number[], number[]][])
    test(`transpose ${JSON.stringify(shape)} by ${JSON.stringify(axes)}`, () => {
      const x = randn(size(shape), 2);
      const out = be.transpose(t(x, shape), axes);
      const oshape = axes.map((a) => shape[a]!);
      expect([...out.shape]).toEqual(oshape);
      const xs = strides(shape);
      const ref = new Float32Array(x.length);
      for (let i = 0; i < x.length; i++) {
        const idx = unravel(i, oshape);
        ref[i] = x[axes.reduce((s, a, k) => s + idx[k]! * xs[a]!, 0)]!;
      }
      expect([...be.toFloat32(out)]).toEqual([...ref]);
    });

  test("slice on axis 0 (view), inner axes (copy) and negative bounds", () => {
    const shape = [4, 5, 6];
    const x = randn(size(shape), 3);
    const ref = (axis: number, s: number, e: number) => {
      const out: number[] = [];
      for (let i = 0; i < x.length; i++) {
        const idx = unravel(i, shape);
        if (idx[axis]! >= s && idx[axis]! < e) out.push(x[i]!);
      }
      return out;
    };
    const X = t(x, shape);
    expect([...be.toFloat32(be.slice(X, 0, 1, 3))]).toEqual(ref(0, 1, 3));
    expect([...be.toFloat32(be.slice(X, 1, 2, 5))]).toEqual(ref(1, 2, 5));
    expect([...be.toFloat32(be.slice(X, 2, -4, -1))]).toEqual(ref(2, 2, 5));
    expect([...be.slice(X, -1, 3, 100).shape]).toEqual([4, 5, 3]);
    const nested = be.slice(be.slice(X, 0, 1, 4), 0, 1, 2);
    expect([...be.toFloat32(nested)]).toEqual(ref(0, 2, 3));
  });

  test("concatenate along each axis", () => {
    for (const axis of [0, 1, 2]) {
      const sa = [2, 3, 4];
      const sb = [...sa];
      sb[axis] = 5;
      const a = randn(size(sa), 4);
      const b = randn(size(sb), 5);
      const out = be.concatenate([t(a, sa), t(b, sb)], axis);
      const oshape = [...sa];
      oshape[axis] = sa[axis]! + 5;
      expect([...out.shape]).toEqual(oshape);
      const ref = new Float32Array(size(oshape));
      for (let i = 0; i < ref.length; i++) {
        const idx = unravel(i, oshape);
        if (idx[axis]! < sa[axis]!) ref[i] = a[idx.reduce((s, v, d) => s + v * strides(sa)[d]!, 0)]!;
        else {
          idx[axis]! -= sa[axis]!;
          ref[i] = b[idx.reduce((s, v, d) => s + v * strides(sb)[d]!, 0)]!;
        }
      }
      expect([...be.toFloat32(out)]).toEqual([...ref]);
    }
    expect(() => be.concatenate([t(randn(6, 1), [2, 3]), t(randn(8, 1), [2, 4])], 0)).toThrow(RmlxError);
  });

  test("astype rounds f32 to bf16 and f16 to nearest even", () => {
    // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even (1). 1 + 3*2^-8 ties up to 1 + 2^-6.
    const x = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 65504, 1 + 2 ** -11, 1 + 3 * 2 ** -11]);
    const bf = be.astype(t(x, [6]), "bf16");
    expect(bf.dtype).toBe("bf16");
    expect([...be.toFloat32(bf)]).toEqual([1, 1 + 2 ** -6, -2.5, 65536, 1, 1]);
    const h = be.astype(t(x, [6]), "f16");
    // f16 holds 1 + 2^-8 exactly; 1 + 2^-11 and 1 + 3*2^-11 are halfway cases at its 2^-10 spacing.
    const halfRef = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 65504, 1, 1 + 2 ** -9];
    expect([...be.toFloat32(h)]).toEqual(halfRef);
    expect([...be.toFloat32(be.astype(h, "f32"))]).toEqual(halfRef);
  });

  test("astype to and from i32 truncates toward zero", () => {
    const i = be.astype(t(new Float32Array([1.7, -1.7, 3]), [3]), "i32");
    expect([...be.toInt32(i)]).toEqual([1, -1, 3]);
    const f = be.astype(be.fromArray(new Int32Array([-5, 7]), [2], "i32"), "f32");
    expect([...be.toFloat32(f)]).toEqual([-5, 7]);
  });

  test("matmul with broadcast batch dims", () => {
    const cases: [number[], number[]][] = [
      [[3, 4], [4, 5]],
      [[2, 3, 4], [4, 6]],
      [[2, 1, 3, 4], [5, 4, 2]],
      [[1, 7, 33], [3, 33, 9]],
    ];
    for (const [as, bs] of cases) {
      const a = randn(size(as), 6);
      const b = randn(size(bs), 7);
      const out = be.matmul(t(a, as), t(b, bs));
      const M = as.at(-2)!;
      const K = as.at(-1)!;
      const N = bs.at(-1)!;
      const ba = as.slice(0, -2);
      const bb = bs.slice(0, -2);
      const n = Math.max(ba.length, bb.length);
      const pa = [...Array(n - ba.length).fill(1), ...ba];
      const pb = [...Array(n - bb.length).fill(1), ...bb];
      const bshape = pa.map((d, i) => Math.max(d, pb[i]!));
      expect([...out.shape]).toEqual([...bshape, M, N]);
      const ref = new Float32Array(size(bshape) * M * N);
      for (let bi = 0; bi < size(bshape); bi++) {
        const idx = unravel(bi, bshape);
        const oa = idx.reduce((s, v, d) => s + (pa[d] === 1 ? 0 : v) * strides(pa)[d]!, 0) * M * K;
        const ob = idx.reduce((s, v, d) => s + (pb[d] === 1 ? 0 : v) * strides(pb)[d]!, 0) * K * N;
        for (let i = 0; i < M; i++)
          for (let j = 0; j < N; j++) {
            let s = 0;
            for (let k = 0; k < K; k++) s += a[oa + i * K + k]! * b[ob + k * N + j]!;
            ref[(bi * M + i) * N + j] = s;
          }
      }
      expectClose(be.toFloat32(out), ref, 1e-5, 1e-5);
    }
    expect(() => be.matmul(t(randn(12, 1), [3, 4]), t(randn(15, 1), [5, 3]))).toThrow(/inner dims 4 and 5/);
  });

  test("ops accept bf16 and f16 inputs by reading them as f32", () => {
    const w = be.fromArray(new Uint16Array([0x3f80, 0x4000, 0xbf80]), [3], "bf16");
    const x = t(new Float32Array([1, 1, 1]), [3]);
    expect([...be.toFloat32(be.mul(x, w))]).toEqual([1, 2, -1]);
  });
});
