// The engine's side of the KV codecs (described in src/quant/kv_codec.ts): the default codec of a backend,
// prefix-cache keys per codec.
import type { Backend } from "../../backend/backend.ts";
import type { KvCodec } from "../../quant/kv_codec.ts";
import { blockHash, ROOT_HASH } from "./prefix_cache.ts";

/**
 * The codec of a cache when none is asked for: f32, or the activations' own bf16 or f16 where the backend computes
 * in one (the mlx backend with --compute-dtype model, or auto on Metal). Keys and values are computed in that
 * dtype there, so storing them in it keeps every value as computed, at half the bytes of f32 and with no
 * conversion of the whole context in every layer and step (as mlx-lm keeps its cache in the model's dtype).
 */
export function defaultKvCodec(be: Backend): string {
  return be.computeDtype === "bf16" || be.computeDtype === "f16" ? be.computeDtype : "f32";
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
