// Plain TypeScript references for the native product tests: the MLX weight layouts decoded straight from their
// documented definitions (bit streams, E2M1/E4M3/E8M0 tables), in float64.
import { ptr } from "bun:ffi";
import { afterAll } from "bun:test";
import { DT, Q_EXACT_ROWS, native } from "../../src/backend/native/lib.ts";
import { mulberry32 } from "../rng.ts";

export type Mode = "affine" | "mxfp4" | "mxfp8" | "nvfp4";
export type FloatDt = "f32" | "f16" | "bf16";

/** Deterministic generator (mulberry32) so failures reproduce. */
export function rng(seed: number) {
  const next = mulberry32(seed);
  return { next, normal: () => Math.sqrt(-2 * Math.log(next() + 1e-12)) * Math.cos(2 * Math.PI * next()) };
}

export function f16ToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

export function bf16ToNumber(h: number): number {
  const u = new Uint32Array([h << 16]);
  return new Float32Array(u.buffer)[0]!;
}

/** f32 -> f16 bits by round to nearest even through the f16 grid (inputs kept small and normal in tests). */
export function numberToF16(x: number): number {
  const sign = x < 0 ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === 0) return sign;
  let e = Math.floor(Math.log2(a));
  if (e < -14) e = -14;
  const step = 2 ** (e - 10);
  let q = Math.round(a / step);
  if (q === 2048) {
    q = 1024;
    e += 1;
  }
  if (q < 1024) return sign | q;
  return sign | ((e + 15) << 10) | (q - 1024);
}

export function numberToBf16(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0]!;
  return ((u + 0x7fff + ((u >> 16) & 1)) >>> 16) & 0xffff;
}

const FP4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
export const fp4 = (nib: number) => (nib & 8 ? -1 : 1) * FP4[nib & 7]!;

/** OCP E4M3 (bias 7, 0x7f/0xff NaN, subnormals m * 2^-9). */
export function e4m3(b: number): number {
  const s = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 15;
  const m = b & 7;
  if ((b & 0x7f) === 0x7f) return NaN;
  if (e === 0) return s * m * 2 ** -9;
  return s * (1 + m / 8) * 2 ** (e - 7);
}

export const e8m0 = (s: number) => (s === 255 ? Infinity : 2 ** (s - 127));

export const groupOf = (mode: Mode, g: number) => (mode === "nvfp4" ? 16 : mode === "affine" ? g : 32);
export const bitsOf = (mode: Mode, b: number) => (mode === "mxfp8" ? 8 : mode === "affine" ? b : 4);

/** A quantized weight [N, K] with its scales and biases, as the native entry points take them. */
export interface QWeight {
  mode: Mode;
  bits: number;
  group: number;
  N: number;
  K: number;
  w: Uint32Array;
  scales: Uint8Array | Uint16Array | Float32Array;
  biases: Uint16Array | Float32Array | null;
  sbDtype: FloatDt;
  globalScale: number;
  /** RMLX_Q_EXACT_ROWS: many-row products stay f32 in the auto gemm mode (weights of routed models). */
  exactRows?: boolean;
}

function sbValue(q: QWeight, arr: Uint16Array | Float32Array | Uint8Array, i: number): number {
  if (q.sbDtype === "f32") return (arr as Float32Array)[i]!;
  if (q.sbDtype === "f16") return f16ToNumber(arr[i]!);
  return bf16ToNumber(arr[i]!);
}

/** The code of element k of row n, read from the row's little-endian bit stream. */
export function codeRef(q: QWeight, n: number, k: number): number {
  const rowBytes = (q.K * q.bits) / 8;
  const bytes = new Uint8Array(q.w.buffer, q.w.byteOffset, q.w.byteLength);
  let code = 0;
  for (let b = 0; b < q.bits; b++) {
    const bit = k * q.bits + b;
    code |= ((bytes[n * rowBytes + (bit >> 3)]! >> (bit & 7)) & 1) << b;
  }
  return code;
}

/** Element k of row n: code read from the row's little-endian bit stream, then scaled as the mode says. */
export function dequantRef(q: QWeight, n: number, k: number): number {
  const code = codeRef(q, n, k);
  const gi = n * (q.K / q.group) + Math.floor(k / q.group);
  switch (q.mode) {
    case "affine":
      return sbValue(q, q.scales, gi) * code + sbValue(q, q.biases!, gi);
    case "mxfp4":
      return fp4(code) * e8m0(q.scales[gi]!);
    case "mxfp8":
      return e4m3(code) * e8m0(q.scales[gi]!);
    case "nvfp4":
      return fp4(code) * e4m3(q.scales[gi]!) * (q.globalScale !== 0 ? q.globalScale / (448 * 6) : 1);
  }
}

