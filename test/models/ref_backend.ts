// A plain, eager TypeScript implementation of the Backend ops the model families use, written straight from
// the op definitions (MLX / transformers) with no attention to speed. Tests run the models on it to check the
// model code independently of the native kernels, and compare the native backend against it.
import type {
  AttentionBatch,
  AttentionOptions,
  Backend,
  DType,
  KvPool,
  QuantizedWeight,
  RopeOptions,
  StatePool,
  Tensor,
  TernaryWeight,
  VarlenAttentionOptions,
  Weight,
} from "../../src/backend/backend.ts";
import { isQuantized } from "../../src/backend/backend.ts";
import { composedVarlenAttention } from "../../src/backend/varlen.ts";
import { bf16ToNumber, f16ToNumber } from "../native/ref.ts";

class RT implements Tensor {
  constructor(
    readonly shape: number[],
    readonly dtype: DType,
    /** f32 values for float activations, i32 for ids; raw little-endian bytes for stored weights. */
    public f?: Float32Array,
    public i?: Int32Array,
    public raw?: Uint8Array,
  ) {}
}

/** erf by its Maclaurin series near 0 and its continued fraction beyond, both to double precision. */
function erf(x: number): number {
  const a = Math.abs(x);
  if (a < 2.5) {
    let term = a;
    let sum = a;
    for (let n = 1; n < 80; n++) {
      term *= (-a * a) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * ((2 / Math.sqrt(Math.PI)) * sum);
  }
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (a + f);
  const erfc = Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f);
  return Math.sign(x) * (1 - erfc);
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

function floats(t: Tensor): Float32Array {
  const r = t as RT;
  if (r.f) return r.f;
  if (r.i) return Float32Array.from(r.i);
  const raw = r.raw!;
  const n = numel(r.shape);
  const out = new Float32Array(n);
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (r.dtype === "f32") for (let k = 0; k < n; k++) out[k] = dv.getFloat32(4 * k, true);
  else if (r.dtype === "bf16") for (let k = 0; k < n; k++) out[k] = bf16ToNumber(dv.getUint16(2 * k, true));
  else if (r.dtype === "f16") for (let k = 0; k < n; k++) out[k] = f16ToNumber(dv.getUint16(2 * k, true));
  else throw new Error(`ref: no float view of ${r.dtype}`);
  r.f = out;
  return out;
}

function ints(t: Tensor): Int32Array {
  const r = t as RT;
  if (r.i) return r.i;
  if (r.raw && (r.dtype === "i32" || r.dtype === "u32")) {
    return new Int32Array(r.raw.buffer.slice(r.raw.byteOffset, r.raw.byteOffset + r.raw.byteLength));
  }
  if (r.f) return Int32Array.from(r.f);
  throw new Error("ref: no int view");
}

function u32(t: Tensor): Uint32Array {
  const r = t as RT;
  const raw = r.raw!;
  return new Uint32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
}

function uint8(t: Tensor): Uint8Array {
  return (t as RT).raw!;
}

const F = (shape: number[], data: Float32Array) => new RT(shape, "f32", data);

const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];

/** Dequantized rows [..., N, K] of an MLX quantized weight, per REFERENCE.md's formats. */
export function dequantRef(q: QuantizedWeight): { shape: number[]; data: Float32Array } {
  const wShape = q.w.shape;
  const rows = numel(wShape.slice(0, -1));
  const words = wShape[wShape.length - 1]!;
  const K = (words * 32) / q.bits;
  const packed = u32(q.w);
  const groups = K / q.groupSize;
  const out = new Float32Array(rows * K);
  if (q.mode === "affine") {
    const sc = floats(q.scales);
    const bi = floats(q.biases!);
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < K; k++) {
        const bit = k * q.bits;
        const w0 = packed[r * words + (bit >>> 5)]!;
        let v = w0 >>> (bit & 31);
        const used = 32 - (bit & 31);
        if (used < q.bits) v |= packed[r * words + (bit >>> 5) + 1]! << used;
        v &= (1 << q.bits) - 1;
        const g = r * groups + Math.floor(k / q.groupSize);
        out[r * K + k] = sc[g]! * v + bi[g]!;
      }
    }
  } else if (q.mode === "mxfp4") {
    const sc = uint8(q.scales);
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < K; k++) {
        const nib = (packed[r * words + (k >>> 3)]! >>> ((k & 7) * 4)) & 15;
        const v = (nib & 8 ? -1 : 1) * E2M1[nib & 7]!;
        out[r * K + k] = v * 2 ** (sc[r * groups + Math.floor(k / q.groupSize)]! - 127);
      }
    }
  } else throw new Error(`ref: ${q.mode} not implemented`);
  return { shape: [...wShape.slice(0, -1), K], data: out };
}

