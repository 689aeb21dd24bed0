// Automatic prefix caching. Five rules:
//  1. A full block is keyed by a chain hash of every token from the start of the sequence to its end, so requests
//     that share a prompt prefix share those blocks (through the allocators' refcounts) and skip their prefill.
//  2. An entry holds one reference to its block in each space of the KV cache. The main space's block is the
//     entry; a sliding space's block can be given back alone. Under pressure on a space, blocks only the cache
//     holds go back least recently used first.
//  3. A prefix of m blocks is usable when its entries still have every block that a sequence of m blocks holds
//     in each space: all m in the main space, those the next query's window reads in a sliding one.
//  4. A model with recurrent state (linear-attention layers) can start only where the cache also keeps that state:
//     an entry may carry a snapshot of it taken right after its block, and a prefix is usable only if its last
//     entry has one. A snapshot is charged as many main-space blocks as its bytes fill, held by its entry and given
//     back with it, so snapshots and K/V share one memory budget.
//  5. With a tier below (an SSD), an entry leaving RAM, or giving back a sliding space's block, is offered to it
//     first, and a match that runs out of RAM entries goes on with the blocks the tier gives back. A snapshot goes
//     with its entry and comes back charged like a new one (dropped when the budget cannot take it).
import type { BlockAllocator, Held } from "./kv_cache.ts";

/** Chain hash of one block: the previous block's hash and this block's tokens. */
export function blockHash(prev: bigint, tokens: ArrayLike<number>, start: number, end: number): bigint {
  const buf = new Int32Array(end - start + 2);
  buf[0] = Number(prev & 0xffffffffn) | 0;
  buf[1] = Number((prev >> 32n) & 0xffffffffn) | 0;
  for (let i = start; i < end; i++) buf[i - start + 2] = tokens[i]!;
  return BigInt(Bun.hash.wyhash(new Uint8Array(buf.buffer), 0x726d6c78n));
}

export const ROOT_HASH = 0n;

/** What the prefix cache needs of a space of the KV cache (BlockSpace fits); the main space comes first. */
export interface CachedSpace {
  readonly allocator: BlockAllocator;
  /** Logical block of the first key a query at position `length` reads: where a sequence's held blocks start. */
  firstHeld(length: number): number;
}

export interface PrefixMatch {
  /** Whole blocks matched: they hold the first blocks * blockSize tokens. */
  blocks: number;
  /** Of those, the ones the tier gave back for this match. */
  fromTier: number;
  /** Chain hash through them. */
  hash: bigint;
  /** Per space, the blocks that a sequence of that many blocks holds there, each retained once for the caller. */
  held: Held[];
  /** The recurrent state after the last matched block (models with recurrent state, when blocks > 0). */
  snapshot?: Uint8Array;
}

interface Entry {
  /** The cached block's id in each space; -1 where it was given back (never in the main space). */
  ids: number[];
  /** Recurrent state right after this block, and the main-space blocks charged for its memory. */
  snapshot: Uint8Array | null;
  charged: number[];
}

/** Where entries go when they leave RAM, and come back from (src/engine/kv/ssd_tier.ts). */
export interface PrefixTier {
  /**
   * An entry leaving RAM (or kept at shutdown): its block in each space, -1 where none, K/V still in place, and
   * the recurrent-state snapshot after it, if any.
   */
  keep(hash: bigint, ids: readonly number[], snapshot: Uint8Array | null): void;
  /**
   * keep() for a graceful shutdown, which has time: waits until the tier can take the entry rather than letting
   * a full write queue skip it.
   */
  keepPaced?(hash: bigint, ids: readonly number[], snapshot: Uint8Array | null): Promise<void>;
  /** Whether the tier may hold the block of this chain hash. */
  has(hash: bigint): boolean;
  /** The block of this chain hash in fresh blocks of each space (refcount 1, -1 where none) and its snapshot, or null. */
  restore(hash: bigint): { ids: number[]; snapshot: Uint8Array | null } | null;
}