export function dequantAll(q: QWeight): Float64Array {
  const out = new Float64Array(q.N * q.K);
  for (let n = 0; n < q.N; n++) for (let k = 0; k < q.K; k++) out[n * q.K + k] = dequantRef(q, n, k);
  return out;
}

function randomFloats(r: ReturnType<typeof rng>, n: number, dt: FloatDt, scale: number, offset = 0) {
  if (dt === "f32") return Float32Array.from({ length: n }, () => offset + scale * r.normal());
  const conv = dt === "f16" ? numberToF16 : numberToBf16;
  return Uint16Array.from({ length: n }, () => conv(offset + scale * r.normal()));
}

/** Random packed words (every bit pattern is a valid code) and random scales in a safe range. */
export function randomQWeight(
  seed: number,
  mode: Mode,
  bits: number,
  group: number,
  N: number,
  K: number,
  sbDtype: FloatDt = "f32",
  globalScale = 0,
): QWeight {
  const r = rng(seed);
  const words = (N * K * bits) / 32;
  const w = Uint32Array.from({ length: words }, () => Math.floor(r.next() * 2 ** 32) >>> 0);
  const ng = (N * K) / group;
  if (mode === "mxfp8") {
    // E4M3 NaN codes are left out: their product has no useful reference.
    const b = new Uint8Array(w.buffer);
    for (let i = 0; i < b.length; i++) if ((b[i]! & 0x7f) === 0x7f) b[i] = b[i]! ^ 1;
  }
  let scales: QWeight["scales"];
  let biases: QWeight["biases"] = null;
  if (mode === "affine") {
    scales = randomFloats(r, ng, sbDtype, 0.02);
    biases = randomFloats(r, ng, sbDtype, 0.05);
  } else if (mode === "nvfp4") {
    scales = Uint8Array.from({ length: ng }, () => 0x20 + Math.floor(r.next() * 0x30)); // 2^-3 .. 2^3 range
  } else {
    scales = Uint8Array.from({ length: ng }, () => 120 + Math.floor(r.next() * 10));
  }
  return { mode, bits, group, N, K, w, scales, biases, sbDtype, globalScale };
}

export function randomX(seed: number, n: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r.normal());
}

/** y = x @ W^T in float64, plus sum |x*w| per output as the scale of the allowed f32 rounding error. */
export function matmulRef(x: Float32Array, M: number, wd: Float64Array, N: number, K: number, bias?: Float64Array) {
  const y = new Float64Array(M * N);
  const mag = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      let a = 0;
      for (let k = 0; k < K; k++) {
        const p = x[m * K + k]! * wd[n * K + k]!;
        s += p;
        a += Math.abs(p);
      }
      y[m * N + n] = s + (bias ? bias[n]! : 0);
      mag[m * N + n] = a + (bias ? Math.abs(bias[n]!) : 0);
    }
  return { y, mag };
}

/** Largest |got - want| / (mag + tiny) over all outputs. */
export function worstRelError(got: Float32Array, want: Float64Array, mag: Float64Array): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!) / (mag[i]! + 1e-30);
    if (!(e <= worst)) worst = Number.isNaN(e) ? Infinity : e;
  }
  return worst;
}

export const MODE_ID = { affine: 0, mxfp4: 1, mxfp8: 2, nvfp4: 3 } as const;

export function qlinear(q: QWeight, x: Float32Array, M: number, bias: Float32Array | null = null): Float32Array {
  const y = new Float32Array(M * q.N);
  const st = native().rmlx_qlinear(
    ptr(y),
    ptr(x),
    M,
    q.K,
    q.N,
    ptr(q.w),
    ptr(q.scales),
    q.biases ? ptr(q.biases) : null,
    DT[q.sbDtype],
    MODE_ID[q.mode] | (q.exactRows ? Q_EXACT_ROWS : 0),
    q.bits,
    q.group,
    q.globalScale,
    bias ? ptr(bias) : null,
    DT.f32,
  );
  if (st !== 0) throw new Error(`rmlx_qlinear status ${st}: ${native().rmlx_last_error()}`);
  return y;
}

/** The ISA variants this CPU runs, each made active in turn by forEachIsa. */
export function availableIsas(): string[] {
  const lib = native();
  const best = String(lib.rmlx_isa());
  const out: string[] = [];
  for (const isa of ["scalar", "avx2", "avx512", "avx512vnni"]) if (setIsa(isa) === 0) out.push(isa);
  setIsa(best);
  return out;
}

export function setIsa(name: string): number {
  return native().rmlx_set_isa(ptr(Buffer.from(`${name}\0`)));
}