function weightF(w: Weight): { shape: number[]; data: Float32Array } {
  return isQuantized(w) ? dequantRef(w) : { shape: [...w.shape], data: floats(w) };
}

function broadcastShape(a: readonly number[], b: readonly number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`ref: cannot broadcast ${a} and ${b}`);
    out.push(Math.max(x, y));
  }
  return out;
}

function binary(a: Tensor, b: Tensor, f: (x: number, y: number) => number): RT {
  const shape = broadcastShape(a.shape, b.shape);
  const A = floats(a);
  const B = floats(b);
  const n = numel(shape);
  const out = new Float32Array(n);
  const idx = (s: readonly number[], flat: number) => {
    let off = 0;
    let stride = 1;
    let rem = flat;
    const dims: number[] = [];
    for (let i = shape.length - 1; i >= 0; i--) {
      dims[i] = rem % shape[i]!;
      rem = Math.floor(rem / shape[i]!);
    }
    for (let i = s.length - 1; i >= 0; i--) {
      const d = dims[shape.length - s.length + i]!;
      off += (s[i] === 1 ? 0 : d) * stride;
      stride *= s[i]!;
    }
    return off;
  };
  for (let k = 0; k < n; k++) out[k] = f(A[idx(a.shape, k)]!, B[idx(b.shape, k)]!);
  return F(shape, out);
}

function unary(x: Tensor, f: (v: number) => number): RT {
  return F([...x.shape], floats(x).map(f));
}

const gelu = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)));
const silu = (v: number) => v / (1 + Math.exp(-v));

export class RefBackend implements Backend {
  readonly name = "ref";
  readonly device = "typescript reference";

