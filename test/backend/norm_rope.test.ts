import { describe, expect, test } from "bun:test";
import type { RopeOptions } from "../../src/backend/backend.ts";
import { RmlxError } from "../../src/errors.ts";
import { backend, bf16Truncated, expectClose, randn } from "./helpers.ts";

const be = backend();
const t = (data: Float32Array, shape: number[]) => be.fromArray(data, shape, "f32");


describe("rmsNorm and layerNorm", () => {
  const rows = 7;
  const n = 96;
  const x = randn(rows * n, 1, 3);
  const w = randn(n, 2);
  const rmsRef = (wv: (i: number) => number, eps: number) => {
    const out = new Float32Array(x.length);
    for (let r = 0; r < rows; r++) {
      let ss = 0;
      for (let i = 0; i < n; i++) ss += x[r * n + i]! ** 2;
      const inv = 1 / Math.sqrt(ss / n + eps);
      for (let i = 0; i < n; i++) out[r * n + i] = x[r * n + i]! * inv * wv(i);
    }
    return out;
  };
  test("f32 weight", () => {
    expectClose(be.toFloat32(be.rmsNorm(t(x, [rows, n]), t(w, [n]), 1e-6)), rmsRef((i) => w[i]!, 1e-6), 1e-5, 1e-5);
  });
  test("bf16 weight, onePlus (Gemma), 3-D input", () => {
    const { bits, values } = bf16Truncated(w);
    const wt = be.fromArray(bits, [n], "bf16");
    const out = be.rmsNorm(t(x, [1, rows, n]), wt, 1e-5, true);
    expect([...out.shape]).toEqual([1, rows, n]);
    expectClose(be.toFloat32(out), rmsRef((i) => 1 + values[i]!, 1e-5), 1e-5, 1e-5);
  });
  test("f16 weight, and norms of several widths one after another (the weight buffer is reused)", () => {
    const wv = Float32Array.from(new Float16Array(w));
    const wt = be.fromArray(new Uint16Array(new Float16Array(w).buffer), [n], "f16");
    expectClose(be.toFloat32(be.rmsNorm(t(x, [rows, n]), wt, 1e-6)), rmsRef((i) => wv[i]!, 1e-6), 1e-5, 1e-5);
    const wide = Float32Array.from(new Float16Array(randn(4 * n, 5)));
    const xw = randn(4 * n, 6);
    const wideT = be.fromArray(new Uint16Array(new Float16Array(wide).buffer), [4 * n], "f16");
    const got = be.toFloat32(be.rmsNorm(t(xw, [1, 4 * n]), wideT, 1e-6));
    const inv = 1 / Math.sqrt(xw.reduce((a, c) => a + c * c, 0) / (4 * n) + 1e-6);
    expectClose(got, Float32Array.from(xw, (v, i) => v * inv * wide[i]!), 1e-5, 1e-5);
    expectClose(be.toFloat32(be.rmsNorm(t(x, [rows, n]), wt, 1e-6)), rmsRef((i) => wv[i]!, 1e-6), 1e-5, 1e-5);
  });
  test("no weight", () => {
    expectClose(be.toFloat32(be.rmsNorm(t(x, [rows, n]), null, 1e-6)), rmsRef(() => 1, 1e-6), 1e-5, 1e-5);
  });
  test("layerNorm with weight and bias", () => {
    const b = randn(n, 3);
    const out = be.toFloat32(be.layerNorm(t(x, [rows, n]), t(w, [n]), t(b, [n]), 1e-5));
    const ref = new Float32Array(x.length);
    for (let r = 0; r < rows; r++) {
      const row = [...x.slice(r * n, r * n + n)];
      const mean = row.reduce((a, c) => a + c, 0) / n;
      const v = row.reduce((a, c) => a + (c - mean) ** 2, 0) / n;
      for (let i = 0; i < n; i++) ref[r * n + i] = ((row[i]! - mean) / Math.sqrt(v + 1e-5)) * w[i]! + b[i]!;
    }
    expectClose(out, ref, 1e-5, 1e-5);
  });
  test("a weight of the wrong size throws", () => {
    expect(() => be.rmsNorm(t(x, [rows, n]), t(w.slice(0, 10), [10]), 1e-6)).toThrow(RmlxError);
  });
});

