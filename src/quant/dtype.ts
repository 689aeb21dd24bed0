// Float formats MLX writes weights in, converted on typed arrays. Values travel between stages as Float32Array
// holding numbers exactly representable in the tensor's dtype, so that every later f32 step sees what MLX sees.
import { RmlxError } from "../errors.ts";

export type FloatDType = "F32" | "F16" | "BF16";

export const FLOAT_DTYPE_SIZE: Readonly<Record<FloatDType, number>> = { F32: 4, F16: 2, BF16: 2 };

export function isFloatDType(d: string): d is FloatDType {
  return d === "F32" || d === "F16" || d === "BF16";
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const f16 = new Float16Array(1);

export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0]!;
}

export function bitsF32(b: number): number {
  u32[0] = b >>> 0;
  return f32[0]!;
}

/** Round an f32 to bfloat16 bits, nearest-even, as MLX's bfloat16 constructor does (NaN becomes a quiet NaN). */
export function f32ToBf16Bits(x: number): number {
  const b = f32Bits(x);
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) & 0x8000) | 0x7fc0;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

function bf16BitsToF32(h: number): number {
  return bitsF32(h << 16);
}

/** Round any number to the nearest value of the dtype (nearest-even), returned as a JS number. */
export function roundTo(dtype: FloatDType, x: number): number {
  if (dtype === "F32") return Math.fround(x);
  if (dtype === "BF16") return bf16BitsToF32(f32ToBf16Bits(Math.fround(x)));
  f16[0] = Math.fround(x);
  return f16[0]!;
}

/** Decode little-endian tensor bytes of a float dtype into f32 values (exact: every source value fits in f32). */
export function decodeFloats(dtype: FloatDType | "F64", bytes: Uint8Array, out?: Float32Array): Float32Array {
  const n = bytes.byteLength / (dtype === "F64" ? 8 : FLOAT_DTYPE_SIZE[dtype]);
  const res = out && out.length >= n ? out.subarray(0, n) : new Float32Array(n);
  const aligned = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  const buf = aligned.buffer;
  const off = aligned.byteOffset;
  switch (dtype) {
    case "F32":
      res.set(new Float32Array(buf, off, n));
      break;
    case "F64":
      res.set(new Float64Array(buf, off, n));
      break;
    case "F16":
      res.set(new Float16Array(buf, off, n));
      break;
    case "BF16": {
      const src = new Uint16Array(buf, off, n);
      const dst = new Uint32Array(res.buffer, res.byteOffset, n);
      for (let i = 0; i < n; i++) dst[i] = src[i]! << 16;
      break;
    }
  }
  return res;
}

/** Encode f32 values as little-endian bytes of the dtype, rounding nearest-even. */
export function encodeFloats(dtype: FloatDType, values: Float32Array): Uint8Array {
  const n = values.length;
  switch (dtype) {
    case "F32":
      return new Uint8Array(values.buffer, values.byteOffset, n * 4).slice();
    case "F16": {
      const out = new Float16Array(n);
      out.set(values);
      return new Uint8Array(out.buffer);
    }
    case "BF16": {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = f32ToBf16Bits(values[i]!);
      return new Uint8Array(out.buffer);
    }
  }
}

/** Round every value in place to the dtype (a cast to the dtype and back). */
export function roundArrayTo(dtype: FloatDType, values: Float32Array): Float32Array {
  if (dtype === "F32") return values;
  if (dtype === "F16") {
    const tmp = new Float16Array(values.length);
    tmp.set(values);
    values.set(tmp);
    return values;
  }
  const u = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < u.length; i++) {
    const b = u[i]!;
    u[i] = (b & 0x7fffffff) > 0x7f800000 ? ((b & 0x80000000) | 0x7fc00000) >>> 0 : ((b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000) >>> 0;
  }
  return values;
}

export function parseDTypeFlag(s: string): FloatDType {
  const m: Record<string, FloatDType> = {
    bf16: "BF16",
    bfloat16: "BF16",
    f16: "F16",
    float16: "F16",
    fp16: "F16",
    f32: "F32",
    float32: "F32",
    fp32: "F32",
  };
  const d = m[s.toLowerCase()];
  if (!d) throw new RmlxError("invalid_argument", `unknown dtype '${s}' (expected bf16, f16 or f32)`);
  return d;
}