export class PrefixCache {
  /** hash -> entry; Map order is the LRU order (oldest first). */
  private readonly entries = new Map<bigint, Entry>();

  constructor(
    private readonly spaces: readonly CachedSpace[],
    readonly blockSize: number,
    /** First hash of every chain: the KV codec's (codecRootHash), so that blocks of different codecs never match. */
    readonly root: bigint = ROOT_HASH,
    private readonly tier: PrefixTier | null = null,
    /** Main-space blocks a snapshot is charged; 0 for a model without recurrent state (no snapshots needed). */
    readonly snapshotBlocks = 0,
  ) {
    spaces.forEach((space, s) => space.allocator.setReclaimer((needed) => this.evict(s, needed)));
  }

  get size(): number {
    return this.entries.size;
  }

  /**
   * The cached blocks that hold the longest usable prefix of `tokens`, at most `maxBlocks` of them, retained for
   * the caller (who frees them like its own blocks), and the chain hash after the last one.
   */
  match(tokens: ArrayLike<number>, maxBlocks: number): PrefixMatch {
    const found: Entry[] = [];
    const hashes: bigint[] = [this.root];
    const bs = this.blockSize;
    const restored = new Set<Entry>();
    // Once blocks come back from the tier, the entries found are held so that making room cannot evict them.
    let pinning = false;
    for (let b = 0; b < maxBlocks && (b + 1) * bs <= tokens.length; b++) {
      const h = blockHash(hashes[b]!, tokens, b * bs, (b + 1) * bs);
      let e = this.entries.get(h);
      if (e === undefined && this.tier?.has(h)) {
        if (!pinning) for (const f of found) this.hold(f, 1);
        pinning = true;
        const back = this.tier.restore(h);
        if (back) {
          e = { ids: back.ids, snapshot: null, charged: [] };
          if (back.snapshot) this.charge(e, back.snapshot);
          this.entries.set(h, e);
          restored.add(e);
        }
      }
      if (e === undefined) break;
      found.push(e);
      hashes.push(h);
      if (pinning) this.hold(e, 1);
    }
    if (pinning) for (const f of found) this.hold(f, -1);
    let m = found.length;
    while (m > 0 && !(this.usable(found, m) && (this.snapshotBlocks === 0 || found[m - 1]!.snapshot))) m--;
    for (let k = 0; k < m; k++) {
      this.entries.delete(hashes[k + 1]!);
      this.entries.set(hashes[k + 1]!, found[k]!);
    }
    const held = this.spaces.map((space, s) => {
      const first = space.firstHeld(m * bs);
      const ids = found.slice(first, m).map((e) => e.ids[s]!);
      for (const id of ids) space.allocator.retain(id);
      return { first, ids };
    });
    const snapshot = this.snapshotBlocks > 0 && m > 0 ? found[m - 1]!.snapshot! : undefined;
    const fromTier = found.slice(0, m).filter((e) => restored.has(e)).length;
    return { blocks: m, fromTier, hash: hashes[m]!, held, ...(snapshot ? { snapshot } : {}) };
  }

  /** Offers every entry to the tier, keeping them (a model unloaded: its pools go right after). */
  keepAll(): void {
    if (this.tier) for (const [h, e] of this.entries) this.tier.keep(h, e.ids, e.snapshot);
  }

  /**
   * keepAll for a graceful shutdown: each entry waits for room in the tier's write queue instead of being skipped
   * when the queue is full (the entries are offered oldest first, so a skip lost the most recent prefixes).
   */
  async keepAllPaced(): Promise<void> {
    const tier = this.tier;
    if (!tier) return;
    for (const [h, e] of this.entries) {
      if (tier.keepPaced) await tier.keepPaced(h, e.ids, e.snapshot);
      else tier.keep(h, e.ids, e.snapshot);
    }
  }

  /** Takes (+1) or drops (-1) one more reference to each block of an entry. */
  private hold(e: Entry, by: 1 | -1): void {
    e.ids.forEach((id, s) => {
      if (id < 0) return;
      if (by > 0) this.spaces[s]!.allocator.retain(id);
      else this.spaces[s]!.allocator.free(id);
    });
  }

