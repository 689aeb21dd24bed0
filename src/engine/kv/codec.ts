// KV codecs: how the paged cache stores keys and values. A codec names a KvFormat (float, MLX affine 8/4-bit with
// f16 group scales and biases, FP8 E4M3 with an f16 group scale), which the backend's pools store packed as the
// only copy; attention reads the packed pages directly.
//
// Names: f32, f16, bf16; q8, q4 (affine, group 64 along head_dim), k8v4 (8-bit keys, 4-bit values), fp8; the
// affine and fp8 codecs take a group suffix g32 or g64 (q4g32); without one, a layer whose head_dim 64 does not
// divide uses groups of 32. Bits per value at group 64: q8 8.5, q4 4.5, k8v4
// 6.5, fp8 8.25 (f16: 16).
import { type DType, type KvElement, type KvFormat, floatKvFormat, kvElementBytes, kvElementProblem } from "../../backend/backend.ts";
import { RmlxError } from "../../errors.ts";
import { blockHash, ROOT_HASH } from "./prefix_cache.ts";

export interface KvCodec {
  /** The canonical name (group 64 is left out: q4, q4g32). */
  readonly name: string;
  readonly format: KvFormat;
  /** Whether the name fixed the group size; otherwise a layer whose head_dim 64 does not divide uses 32. */
  readonly groupFixed?: boolean;
}

/** The codec names the CLI lists. */
export const KV_CODEC_NAMES = ["f32", "f16", "bf16", "q8", "q4", "k8v4", "fp8"] as const;

/** Codecs that are planned but not in this build. */
const NOT_YET: Readonly<Record<string, string>> = {
  turbo4: "rotation codecs (turbo4, turbo3) are not implemented yet",
  turbo3: "rotation codecs (turbo4, turbo3) are not implemented yet",
};

const affine = (bits: 4 | 8, group: number): KvElement => ({ kind: "affine", bits, group });

/** The codec of a name, or RmlxError("invalid_argument") naming it and why. */
export function parseKvCodec(spec: string): KvCodec {
  const name = spec.trim().toLowerCase();
  if (name === "f32" || name === "f16" || name === "bf16") return { name, format: floatKvFormat(name as DType) };
  const m = /^(q8|q4|k8v4|fp8)(?:g(32|64))?$/.exec(name);
  if (!m) {
    const why = NOT_YET[name] ?? `known: ${KV_CODEC_NAMES.join(", ")} (q8, q4, k8v4 and fp8 take a group suffix g32 or g64)`;
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
  if (codec.groupFixed || f.k.kind === "float" || headDim % 64 === 0 || headDim % 32 !== 0) return f;
  return formatOf(codec.name, 32);
}

/** A codec given by name, or one already parsed; a float DType is its own codec. */
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

/**
 * The first hash of a prefix-cache chain for this codec: blocks stored by different codecs never share keys.
 * f32 keeps the historic root.
 */
export function codecRootHash(codec: KvCodec): bigint {
  if (codec.name === "f32") return ROOT_HASH;
  const bytes = Array.from(new TextEncoder().encode(`kv:${codec.name}`));
  return blockHash(ROOT_HASH, bytes, 0, bytes.length);
}
