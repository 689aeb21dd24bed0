// The SSD tier of one model's prefix cache: entries leaving RAM are copied out of the KV pools (in the codec in
// use, as the pools hold them) into block files, and a later match that runs out of RAM entries reads them back
// into fresh blocks instead of prefilling those tokens again. Files are namespaced by the model's identity (its
// config and weight files), the cache's layout and codec, so that no block is ever served to another model or
// layout; within a namespace the chain hash (which starts from the codec's root) names the block.
//
// A hybrid's entry carries the recurrent-state snapshot taken after its block (if any) as the record's `extra`
// payload; the namespace's model identity fixes the state's layout, which the snapshot's own header repeats.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import type { KvCache } from "./kv_cache.ts";
import type { PrefixTier } from "./prefix_cache.ts";
import { SsdStore, type SsdStoreOptions } from "./ssd_store.ts";

const NO_EXTRA = new Uint8Array(0);

/**
 * What identifies a model's weights on disk: its config.json and the name, size and modification time of each
 * weight file. A model converted again, or edited, gets a namespace of its own.
 */
export function modelIdentity(dir: string): string {
  const parts = [readFileSync(join(dir, "config.json"), "utf8")];
  for (const name of readdirSync(dir).sort()) {
    if (!name.endsWith(".safetensors")) continue;
    const st = statSync(join(dir, name));
    parts.push(`${name}:${st.size}:${st.mtimeMs}`);
  }
  return parts.join("\n");
}

/** The namespace of a model's blocks: its identity, the cache's layout and codec. */
export function ssdNamespace(modelId: string, cache: KvCache): bigint {
  return BigInt(Bun.hash.wyhash(`${modelId}\n${cache.layout}\n${cache.codec.name}`, 0x73736474n));
}

export type SsdTierOptions = Omit<SsdStoreOptions, "ns"> & { modelId: string };

export class SsdTier implements PrefixTier {
  readonly store: SsdStore;

  constructor(
    private readonly cache: KvCache,
    opts: SsdTierOptions,
  ) {
    const { modelId, ...rest } = opts;
    this.store = new SsdStore({ ...rest, ns: ssdNamespace(modelId, cache) });
  }

  async keepPaced(hash: bigint, ids: readonly number[], snapshot: Uint8Array | null): Promise<void> {
    await this.store.roomFor(this.sizesOf(ids), snapshot?.byteLength ?? 0);
    this.keep(hash, ids, snapshot);
  }

  keep(hash: bigint, ids: readonly number[], snapshot: Uint8Array | null): void {
    const spaces = this.cache.spaces;
    const d = this.store.draft(hash, this.sizesOf(ids), snapshot ?? NO_EXTRA);
    if (!d) return;
    ids.forEach((id, s) => {
      if (id >= 0) spaces[s]!.readBlock(id, d.spaces[s]!);
    });
    this.store.put(hash, d.seal());
  }

  /** A record's space sizes for an entry's blocks: a block's bytes in each space that has one, 0 elsewhere. */
  private sizesOf(ids: readonly number[]): number[] {
    return ids.map((id, s) => (id < 0 ? 0 : this.cache.spaces[s]!.bytesPerBlock));
  }

  has(hash: bigint): boolean {
    return this.store.has(hash);
  }

  restore(hash: bigint): { ids: number[]; snapshot: Uint8Array | null } | null {
    const rec = this.store.read(hash);
    if (!rec) return null;
    const spaces = this.cache.spaces;
    const fits = rec.spaces.length === spaces.length && rec.spaces[0] !== null && rec.spaces.every((b, s) => !b || b.byteLength === spaces[s]!.bytesPerBlock);
    if (!fits) {
      this.store.drop(hash, "its block sizes are not this cache's");
      return null;
    }
    const ids = spaces.map(() => -1);
    for (let s = 0; s < spaces.length; s++) {
      const bytes = rec.spaces[s];
      const allocator = spaces[s]!.allocator;
      if (!bytes) continue;
      // Without room in the main space there is nothing to restore; a sliding space's block may stay given back.
      if (!allocator.ensureFree(1)) {
        if (s === 0) return null;
        continue;
      }
      ids[s] = allocator.allocate();
      spaces[s]!.writeBlock(ids[s]!, bytes);
    }
    this.store.touch([hash]);
    // The record's bytes sit in a buffer the next read reuses: the snapshot gets its own copy.
    const snapshot = rec.extra.byteLength > 0 && this.cache.states ? rec.extra.slice() : null;
    return { ids, snapshot };
  }
}
