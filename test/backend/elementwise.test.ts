import { describe, expect, test } from "bun:test";
import { RmlxError } from "../../src/errors.ts";
import { backend, expectClose, randn, refBroadcast, size, strides, unravel } from "./helpers.ts";

const be = backend();
const t = (data: Float32Array, shape: number[]) => be.fromArray(data, shape, "f32");

describe("binary ops broadcast like MLX", () => {
  const cases: [number[], number[]][] = [
    [[4, 5], [4, 5]],
    [[3, 7], [7]],
    [[3, 7], [3, 1]],
    [[2, 1, 5], [4, 1]],
    [[1], [2, 3]],
    [[2, 3, 4, 5], [3, 1, 5]],
    [[6, 1], [1, 8]],
    [[70000], [1]],
  ];
  const ops = [
    ["add", (x: number, y: number) => x + y],
    ["sub", (x: number, y: number) => x - y],
    ["mul", (x: number, y: number) => x * y],
  ] as const;
  for (const [as, bs] of cases)
    for (const [name, f] of ops)
      test(`${name} ${JSON.stringify(as)} x ${JSON.stringify(bs)}`, () => {
        const a = randn(size(as), 1);
        const b = randn(size(bs), 2);
        const ref = refBroadcast(a, as, b, bs, f);
        const out = (be as unknown as Record<string, (a: unknown, b: unknown) => { shape: number[] }>)[name]!(t(a, as), t(b, bs));
        expect([...out.shape]).toEqual(ref.shape);
        expectClose(be.toFloat32(out as never), ref.data, 1e-6, 1e-6);
      });

  test("mismatched shapes throw invalid_argument with the shapes", () => {
    expect(() => be.add(t(randn(6, 1), [2, 3]), t(randn(4, 1), [4]))).toThrow(/\[2, 3\] and \[4\]/);
    try {
      be.mul(t(randn(6, 1), [2, 3]), t(randn(4, 1), [2, 2]));
    } catch (e) {
      expect(e).toBeInstanceOf(RmlxError);
      expect((e as RmlxError).code).toBe("invalid_argument");
    }
  });
});

describe("unary and gated activations", () => {
  const n = 40000;
  const x = randn(n, 3, 8);
  const y = randn(n, 4, 3);
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  const gelu = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
  const check = (out: unknown, f: (i: number) => number) => {
    const ref = new Float32Array(n);
    for (let i = 0; i < n; i++) ref[i] = f(i);
    expectClose(be.toFloat32(out as never), ref, 1e-6, 1e-5);
  };
  const X = () => t(x, [200, 200]);
  const Y = () => t(y, [200, 200]);
  test("scale", () => check(be.scale(X(), -0.37), (i) => x[i]! * -0.37));
  test("sigmoid", () => check(be.sigmoid(X()), (i) => sig(x[i]!)));
  test("silu", () => check(be.silu(X()), (i) => x[i]! * sig(x[i]!)));
  test("geluTanh", () => check(be.geluTanh(X()), (i) => gelu(x[i]!)));
  test("swiglu", () => check(be.swiglu(X(), Y()), (i) => x[i]! * sig(x[i]!) * y[i]!));
  test("geglu", () => check(be.geglu(X(), Y()), (i) => gelu(x[i]!) * y[i]!));
  test("softcap", () => check(be.softcap(X(), 5), (i) => 5 * Math.tanh(x[i]! / 5)));
  test("swiglu with a broadcast up", () => {
    const g = randn(12, 5);
    const u = randn(4, 6);
    const out = be.toFloat32(be.swiglu(t(g, [3, 4]), t(u, [4])));
    const ref = g.map((v, i) => v * sig(v) * u[i % 4]!);
    expectClose(out, ref, 1e-6, 1e-5);
  });
});

