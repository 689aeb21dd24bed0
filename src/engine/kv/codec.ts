// The engine's side of the KV codecs (described in src/quant/kv_codec.ts): prefix-cache keys per codec.
import type { KvCodec } from "../../quant/kv_codec.ts";
import { blockHash, ROOT_HASH } from "./prefix_cache.ts";

/**
 * The first hash of a prefix-cache chain for this codec: blocks stored by different codecs never share keys.
 * f32 keeps the historic root.
 */
export function codecRootHash(codec: KvCodec): bigint {
  if (codec.name === "f32") return ROOT_HASH;
  const bytes = Array.from(new TextEncoder().encode(`kv:${codec.name}`));
  return blockHash(ROOT_HASH, bytes, 0, bytes.length);
}
