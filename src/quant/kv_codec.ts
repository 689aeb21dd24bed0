// KV codecs described as bytes: how one side (keys or values) of a paged KV cache stores a row of head_dim values,
// the codec names of --kv-quant, and the bytes they take. Pure descriptions, shared by the backends that store the
// pages, the engine that sizes its cache and `rmlx info`, which sizes caches without loading a model.
//
// Names: f32, f16, bf16; q8, q4 (MLX affine, group 64 along head_dim), k8v4 (8-bit keys, 4-bit values), fp8; the
// affine and fp8 codecs take a group suffix g32 or g64 (q4g32); without one, a layer whose head_dim 64 does not
// divide uses groups of 32. turbo4 and turbo3: a fixed randomised Hadamard rotation of each head's row, then a
// Lloyd-Max code per value and one scale per row (head_dim a power of two). Bits per value at group 64 and
// head_dim 128: q8 8.5, q4 4.5, k8v4 6.5, fp8 8.25, turbo4 4.125, turbo3 3.125 (f16: 16).
import { RmlxError } from "../errors.ts";

export type KvFloatDType = "f32" | "f16" | "bf16";

const FLOAT_BYTES: Readonly<Record<KvFloatDType, number>> = { f32: 4, f16: 2, bf16: 2 };

/**
 * How one side (keys or values) of a KV pool stores a row of headDim values:
 *  - float: the row in dtype (f32, f16 or bf16);
 *  - affine: MLX's affine quantization along headDim (mx.quantize layout: codes packed least significant bits
 *    first, one scale and one bias per `group` values), with f16 scales and biases;
 *  - fp8: one E4M3 byte per value and one f16 scale per group (value = e4m3 * scale);
 *  - turbo: the row rotated by a fixed randomised Hadamard transform, each rotated value stored as the index of the
 *    nearest level of the Lloyd-Max quantizer of a unit Gaussian (`bits` 4 or 3), times one f16 scale per row
 *    (about the row's norm / sqrt(headDim)); headDim must be a power of two.
 */
export type KvElement =
  | { readonly kind: "float"; readonly dtype: KvFloatDType }
  | { readonly kind: "affine"; readonly bits: 4 | 8; readonly group: number }
  | { readonly kind: "fp8"; readonly group: number }
  | { readonly kind: "turbo"; readonly bits: 3 | 4 };

/** The storage of a KV pool: keys and values may differ (e.g. 8-bit keys, 4-bit values). */
export interface KvFormat {
  readonly k: KvElement;
  readonly v: KvElement;
}

/** A float format of both sides. */
export function floatKvFormat(dtype: KvFloatDType): KvFormat {
  const e: KvElement = { kind: "float", dtype };
  return { k: e, v: e };
}

/** Whether a format keeps both sides as floats of one dtype (the plain pool layout). */
export function plainKvDtype(f: KvFormat): KvFloatDType | null {
  return f.k.kind === "float" && f.v.kind === "float" && f.k.dtype === f.v.dtype ? f.k.dtype : null;
}

/** Bits of one stored value's code (float: the dtype's bits). */
export function kvElementBits(e: KvElement): number {
  if (e.kind === "float") return 8 * FLOAT_BYTES[e.dtype];
  return e.kind === "fp8" ? 8 : e.bits;
}

/** Scales (and biases) of one row: how many f16 values follow the codes. */
export function kvElementGroups(e: KvElement, headDim: number): number {
  if (e.kind === "float") return 0;
  return e.kind === "turbo" ? 1 : headDim / e.group;
}

/** Bytes of one stored row of headDim values (codes, scales and biases). */
export function kvElementBytes(e: KvElement, headDim: number): number {
  if (e.kind === "float") return headDim * FLOAT_BYTES[e.dtype];
  const codes = (headDim * kvElementBits(e)) / 8;
  return codes + (e.kind === "affine" ? 4 : 2) * kvElementGroups(e, headDim);
}

/** The largest head_dim the rotation codecs take. */
export const TURBO_MAX_HEAD_DIM = 1024;

