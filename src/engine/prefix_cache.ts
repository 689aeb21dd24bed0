// Automatic prefix caching: a full KV block is keyed by a hash of every token from the start of the sequence up
// to its end, so two requests that share a prompt prefix share those blocks (through the allocator's refcounts)
// and the second skips their prefill. The cache holds one reference per block it knows; blocks that only the
// cache holds are given back least recently used first when the allocator runs out.
//
// With a windowed KV cache, an entry may also hold the sliding layers' block of the same logical block (taken
// while the sequence that filled it still held it). A prefix of m blocks is usable only if the entries cover
// every sliding-layer block the next query's window reads; window blocks are given back first under pressure
// on the window pools, which leaves their entries usable only as the early part of a longer prefix.
import type { BlockAllocator } from "./kv_cache.ts";

/** Chain hash of one block: the previous block's hash and this block's tokens. */
export function blockHash(prev: bigint, tokens: ArrayLike<number>, start: number, end: number): bigint {
  const buf = new Int32Array(end - start + 2);
  buf[0] = Number(prev & 0xffffffffn) | 0;
  buf[1] = Number((prev >> 32n) & 0xffffffffn) | 0;
  for (let i = start; i < end; i++) buf[i - start + 2] = tokens[i]!;
  return BigInt(Bun.hash.wyhash(new Uint8Array(buf.buffer), 0x726d6c78n));
}

export const ROOT_HASH = 0n;

/** The window pools of a windowed KV cache: their allocator, and where the window of a query at `length` starts. */
export interface WindowPools {
  allocator: BlockAllocator;
  /** Logical block of the first key a query at position `length` reads in a sliding layer. */
  firstReadBlock(length: number): number;
}

export interface PrefixMatch {
  blocks: number[];
  hash: bigint;
  /** Window-pool blocks of logical blocks windowStart .. blocks.length - 1 (windowed caches only). */
  windowBlocks: number[];
  windowStart: number;
}

interface Entry {
  block: number;
  /** Window-pool block, or -1. */
  window: number;
}

export class PrefixCache {
  /** hash -> entry; Map order is the LRU order (oldest first). */
  private readonly entries = new Map<bigint, Entry>();

  constructor(
    private readonly allocator: BlockAllocator,
    readonly blockSize: number,
    private readonly windowPools: WindowPools | null = null,
  ) {
    allocator.setReclaimer((needed) => this.evict(needed));
    windowPools?.allocator.setReclaimer((needed) => this.evictWindow(needed));
  }

  get size(): number {
    return this.entries.size;
  }

  /**
   * The cached blocks that hold a prefix of `tokens`, at most `maxBlocks` of them, each retained once for the
   * caller (who frees them like its own blocks). Returns the block ids and the chain hash after the last one,
   * and for a windowed cache the window blocks the next query reads.
   */
  match(tokens: ArrayLike<number>, maxBlocks: number): PrefixMatch {
    const found: Entry[] = [];
    const hashes: bigint[] = [ROOT_HASH];
    const bs = this.blockSize;
    for (let b = 0; b < maxBlocks && (b + 1) * bs <= tokens.length; b++) {
      const h = blockHash(hashes[b]!, tokens, b * bs, (b + 1) * bs);
      const e = this.entries.get(h);
      if (e === undefined) break;
      found.push(e);
      hashes.push(h);
    }
    let m = found.length;
    let windowStart = 0;
    if (this.windowPools) {
      // The longest prefix whose last blocks still have their sliding-layer K/V.
      for (; m > 0; m--) {
        windowStart = this.windowPools.firstReadBlock(m * bs);
        let covered = true;
        for (let k = windowStart; k < m && covered; k++) covered = found[k]!.window >= 0;
        if (covered) break;
      }
      if (m === 0) windowStart = 0;
    }
    const blocks: number[] = [];
    const windowBlocks: number[] = [];
    for (let k = 0; k < m; k++) {
      const e = found[k]!;
      this.entries.delete(hashes[k + 1]!);
      this.entries.set(hashes[k + 1]!, e);
      this.allocator.retain(e.block);
      blocks.push(e.block);
      if (this.windowPools && k >= windowStart) {
        this.windowPools.allocator.retain(e.window);
        windowBlocks.push(e.window);
      }
    }
    return { blocks, hash: hashes[m]!, windowBlocks, windowStart };
  }

  /**
   * Records a block that has just been filled: `hash` is the chain hash through it, windowBlockId its
   * sliding-layer block (-1 for none). A block already known under this hash is left as is (the sequence keeps
   * its own copy), except that an entry whose window block was given back takes the new one.
   */
  insert(hash: bigint, blockId: number, windowBlockId = -1): void {
    const known = this.entries.get(hash);
    const win = this.windowPools && windowBlockId >= 0 ? windowBlockId : -1;
    if (known) {
      if (known.window < 0 && win >= 0) {
        this.windowPools!.allocator.retain(win);
        known.window = win;
      }
      return;
    }
    this.allocator.retain(blockId);
    if (win >= 0) this.windowPools!.allocator.retain(win);
    this.entries.set(hash, { block: blockId, window: win });
  }

  /** Gives back up to `needed` blocks that nothing but the cache holds, least recently used first. */
  evict(needed: number): number {
    let freed = 0;
    for (const [h, e] of this.entries) {
      if (freed >= needed) break;
      if (this.allocator.refcount(e.block) !== 1) continue;
      this.entries.delete(h);
      this.allocator.free(e.block);
      if (e.window >= 0) this.windowPools!.allocator.free(e.window);
      freed++;
    }
    return freed;
  }

  /** Gives back up to `needed` window blocks that nothing but the cache holds, least recently used first. */
  evictWindow(needed: number): number {
    const wa = this.windowPools!.allocator;
    let freed = 0;
    for (const e of this.entries.values()) {
      if (freed >= needed) break;
      if (e.window < 0 || wa.refcount(e.window) !== 1) continue;
      wa.free(e.window);
      e.window = -1;
      freed++;
    }
    return freed;
  }
}
