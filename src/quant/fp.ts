// MLX's floating-point block formats: mxfp4 (E2M1 codes, E8M0 scale per 32), mxfp8 (E4M3 codes, E8M0 scale per
// 32), nvfp4 (E2M1 codes, E4M3 scale per 16). Quantization follows MLX's GPU kernels (Metal from MLX 0.32.1, and
// CUDA): scale = absmax/maxval in f32, encoded to the scale format and decoded back, codes from value * (1/scale) with
// the reciprocal rounded to f32. For the power-of-two mx scales that equals value/scale; for nvfp4's E4M3 scales it
// differs from the quotient at a few E2M1 tie points.
import { type FloatDType, bitsF32, f32Bits, roundTo } from "./dtype.ts";
import { packCodes, unpackCodes } from "./pack.ts";

export type FpMode = "mxfp4" | "mxfp8" | "nvfp4";

export const FP_PARAMS: Readonly<Record<FpMode, { groupSize: number; bits: number }>> = {
  mxfp4: { groupSize: 32, bits: 4 },
  mxfp8: { groupSize: 32, bits: 8 },
  nvfp4: { groupSize: 16, bits: 4 },
};

const fr = Math.fround;

export const FP4_VALUES = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6] as const;

function signBit(x: number): boolean {
  return x < 0 || (x === 0 && 1 / x < 0);
}

/** Magnitude code of E2M1 for |x|: nearest of the 8 magnitudes, ties to the even mantissa (MLX's thresholds). */
function e2m1Magnitude(a: number): number {
  if (a > 5) return 7;
  if (a >= 3.5) return 6;
  if (a > 2.5) return 5;
  if (a >= 1.75) return 4;
  if (a > 1.25) return 3;
  if (a >= 0.75) return 2;
  if (a > 0.25) return 1;
  return 0;
}

/** E2M1 code of x (NaN gives 0x7, as MLX's conversion does). */
export function toE2M1(x: number): number {
  if (Number.isNaN(x)) return 0x7;
  return e2m1Magnitude(Math.abs(x)) | (signBit(x) ? 0x8 : 0);
}

const E4M3_SATURATE = (543 << 21) >>> 0;
const E4M3_DENORM_MASK = (141 << 23) >>> 0;
const E4M3_MIN_NORMAL = (121 << 23) >>> 0;

/** f32 to E4M3 (fn), nearest-even, saturating at 448; the bit manipulation MLX shares with PyTorch. */
export function toE4M3(x: number): number {
  let b = f32Bits(x);
  const sign = b & 0x80000000;
  b = (b ^ sign) >>> 0;
  let res: number;
  if (b >= E4M3_SATURATE) {
    res = 0x7e;
  } else if (b < E4M3_MIN_NORMAL) {
    const sum = f32Bits(fr(bitsF32(b) + bitsF32(E4M3_DENORM_MASK)));
    res = (sum - E4M3_DENORM_MASK) & 0xff;
  } else {
    const mantOdd = (b >>> 20) & 1;
    b = b + ((7 - 127) << 23) + 0x7ffff + mantOdd;
    res = (b >>> 20) & 0xff;
  }
  return res | (sign !== 0 ? 0x80 : 0);
}

export function fromE4M3(code: number): number {
  const e = (code >>> 3) & 0xf;
  const m = code & 7;
  const mag = e === 0 ? m * 2 ** -9 : (1 + m / 8) * 2 ** (e - 7);
  return code & 0x80 ? -mag : mag;
}

/** E8M0 scale code: 127 + round(log2 x) (halves away from zero) clamped to [-127, 127]; zero maps to code 0. */
export function toE8M0(x: number): number {
  if (!Number.isFinite(x)) return 0xff;
  if (x < 0) return 0;
  if (x === 0) return 0;
  const le = fr(Math.log2(x));
  let n = Math.sign(le) * Math.round(Math.abs(le));
  if (n < -127) n = -127;
  if (n > 127) n = 127;
  return n + 127;
}

/** The f32 value MLX decodes an E8M0 code to (code 0 is 2^-127, not zero). */
export function fromE8M0(code: number): number {
  return code === 0 ? 2 ** -127 : bitsF32(code << 23);
}

export interface FpQuantized {
  /** Packed codes: 8 E2M1 nibbles or 4 E4M3 bytes per word, lowest first. */
  weight: Uint32Array;
  /** One uint8 scale code per group. */
  scales: Uint8Array;
}

export function fpQuantize(w: Float32Array, mode: FpMode): FpQuantized {
  const { groupSize, bits } = FP_PARAMS[mode];
  const maxval = bits === 4 ? 6 : 448;
  const n = w.length;
  const groups = n / groupSize;
  const codes = new Uint8Array(n);
  const scales = new Uint8Array(groups);
  const bits32 = new Uint32Array(w.buffer, w.byteOffset, n);
  for (let g = 0; g < groups; g++) {
    const base = g * groupSize;
    let amax = 0;
    for (let j = 0; j < groupSize; j++) {
      const a = Math.abs(w[base + j]!);
      if (amax < a) amax = a;
    }
    const raw = fr(amax / maxval);
    let sc: number;
    let scale: number;
    if (mode === "nvfp4") {
      sc = toE4M3(raw);
      scale = fromE4M3(sc);
    } else {
      sc = toE8M0(raw);
      scale = fromE8M0(sc);
    }
    scales[g] = sc;
    const inv = scale === 0 ? 0 : fr(1 / scale);
    if (bits === 4) {
      for (let j = 0; j < groupSize; j++) {
        if (scale === 0) {
          // MLX quantizes +0.0 when the scale is zero, whatever the sign of the value
          codes[base + j] = 0;
          continue;
        }
        const q = fr(w[base + j]! * inv);
        // the quotient has the sign of the value (the scale is positive); NaN has no sign in E2M1
        codes[base + j] = q !== q ? 7 : e2m1Magnitude(Math.abs(q)) | (bits32[base + j]! >>> 31 ? 8 : 0);
      }
    } else {
      for (let j = 0; j < groupSize; j++) codes[base + j] = toE4M3(fr(w[base + j]! * inv));
    }
  }
  return { weight: packCodes(codes, bits), scales };
}

/**
 * Element value times the group scale, each in the output dtype as MLX's dequantize computes it.
 * `globalScale` (nvfp4 only) multiplies the scales by globalScale/(448*6).
 */
export function fpDequantize(
  weight: Uint32Array,
  scales: Uint8Array,
  mode: FpMode,
  dtype: FloatDType,
  globalScale?: number,
): Float32Array {
  const { groupSize, bits } = FP_PARAMS[mode];
  const n = scales.length * groupSize;
  const codes = unpackCodes(weight, bits, n);
  const out = new Float32Array(n);
  const invEnc = globalScale === undefined ? 1 : roundTo(dtype, roundTo(dtype, globalScale) / roundTo(dtype, 448 * 6));
  for (let g = 0; g < scales.length; g++) {
    const sc = scales[g]!;
    const scale =
      mode === "nvfp4" ? roundTo(dtype, roundTo(dtype, fromE4M3(sc)) * invEnc) : roundTo(dtype, 2 ** (sc - 127));
    const base = g * groupSize;
    for (let j = 0; j < groupSize; j++) {
      const c = codes[base + j]!;
      const v = bits === 4 ? FP4_VALUES[c]! : roundTo(dtype, fromE4M3(c));
      out[base + j] = roundTo(dtype, v * scale);
    }
  }
  return out;
}