  /**
   * Records a block that has just been filled: `hash` is the chain hash through it, ids its block in each space
   * (-1 for none). A block already known under this hash is left as is (the sequence keeps its own copy), except
   * that where the entry's block was given back it takes the new one.
   */
  insert(hash: bigint, ids: readonly number[]): void {
    const known = this.entries.get(hash);
    const entry = known ?? { ids: ids.map(() => -1), snapshot: null, charged: [] };
    ids.forEach((id, s) => {
      if (id < 0 || entry.ids[s]! >= 0) return;
      this.spaces[s]!.allocator.retain(id);
      entry.ids[s] = id;
    });
    if (!known) this.entries.set(hash, entry);
  }

  /** Whether the block under `hash` is cached and still lacks a snapshot (so that taking one is worth it). */
  wantsSnapshot(hash: bigint): boolean {
    const e = this.entries.get(hash);
    return this.snapshotBlocks > 0 && e !== undefined && e.snapshot === null;
  }

  /**
   * Gives the block under `hash` the recurrent state right after it, charging its memory to the main space
   * (evicting other entries first when needed); false when the budget cannot hold it or the block is not cached.
   */
  attachSnapshot(hash: bigint, snapshot: Uint8Array): boolean {
    if (!this.wantsSnapshot(hash)) return false;
    // Keep the entry being given the snapshot out of the eviction this may cause.
    const entry = this.entries.get(hash)!;
    this.entries.delete(hash);
    const kept = this.charge(entry, snapshot);
    this.entries.set(hash, entry);
    return kept;
  }

  /** Gives an entry not in the map a snapshot with its charged blocks; false when the budget cannot take them. */
  private charge(e: Entry, snapshot: Uint8Array): boolean {
    if (this.snapshotBlocks === 0) return false;
    const allocator = this.spaces[0]!.allocator;
    if (!allocator.ensureFree(this.snapshotBlocks)) return false;
    for (let i = 0; i < this.snapshotBlocks; i++) e.charged.push(allocator.allocate());
    e.snapshot = snapshot;
    return true;
  }

  /**
   * Gives back at least `needed` blocks of space s that nothing but the cache holds where it can, least recently
   * used first: whole entries (and the blocks charged for their snapshots) for the main space, or only the
   * snapshot of an entry whose block a sequence still holds; only their block for the other spaces. Returns how
   * many it freed.
   */
  evict(s: number, needed: number): number {
    const allocator = this.spaces[s]!.allocator;
    const before = allocator.numFree;
    for (const [h, e] of this.entries) {
      if (allocator.numFree - before >= needed) break;
      if (e.ids[s]! < 0) continue;
      if (allocator.refcount(e.ids[s]!) !== 1) {
        // A block a sequence still holds stays, but its snapshot can go: snapshots never hold a sequence back.
        if (s === 0 && e.snapshot) this.dropSnapshot(e);
        continue;
      }
      if (s === 0) {
        this.tier?.keep(h, e.ids, e.snapshot);
        this.entries.delete(h);
        e.ids.forEach((id, k) => {
          if (id >= 0) this.spaces[k]!.allocator.free(id);
        });
        this.dropSnapshot(e);
      } else {
        // The tier keeps the whole entry while it still has this block: restored, it is usable again.
        this.tier?.keep(h, e.ids, e.snapshot);
        allocator.free(e.ids[s]!);
        e.ids[s] = -1;
      }
    }
    return allocator.numFree - before;
  }

  private dropSnapshot(e: Entry): void {
    const allocator = this.spaces[0]!.allocator;
    for (const id of e.charged) allocator.free(id);
    e.charged.length = 0;
    e.snapshot = null;
  }

  /** Whether the first m entries found still have, in every space, each block a sequence of m blocks holds there. */
  private usable(found: readonly Entry[], m: number): boolean {
    return this.spaces.every((space, s) => found.slice(space.firstHeld(m * this.blockSize), m).every((e) => e.ids[s]! >= 0));
  }
}
