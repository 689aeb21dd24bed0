// Affine quantization as MLX's CPU kernel computes it: f32 arithmetic on the weight values (already rounded to the
// weight dtype), every intermediate rounded to f32, codes rounded half-to-even (rint). Scales and biases come back
// as f32; the caller rounds them to the weight dtype when it writes them, as MLX does.
import { type FloatDType, roundTo } from "./dtype.ts";
import { packCodes, unpackCodes } from "./pack.ts";

export const AFFINE_BITS = [2, 3, 4, 5, 6, 8] as const;
export const AFFINE_GROUPS = [32, 64, 128] as const;

const fr = Math.fround;
const EPS = fr(1e-7);

/** Round half to even, like C's rint under the default rounding mode. */
export function rint(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export interface AffineQuantized {
  /** Packed codes, `w.length * bits / 32` words. */
  weight: Uint32Array;
  /** One per group, in f32 (not yet rounded to the weight dtype). */
  scales: Float32Array;
  biases: Float32Array;
}

export function affineQuantize(w: Float32Array, groupSize: number, bits: number): AffineQuantized {
  const n = w.length;
  const groups = n / groupSize;
  const nBins = (1 << bits) - 1;
  const codes = new Uint8Array(n);
  const scales = new Float32Array(groups);
  const biases = new Float32Array(groups);
  for (let g = 0; g < groups; g++) {
    const base = g * groupSize;
    let wMin = Infinity;
    let wMax = -Infinity;
    for (let j = 0; j < groupSize; j++) {
      const v = w[base + j]!;
      if (wMax < v) wMax = v;
      if (v < wMin) wMin = v;
    }
    const mask = Math.abs(wMin) > Math.abs(wMax);
    let scale = fr(fr(wMax - wMin) / nBins);
    if (scale < EPS) scale = EPS;
    if (!mask) scale = -scale;
    const edge = mask ? wMin : wMax;
    const q0 = rint(fr(edge / scale));
    let bias = 0;
    if (q0 !== 0) {
      scale = fr(edge / q0);
      bias = edge;
    }
    for (let j = 0; j < groupSize; j++) {
      let q = rint(fr(fr(w[base + j]! - bias) / scale));
      if (q < 0) q = 0;
      if (nBins < q) q = nBins;
      codes[base + j] = q;
    }
    scales[g] = scale;
    biases[g] = bias;
  }
  return { weight: packCodes(codes, bits), scales, biases };
}

/**
 * `w = scale*q + bias` with scales and biases already in the dtype, each product and sum rounded to the dtype
 * as MLX's element-wise ops in that dtype do. Returns f32 values exactly representable in the dtype.
 */
export function affineDequantize(
  weight: Uint32Array,
  scales: Float32Array,
  biases: Float32Array,
  groupSize: number,
  bits: number,
  dtype: FloatDType,
): Float32Array {
  const n = scales.length * groupSize;
  const codes = unpackCodes(weight, bits, n);
  const out = new Float32Array(n);
  for (let g = 0; g < scales.length; g++) {
    const s = scales[g]!;
    const b = biases[g]!;
    const base = g * groupSize;
    for (let j = 0; j < groupSize; j++) {
      const m = roundTo(dtype, codes[base + j]! * s);
      out[base + j] = roundTo(dtype, m + b);
    }
  }
  return out;
}
