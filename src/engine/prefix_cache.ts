// Automatic prefix caching: a full KV block is keyed by a hash of every token from the start of the sequence up
// to its end, so two requests that share a prompt prefix share those blocks (through the allocator's refcounts)
// and the second skips their prefill. The cache holds one reference per block it knows; blocks that only the
// cache holds are given back least recently used first when the allocator runs out.
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

export class PrefixCache {
  /** hash -> block id; Map order is the LRU order (oldest first). */
  private readonly blocks = new Map<bigint, number>();

  constructor(
    private readonly allocator: BlockAllocator,
    readonly blockSize: number,
  ) {
    allocator.setReclaimer((needed) => this.evict(needed));
  }

  get size(): number {
    return this.blocks.size;
  }

  /**
   * The cached blocks that hold a prefix of `tokens`, at most `maxBlocks` of them, each retained once for the
   * caller (who frees them like its own blocks). Returns the block ids and the chain hash after the last one.
   */
  match(tokens: ArrayLike<number>, maxBlocks: number): { blocks: number[]; hash: bigint } {
    const out: number[] = [];
    let hash = ROOT_HASH;
    const bs = this.blockSize;
    for (let b = 0; b < maxBlocks && (b + 1) * bs <= tokens.length; b++) {
      const h = blockHash(hash, tokens, b * bs, (b + 1) * bs);
      const id = this.blocks.get(h);
      if (id === undefined) break;
      this.blocks.delete(h);
      this.blocks.set(h, id);
      this.allocator.retain(id);
      out.push(id);
      hash = h;
    }
    return { blocks: out, hash };
  }

  /**
   * Records a block that has just been filled: `hash` is the chain hash through it. A block already known under
   * this hash is left as is (the sequence keeps its own copy); otherwise the cache takes a reference.
   */
  insert(hash: bigint, blockId: number): void {
    if (this.blocks.has(hash)) return;
    this.allocator.retain(blockId);
    this.blocks.set(hash, blockId);
  }

  /** Gives back up to `needed` blocks that nothing but the cache holds, least recently used first. */
  evict(needed: number): number {
    let freed = 0;
    for (const [h, id] of this.blocks) {
      if (freed >= needed) break;
      if (this.allocator.refcount(id) !== 1) continue;
      this.blocks.delete(h);
      this.allocator.free(id);
      freed++;
    }
    return freed;
  }
}