/** Whether the x16 gemv path (native/cpu/qkern_x16_impl.h) takes this weight when x has few rows. */
export function takesX16(q: QWeight): boolean {
  if (q.mode === "mxfp4" || q.mode === "nvfp4") return q.K % 64 === 0;
  if (q.mode !== "affine") return false;
  return q.bits === 2 ? q.group === 64 || q.group === 128 : q.group % 32 === 0;
}

/**
 * What the x16 path computes, from its documented rounding, in float64: each group of x (the weight's group,
 * at least 32 elements) in steps of max|x| / 32639, values rounded half to even. Affine codes are centred (q - (2^bits - 1) / 2) and the
 * centre goes back with the bias against the exact sums of x, so there the rounding errors meet only the
 * centred codes; mxfp4 values meet the rounded x directly.
 */
export function matmulX16Ref(q: QWeight, x: Float32Array, M: number): Float64Array {
  return matmulRoundedRef(q, x, M, 32639);
}

/**
 * What the x8 path computes (native/cpu/qkern_x8_impl.h): as matmulX16Ref with steps of max|x| / 127 per
 * group of x (the weight's group), int8 values in [-127, 127].
 */
export function matmulX8Ref(q: QWeight, x: Float32Array, M: number): Float64Array {
  return matmulRoundedRef(q, x, M, 127);
}

function matmulRoundedRef(q: QWeight, x: Float32Array, M: number, levels: number): Float64Array {
  const { N, K, group } = q;
  const f = Math.fround;
  const xr = new Float64Array(M * K);
  const xg = Math.max(group, 32);
  for (let b = 0; b < M * K; b += xg) {
    let amax = 0;
    for (let i = 0; i < xg; i++) amax = Math.max(amax, Math.abs(x[b + i]!));
    const step = f(amax / levels);
    const inv = amax > 0 ? f(levels / amax) : 0;
    for (let i = 0; i < xg; i++) {
      const v = f(x[b + i]! * inv);
      let r = Math.round(v);
      if (Math.abs(v % 1) === 0.5) r = 2 * Math.round(v / 2);
      xr[b + i] = Math.max(-levels, Math.min(levels, r)) * step;
    }
  }
  const centre = q.mode === "affine" ? (2 ** q.bits - 1) / 2 : 0;
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        const w = dequantRef(q, n, k);
        const xi = x[m * K + k]!;
        const d = xr[m * K + k]! - xi;
        if (q.mode === "affine") {
          const gi = n * (K / group) + Math.floor(k / group);
          const sc = sbValue(q, q.scales, gi);
          s += w * xi + (w - sbValue(q, q.biases!, gi) - centre * sc) * d;
        } else {
          s += w * (xi + d);
        }
      }
      y[m * N + n] = s;
    }
  return y;
}

/**
 * The bound on |y - exact| that rounding x to 8 bits per group implies for affine weights: each x moves by at
 * most half a step (max|x| of its group / 254) and meets the centred code, so per output the sum over groups of
 * |scale| * max|x| / 254 * sum |q - (2^bits - 1) / 2|.
 */
export function x8Bound(q: QWeight, x: Float32Array, M: number): Float64Array {
  const { N, K, group } = q;
  const centre = (2 ** q.bits - 1) / 2;
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let b = 0;
      for (let g = 0; g < K / group; g++) {
        let amax = 0;
        for (let i = 0; i < group; i++) amax = Math.max(amax, Math.abs(x[m * K + g * group + i]!));
        let codes = 0;
        for (let i = 0; i < group; i++) codes += Math.abs(codeRef(q, n, g * group + i) - centre);
        b += Math.abs(sbValue(q, q.scales, n * (K / group) + g)) * (amax / 254) * codes;
      }
      out[m * N + n] = b;
    }
  return out;
}

/** Sets the gemv arithmetic ("x16" or "f32"); returns the status. */
export function setGemvMode(name: string): number {
  return native().rmlx_set_gemv_mode(ptr(Buffer.from(`${name}\0`)));
}

/** Sets the prefill-product arithmetic ("auto", "f32", "x16" or "bf16"); returns the status. */
export function setGemmMode(name: string): number {
  return native().rmlx_set_gemm_mode(ptr(Buffer.from(`${name}\0`)));
}

/**
 * For files whose tests switch the ISA variant and the gemm mode: puts back the ones in effect when called once
 * the file's tests end. Returns the gemm mode it saw.
 */
export function restoreIsaAndGemmAfterAll(): string {
  const isa = String(native().rmlx_isa()), gemm = String(native().rmlx_gemm_mode());
  afterAll(() => {
    setIsa(isa);
    setGemmMode(gemm);
  });
  return gemm;
}