/** Why a side cannot store rows of headDim values, or null when it can. */
export function kvElementProblem(e: KvElement, headDim: number): string | null {
  if (e.kind === "float") return null;
  if (e.kind === "turbo") {
    const pow2 = headDim >= 8 && headDim <= TURBO_MAX_HEAD_DIM && (headDim & (headDim - 1)) === 0;
    return pow2 ? null : `the Hadamard rotation needs a power-of-two head_dim from 8 to ${TURBO_MAX_HEAD_DIM}`;
  }
  if (!Number.isInteger(e.group) || e.group < 2 || headDim % e.group !== 0) {
    return `head_dim ${headDim} is not a multiple of the group size ${e.group}`;
  }
  return null;
}

export interface KvCodec {
  /** The canonical name (group 64 is left out: q4, q4g32). */
  readonly name: string;
  readonly format: KvFormat;
  /** Whether the name fixed the group size; otherwise a layer whose head_dim 64 does not divide uses 32. */
  readonly groupFixed?: boolean;
}

/** The codec names the CLI lists. */
export const KV_CODEC_NAMES = ["f32", "f16", "bf16", "q8", "q4", "k8v4", "fp8", "turbo4", "turbo3"] as const;

const affine = (bits: 4 | 8, group: number): KvElement => ({ kind: "affine", bits, group });

/** The codec of a name, or RmlxError("invalid_argument") naming it and why. */
export function parseKvCodec(spec: string): KvCodec {
  const name = spec.trim().toLowerCase();
  if (name === "f32" || name === "f16" || name === "bf16") return { name, format: floatKvFormat(name) };
  if (name === "turbo4" || name === "turbo3") {
    const e: KvElement = { kind: "turbo", bits: name === "turbo4" ? 4 : 3 };
    return { name, format: { k: e, v: e } };
  }
  const m = /^(q8|q4|k8v4|fp8)(?:g(32|64))?$/.exec(name);
  if (!m) {
    const why = `known: ${KV_CODEC_NAMES.join(", ")} (q8, q4, k8v4 and fp8 take a group suffix g32 or g64)`;
    throw new RmlxError("invalid_argument", `unknown KV codec '${spec}': ${why}`);
  }
  const base = m[1]!;
  const group = m[2] ? Number(m[2]) : 64;
  const name2 = m[2] ? `${base}g${group}` : base;
  return { name: name2, format: formatOf(base, group), groupFixed: m[2] !== undefined };
}

function formatOf(base: string, group: number): KvFormat {
  switch (base) {
    case "q8":
      return { k: affine(8, group), v: affine(8, group) };
    case "q4":
      return { k: affine(4, group), v: affine(4, group) };
    case "k8v4":
      return { k: affine(8, group), v: affine(4, group) };
    default:
      return { k: { kind: "fp8", group }, v: { kind: "fp8", group } };
  }
}

/** The format of a layer with this head_dim: a codec named without a group uses 32 where 64 does not divide it. */
export function kvLayerFormat(codec: KvCodec, headDim: number): KvFormat {
  const f = codec.format;
  if (codec.groupFixed || f.k.kind === "float" || f.k.kind === "turbo" || headDim % 64 === 0 || headDim % 32 !== 0) return f;
  return formatOf(codec.name, 32);
}

/** A codec given by name, or one already parsed. */
export function kvCodec(c: KvCodec | string): KvCodec {
  return typeof c === "string" ? parseKvCodec(c) : c;
}

/** Why the codec cannot store a layer with this head_dim, or null. */
export function kvCodecProblem(codec: KvCodec, headDim: number): string | null {
  const f = kvLayerFormat(codec, headDim);
  for (const e of [f.k, f.v]) {
    const why = kvElementProblem(e, headDim);
    if (why) return `KV codec ${codec.name} cannot store head_dim ${headDim}: ${why}`;
  }
  return null;
}

/** Bytes of K and V of one token of one layer. */
export function kvCodecBytes(codec: KvCodec, kvHeads: number, headDim: number): number {
  const f = kvLayerFormat(codec, headDim);
  return kvHeads * (kvElementBytes(f.k, headDim) + kvElementBytes(f.v, headDim));
}

/** Bytes of K and V per token over the given layers. */
export function kvBytesPerToken(codec: KvCodec, layers: readonly { kvHeads: number; headDim: number }[]): number {
  return layers.reduce((sum, l) => sum + kvCodecBytes(codec, l.kvHeads, l.headDim), 0);
}