/**
 * Rotary embedding written from transformers' definition: inv_freq = 1 / base^(2i/dims), angles = position *
 * inv_freq in f32; non-traditional: x * cos(cat(f, f)) + rotate_half(x) * sin(cat(f, f)), rotate_half(x) =
 * cat(-x2, x1); traditional: each adjacent pair (x[2i], x[2i+1]) times the complex number e^(i*angle).
 */
function ropeRef(x: Float32Array, T: number, H: number, D: number, pos: Int32Array, o: RopeOptions): Float32Array {
  const dims = o.dims;
  const half = dims / 2;
  const inv = o.freqs ?? Float32Array.from({ length: half }, (_, i) => 1 / Math.pow(o.base, (2 * i) / dims));
  const ms = o.mscale ?? 1;
  const out = new Float32Array(x.length);
  for (let t = 0; t < T; t++) {
    const p = Math.fround(pos[t]! * o.scale);
    for (let h = 0; h < H; h++) {
      const b = (t * H + h) * D;
      const r = x.slice(b, b + dims);
      if (!o.traditional) {
        const rot = [...Array(dims)].map((_, i) => (i < half ? -r[i + half]! : r[i - half]!));
        for (let i = 0; i < dims; i++) {
          const ang = Math.fround(p * inv[i % half]!);
          out[b + i] = r[i]! * Math.cos(ang) * ms + rot[i]! * Math.sin(ang) * ms;
        }
      } else {
        for (let i = 0; i < half; i++) {
          const ang = Math.fround(p * inv[i]!);
          const [c, s] = [Math.cos(ang) * ms, Math.sin(ang) * ms];
          const [re, im] = [r[2 * i]!, r[2 * i + 1]!];
          out[b + 2 * i] = re * c - im * s;
          out[b + 2 * i + 1] = re * s + im * c;
        }
      }
      for (let i = dims; i < D; i++) out[b + i] = x[b + i]!;
    }
  }
  return out;
}

describe("rope", () => {
  const T = 5;
  const H = 3;
  const D = 16;
  const x = randn(T * H * D, 5);
  const pos = new Int32Array([0, 1, 7, 513, 4000]);
  const variants: [string, RopeOptions][] = [
    ["halves (transformers rotate_half)", { dims: 16, traditional: false, base: 10000, scale: 1 }],
    ["adjacent pairs (traditional)", { dims: 16, traditional: true, base: 10000, scale: 1 }],
    ["partial rotary, halves", { dims: 8, traditional: false, base: 1e6, scale: 1 }],
    ["partial rotary, traditional", { dims: 4, traditional: true, base: 500, scale: 1 }],
    ["linear scaling", { dims: 16, traditional: false, base: 10000, scale: 0.25 }],
    [
      "explicit freqs and mscale",
      { dims: 8, traditional: false, base: 0, scale: 1, mscale: 1.2, freqs: new Float32Array([1, 0.5, 0.01, 0.0003]) },
    ],
  ];
  for (const [name, o] of variants)
    test(name, () => {
      const out = be.rope(t(x, [T, H, D]), pos, o);
      expect([...out.shape]).toEqual([T, H, D]);
      expectClose(be.toFloat32(out), ropeRef(x, T, H, D, pos, o), 2e-5, 1e-5);
    });
  test("positions are copied at record time", () => {
    const p = new Int32Array([3, 4, 5, 6, 7]);
    const o: RopeOptions = { dims: 16, traditional: false, base: 10000, scale: 1 };
    const out = be.rope(t(x, [T, H, D]), p, o);
    const ref = ropeRef(x, T, H, D, p.slice(), o);
    p.fill(0);
    expectClose(be.toFloat32(out), ref, 2e-5, 1e-5);
  });
  test("bad shapes throw", () => {
    const o: RopeOptions = { dims: 16, traditional: false, base: 10000, scale: 1 };
    expect(() => be.rope(t(x, [T, H * D]), pos, o)).toThrow(/\[T, H, D\]/);
    expect(() => be.rope(t(x, [T, H, D]), pos.slice(0, 2), o)).toThrow(RmlxError);
    expect(() => be.rope(t(x, [T, H, D]), pos, { ...o, dims: 18 })).toThrow(RmlxError);
  });
});