  fromArray(data: Float32Array | Int32Array | Uint32Array | Uint16Array | Uint8Array, shape: readonly number[], dtype: DType): Tensor {
    if (dtype === "f32") return F([...shape], Float32Array.from(data as Float32Array));
    if (dtype === "i32") return new RT([...shape], "i32", undefined, Int32Array.from(data as Int32Array));
    return new RT([...shape], dtype, undefined, undefined, new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)));
  }
  fromBytes(bytes: Uint8Array, shape: readonly number[], dtype: DType): Tensor {
    return new RT([...shape], dtype, undefined, undefined, bytes);
  }
  zeros(shape: readonly number[], dtype: DType): Tensor {
    return dtype === "i32" ? new RT([...shape], "i32", undefined, new Int32Array(numel(shape))) : F([...shape], new Float32Array(numel(shape)));
  }
  eval(): void {}
  toFloat32(t: Tensor): Float32Array {
    return Float32Array.from(floats(t));
  }
  toInt32(t: Tensor): Int32Array {
    return Int32Array.from(ints(t));
  }
  scope<T>(fn: () => T): T {
    return fn();
  }
  allocPersistent(shape: readonly number[], dtype: DType): Tensor {
    return this.zeros(shape, dtype);
  }
  dispose(): void {}

  reshape(x: Tensor, shape: readonly number[]): Tensor {
    if (numel(shape) !== numel(x.shape)) throw new Error(`ref: reshape ${x.shape} -> ${shape}`);
    const r = x as RT;
    return r.i ? new RT([...shape], "i32", undefined, r.i) : F([...shape], floats(x));
  }
  transpose(x: Tensor, axes: readonly number[]): Tensor {
    const s = x.shape;
    const out = new Float32Array(numel(s));
    const src = floats(x);
    const ns = axes.map((a) => s[a]!);
    const strides = s.map((_, i) => numel(s.slice(i + 1)));
    for (let k = 0; k < out.length; k++) {
      let rem = k;
      let off = 0;
      for (let i = ns.length - 1; i >= 0; i--) {
        off += (rem % ns[i]!) * strides[axes[i]!]!;
        rem = Math.floor(rem / ns[i]!);
      }
      out[k] = src[off]!;
    }
    return F(ns, out);
  }
  slice(x: Tensor, axis: number, start: number, end: number): Tensor {
    const s = x.shape;
    const ax = axis < 0 ? s.length + axis : axis;
    const outer = numel(s.slice(0, ax));
    const inner = numel(s.slice(ax + 1));
    const len = end - start;
    const src = floats(x);
    const out = new Float32Array(outer * len * inner);
    for (let o = 0; o < outer; o++) {
      out.set(src.subarray((o * s[ax]! + start) * inner, (o * s[ax]! + end) * inner), o * len * inner);
    }
    const shape = [...s];
    shape[ax] = len;
    return F(shape, out);
  }
  concatenate(xs: readonly Tensor[], axis: number): Tensor {
    let acc = xs[0]!;
    for (const x of xs.slice(1)) {
      const s = acc.shape;
      const ax = axis < 0 ? s.length + axis : axis;
      const outer = numel(s.slice(0, ax));
      const ia = numel(s.slice(ax)) ;
      const ib = numel(x.shape.slice(ax));
      const A = floats(acc);
      const B = floats(x);
      const out = new Float32Array(outer * (ia + ib));
      for (let o = 0; o < outer; o++) {
        out.set(A.subarray(o * ia, (o + 1) * ia), o * (ia + ib));
        out.set(B.subarray(o * ib, (o + 1) * ib), o * (ia + ib) + ia);
      }
      const shape = [...s];
      shape[ax] = s[ax]! + x.shape[ax]!;
      acc = F(shape, out);
    }
    return acc;
  }
  astype(x: Tensor, dtype: DType): Tensor {
    if (dtype === "i32") return new RT([...x.shape], "i32", undefined, Int32Array.from(floats(x)));
    return F([...x.shape], Float32Array.from(floats(x)));
  }

  matmul(a: Tensor, b: Tensor): Tensor {
    const M = a.shape[a.shape.length - 2]!;
    const K = a.shape[a.shape.length - 1]!;
    const N = b.shape[b.shape.length - 1]!;
    if (a.shape.length !== 2 || b.shape.length !== 2) throw new Error("ref: matmul 2-D only");
    const A = floats(a);
    const B = floats(b);
    const out = new Float32Array(M * N);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += A[m * K + k]! * B[k * N + n]!;
      out[m * N + n] = s;
    }
    return F([M, N], out);
  }
  linear(x: Tensor, w: Weight, bias?: Tensor): Tensor {
    const W = weightF(w);
    const [N, K] = W.shape as [number, number];
    const X = floats(x);
    const M = X.length / K;
    const bb = bias ? floats(bias) : undefined;
    const out = new Float32Array(M * N);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += X[m * K + k]! * W.data[n * K + k]!;
      out[m * N + n] = s + (bb ? bb[n]! : 0);
    }
    return F([...x.shape.slice(0, -1), N], out);
  }
  quantizedMatmul(x: Tensor, w: QuantizedWeight): Tensor {
    return this.linear(x, w);
  }
  ternaryLinear(x: Tensor, w: TernaryWeight): Tensor {
    // transformers' BitLinear: per row s = 127 / max(max|x|, 1e-5), q = clamp(round half even (x*s)), in f32
    const raw = (w.packed as RT).raw!;
    const [R, K] = w.packed.shape as [number, number];
    const N = 4 * R;
    const X = floats(x);
    const M = X.length / K;
    const fr = Math.fround;
    const out = new Float32Array(M * N);
    for (let m = 0; m < M; m++) {
      let amax = 0;
      for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(X[m * K + k]!));
      const s = fr(127 / Math.max(amax, fr(1e-5)));
      const q = new Int32Array(K);
      for (let k = 0; k < K; k++) {
        const v = fr(X[m * K + k]! * s);
        const f = Math.floor(v);
        const r = v - f === 0.5 ? (f % 2 === 0 ? f : f + 1) : Math.round(v);
        q[k] = Math.min(127, Math.max(-128, r));
      }
      for (let n = 0; n < N; n++) {
        const row = n % R;
        const shift = 2 * Math.floor(n / R);
        let d = 0;
        for (let k = 0; k < K; k++) d += (((raw[row * K + k]! >> shift) & 3) - 1) * q[k]!;
        out[m * N + n] = w.divide ? fr(d / fr(w.scale * s)) : fr(fr(d / s) * w.scale);
      }
    }
    return F([...x.shape.slice(0, -1), N], out);
  }
  gatherMatmul(x: Tensor, w: Weight, indices: Tensor): Tensor {
    const W = weightF(w);
    const [, N, K] = W.shape as [number, number, number];
    const idx = ints(indices);
    const [T, k] = indices.shape as [number, number];
    const X = floats(x);
    const perPair = X.length / K === T * k;
    const out = new Float32Array(T * k * N);
    for (let p = 0; p < T * k; p++) {
      const row = perPair ? p : Math.floor(p / k);
      const e = idx[p]!;
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let j = 0; j < K; j++) s += X[row * K + j]! * W.data[(e * N + n) * K + j]!;
        out[p * N + n] = s;
      }
    }
    return F([T, k, N], out);
  }
  take(table: Weight, ids: Tensor): Tensor {
    const W = weightF(table);
    const D = W.shape[W.shape.length - 1]!;
    const I = ints(ids);
    const out = new Float32Array(I.length * D);
    for (let r = 0; r < I.length; r++) out.set(W.data.subarray(I[r]! * D, (I[r]! + 1) * D), r * D);
    return F([...ids.shape, D], out);
  }
  quantize(): QuantizedWeight {
    throw new Error("ref: quantize not implemented");
  }
  dequantize(w: QuantizedWeight): Tensor {
    const d = dequantRef(w);
    return F(d.shape, d.data);
  }

  add(a: Tensor, b: Tensor): Tensor {
    return binary(a, b, (x, y) => x + y);
  }
  sub(a: Tensor, b: Tensor): Tensor {
    return binary(a, b, (x, y) => x - y);
  }
  mul(a: Tensor, b: Tensor): Tensor {
    return binary(a, b, (x, y) => x * y);
  }
  scale(x: Tensor, s: number): Tensor {
    return unary(x, (v) => v * s);
  }
  sigmoid(x: Tensor): Tensor {
    return unary(x, (v) => 1 / (1 + Math.exp(-v)));
  }
  softplus(x: Tensor): Tensor {
    return unary(x, (v) => Math.log1p(Math.exp(v)));
  }
  silu(x: Tensor): Tensor {
    return unary(x, silu);
  }
  gelu(x: Tensor): Tensor {
    return unary(x, (v) => 0.5 * v * (1 + erf(v * Math.SQRT1_2)));
  }
  geluTanh(x: Tensor): Tensor {
    return unary(x, gelu);
  }
  swiglu(g: Tensor, u: Tensor): Tensor {
    return binary(g, u, (a, b) => silu(a) * b);
  }
  geglu(g: Tensor, u: Tensor): Tensor {
    return binary(g, u, (a, b) => gelu(a) * b);
  }
  relu2Mul(g: Tensor, u: Tensor): Tensor {
    return binary(g, u, (a, b) => Math.max(a, 0) ** 2 * b);
  }
  softcap(x: Tensor, cap: number): Tensor {
    return unary(x, (v) => cap * Math.tanh(v / cap));
  }
  softmax(x: Tensor, axis = -1): Tensor {
    if (axis !== -1 && axis !== x.shape.length - 1) throw new Error("ref: softmax last axis only");
    const D = x.shape[x.shape.length - 1]!;
    const X = floats(x);
    const out = new Float32Array(X.length);
    for (let r = 0; r < X.length / D; r++) {
      let m = -Infinity;
      for (let j = 0; j < D; j++) m = Math.max(m, X[r * D + j]!);
      let s = 0;
      for (let j = 0; j < D; j++) s += out[r * D + j] = Math.exp(X[r * D + j]! - m);
      for (let j = 0; j < D; j++) out[r * D + j]! /= s;
    }
    return F([...x.shape], out);
  }
  argmax(x: Tensor): Tensor {
    const D = x.shape[x.shape.length - 1]!;
    const X = floats(x);
    const out = new Int32Array(X.length / D);
    for (let r = 0; r < out.length; r++) {
      let b = 0;
      for (let j = 1; j < D; j++) if (X[r * D + j]! > X[r * D + b]!) b = j;
      out[r] = b;
    }
    return new RT(x.shape.slice(0, -1), "i32", undefined, out);
  }
  topk(x: Tensor, k: number): { values: Tensor; indices: Tensor } {
    const D = x.shape[x.shape.length - 1]!;
    const X = floats(x);
    const R = X.length / D;
    const vals = new Float32Array(R * k);
    const ids = new Int32Array(R * k);
    for (let r = 0; r < R; r++) {
      const order = Array.from({ length: D }, (_, j) => j).sort((a, b) => X[r * D + b]! - X[r * D + a]! || a - b);
      for (let j = 0; j < k; j++) {
        ids[r * k + j] = order[j]!;
        vals[r * k + j] = X[r * D + order[j]!]!;
      }
    }
    const shape = [...x.shape.slice(0, -1), k];
    return { values: F(shape, vals), indices: new RT(shape, "i32", undefined, ids) };
  }
  sum(x: Tensor, axis: number): Tensor {
    const s = x.shape;
    const ax = axis < 0 ? s.length + axis : axis;
    const outer = numel(s.slice(0, ax));
    const inner = numel(s.slice(ax + 1));
    const X = floats(x);
    const out = new Float32Array(outer * inner);
    for (let o = 0; o < outer; o++) for (let a = 0; a < s[ax]!; a++) for (let i = 0; i < inner; i++) {
      out[o * inner + i]! += X[(o * s[ax]! + a) * inner + i]!;
    }
    return F([...s.slice(0, ax), ...s.slice(ax + 1)], out);
  }

  rmsNorm(x: Tensor, w: Tensor | null, eps: number, onePlus = false): Tensor {
    const D = x.shape[x.shape.length - 1]!;
    const X = floats(x);
    const W = w ? floats(w) : undefined;
    const out = new Float32Array(X.length);
    for (let r = 0; r < X.length / D; r++) {
      let ss = 0;
      for (let j = 0; j < D; j++) ss += X[r * D + j]! ** 2;
      const inv = 1 / Math.sqrt(ss / D + eps);
      for (let j = 0; j < D; j++) {
        const g = W ? (onePlus ? 1 + W[j]! : W[j]!) : 1;
        out[r * D + j] = X[r * D + j]! * inv * g;
      }
    }
    return F([...x.shape], out);
  }
  layerNorm(): Tensor {
    throw new Error("ref: layerNorm not implemented");
  }
  rope(x: Tensor, positions: Int32Array, o: RopeOptions): Tensor {
    const [T, H, D] = x.shape as [number, number, number];
    const X = floats(x);
    const out = Float32Array.from(X);
    const half = o.dims / 2;
    const ms = o.mscale ?? 1;
    for (let t = 0; t < T; t++) for (let h = 0; h < H; h++) {
      const base = (t * H + h) * D;
      for (let i = 0; i < half; i++) {
        const freq = o.freqs ? o.freqs[i]! : 1 / Math.pow(o.base, (2 * i) / o.dims);
        const ang = positions[t]! * o.scale * freq;
        const c = Math.cos(ang) * ms;
        const s = Math.sin(ang) * ms;
        const [a, b] = o.traditional ? [base + 2 * i, base + 2 * i + 1] : [base + i, base + i + half];
        out[a] = X[a]! * c - X[b]! * s;
        out[b] = X[b]! * c + X[a]! * s;
      }
    }
    return F([T, H, D], out);
  }

  createKvPool(numBlocks: number, blockSize: number, kvHeads: number, headDim: number): KvPool {
    const n = numBlocks * blockSize * kvHeads * headDim;
    const shape = [numBlocks, blockSize, kvHeads, headDim];
    return { k: F(shape, new Float32Array(n)), v: F(shape, new Float32Array(n)), numBlocks, blockSize, kvHeads, headDim };
  }
  kvWrite(pool: KvPool, k: Tensor, v: Tensor, slots: Int32Array): void {
    const row = pool.kvHeads * pool.headDim;
    const K = floats(k);
    const V = floats(v);
    const pk = floats(pool.k);
    const pv = floats(pool.v);
    for (let t = 0; t < slots.length; t++) {
      pk.set(K.subarray(t * row, (t + 1) * row), slots[t]! * row);
      pv.set(V.subarray(t * row, (t + 1) * row), slots[t]! * row);
    }
  }
  pagedAttention(q: Tensor, pool: KvPool, b: AttentionBatch, o: AttentionOptions): Tensor {
    const [T, H, D] = q.shape as [number, number, number];
    const Q = floats(q);
    const pk = floats(pool.k);
    const pv = floats(pool.v);
    const G = H / pool.kvHeads;
    const bs = pool.blockSize;
    const out = new Float32Array(T * H * D);
    for (let t = 0; t < T; t++) {
      const s = b.tokenSeq[t]!;
      const p = b.positions[t]!;
      const lo = o.window ? Math.max(0, p - o.window + 1) : 0;
      for (let h = 0; h < H; h++) {
        const kh = Math.floor(h / G);
        const scores: number[] = [];
        const slots: number[] = [];
        for (let j = lo; j <= p; j++) {
          const slot = b.blockTables[s * b.maxBlocks + Math.floor(j / bs)]! * bs + (j % bs);
          const off = (slot * pool.kvHeads + kh) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += Q[(t * H + h) * D + d]! * pk[off + d]!;
          let sc = dot * o.scale;
          if (o.softcap) sc = o.softcap * Math.tanh(sc / o.softcap);
          scores.push(sc);
          slots.push(off);
        }
        const m = Math.max(...scores);
        const w = scores.map((x) => Math.exp(x - m));
        const z = w.reduce((a, c) => a + c, 0);
        for (let j = 0; j < w.length; j++) {
          for (let d = 0; d < D; d++) out[(t * H + h) * D + d]! += (w[j]! / z) * pv[slots[j]! + d]!;
        }
      }
    }
    return F([T, H, D], out);
  }
  sdpa(): Tensor {
    throw new Error("ref: sdpa not implemented");
  }
  varlenAttention(q: Tensor, k: Tensor, v: Tensor, seqStart: Int32Array, opts: VarlenAttentionOptions): Tensor {
    return composedVarlenAttention(this, q, k, v, seqStart, opts);
  }
  createStatePool(): StatePool {
    throw new Error("ref: linear attention not implemented (the native ops are tested against float64 in test/backend)");
  }
  causalConv1d(): Tensor {
    throw new Error("ref: causalConv1d not implemented");
  }
  gatedDelta(): Tensor {
    throw new Error("ref: gatedDelta not implemented");
  }
  copyStateSlot(): void {
    throw new Error("ref: copyStateSlot not implemented");
  }
  stateSlotBytes(): number {
    throw new Error("ref: stateSlotBytes not implemented");
  }
  readStateSlot(): void {
    throw new Error("ref: readStateSlot not implemented");
  }
  writeStateSlot(): void {
    throw new Error("ref: writeStateSlot not implemented");
  }
  copyBlock(pool: KvPool, src: number, dst: number): void {
    const n = pool.blockSize * pool.kvHeads * pool.headDim;
    for (const t of [pool.k, pool.v]) {
      const a = floats(t);
      a.copyWithin(dst * n, src * n, (src + 1) * n);
    }
  }
  readKvBlock(pool: KvPool, block: number, into?: Uint8Array): Uint8Array {
    const n = pool.blockSize * pool.kvHeads * pool.headDim;
    const out = new Float32Array(2 * n);
    out.set(floats(pool.k).subarray(block * n, (block + 1) * n), 0);
    out.set(floats(pool.v).subarray(block * n, (block + 1) * n), n);
    const bytes = new Uint8Array(out.buffer);
    if (!into) return bytes;
    into.set(bytes);
    return into;
  }
  writeKvBlock(pool: KvPool, block: number, bytes: Uint8Array): void {
    const n = pool.blockSize * pool.kvHeads * pool.headDim;
    const src = new Float32Array(bytes.slice().buffer);
    floats(pool.k).set(src.subarray(0, n), block * n);
    floats(pool.v).set(src.subarray(n, 2 * n), block * n);
  }
}