describe("reductions", () => {
  const shape = [3, 5, 7];
  const x = randn(size(shape), 7, 4);
  const reduceRef = (axis: number, f: (vals: number[]) => number[]) => {
    const st = strides(shape);
    const out = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const idx = unravel(i, shape);
      if (idx[axis] !== 0) continue;
      const vals = [];
      for (let j = 0; j < shape[axis]!; j++) vals.push(x[i + j * st[axis]!]!);
      const r = f(vals);
      for (let j = 0; j < shape[axis]!; j++) out[i + j * st[axis]!] = r[j] ?? 0;
    }
    return out;
  };
  const softmaxRef = (v: number[]) => {
    const m = Math.max(...v);
    const e = v.map((a) => Math.exp(a - m));
    const s = e.reduce((a, b) => a + b, 0);
    return e.map((a) => a / s);
  };
  for (const axis of [0, 1, 2, -1])
    test(`softmax axis ${axis}`, () => {
      const a = axis < 0 ? axis + 3 : axis;
      expectClose(be.toFloat32(be.softmax(t(x, shape), axis)), reduceRef(a, softmaxRef), 1e-6, 1e-5);
    });
  test("softmax defaults to the last axis and handles large values", () => {
    const big = new Float32Array([1000, 1001, 1002, -1000]);
    const ref = softmaxRef([1000, 1001, 1002, -1000]);
    expectClose(be.toFloat32(be.softmax(t(big, [1, 4]))), ref, 1e-7, 1e-6);
  });
  for (const axis of [0, 1, 2])
    test(`sum axis ${axis}`, () => {
      const out = be.sum(t(x, shape), axis);
      expect([...out.shape]).toEqual(shape.filter((_, i) => i !== axis));
      const full = reduceRef(axis, (v) => [v.reduce((a, b) => a + b, 0)]);
      const ref: number[] = [];
      for (let i = 0; i < x.length; i++) if (unravel(i, shape)[axis] === 0) ref.push(full[i]!);
      expectClose(be.toFloat32(out), ref, 1e-5, 1e-5);
    });
  test("argmax takes the first of tied maxima", () => {
    const d = new Float32Array([1, 5, 5, 2, 7, 7, 7, 0, -1, -1, -3, -1]);
    expect([...be.toInt32(be.argmax(t(d, [3, 4])))]).toEqual([1, 0, 0]);
  });
  test("argmax over a vocabulary-sized row", () => {
    const v = randn(151936 * 2, 9);
    v[151936 + 123456] = 10;
    v[77] = 10;
    v[78] = 10;
    expect([...be.toInt32(be.argmax(t(v, [2, 151936])))]).toEqual([77, 123456]);
  });
  test("topk is descending and breaks ties by lower index", () => {
    const d = new Float32Array([3, 1, 3, 2, 3, 0, 9, 9, 1, 9]);
    const { values, indices } = be.topk(t(d, [2, 5]), 3);
    expect([...values.shape]).toEqual([2, 3]);
    expect([...be.toFloat32(values)]).toEqual([3, 3, 3, 9, 9, 9]);
    expect([...be.toInt32(indices)]).toEqual([0, 2, 4, 1, 2, 4]);
  });
  test("topk matches a sort on random rows", () => {
    const n = 1000;
    const d = randn(4 * n, 11);
    const { values, indices } = be.topk(t(d, [4, n]), 8);
    const vs = be.toFloat32(values);
    const is = be.toInt32(indices);
    for (let r = 0; r < 4; r++) {
      const order = [...Array(n).keys()].sort((a, b) => d[r * n + b]! - d[r * n + a]! || a - b).slice(0, 8);
      expect([...is.slice(r * 8, r * 8 + 8)]).toEqual(order);
      expect([...vs.slice(r * 8, r * 8 + 8)]).toEqual(order.map((i) => d[r * n + i]!));
    }
  });
  test("topk with k out of range throws", () => {
    expect(() => be.topk(t(randn(4, 1), [1, 4]), 5)).toThrow(RmlxError);
  });
});
