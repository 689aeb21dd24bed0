import { describe, expect, test } from "bun:test";
import { BlockAllocator } from "../../../src/engine/kv/kv_cache.ts";
import { blockHash, PrefixCache, ROOT_HASH } from "../../../src/engine/kv/prefix_cache.ts";

/** One space that keeps every block, as a KV cache's main space does. */
const keepAll = (allocator: BlockAllocator) => [{ allocator, firstHeld: () => 0 }];

describe("prefix cache", () => {
  test("a block's key depends on every token before it, not only its own", () => {
    const a = [1, 2, 3, 4, 5, 6, 7, 8];
    const b = [9, 2, 3, 4, 5, 6, 7, 8];
    const ha = blockHash(blockHash(ROOT_HASH, a, 0, 4), a, 4, 8);
    const hb = blockHash(blockHash(ROOT_HASH, b, 0, 4), b, 4, 8);
    expect(ha).not.toBe(hb);
    expect(blockHash(ROOT_HASH, a, 4, 8)).not.toBe(ha);
    expect(blockHash(blockHash(ROOT_HASH, a, 0, 4), a, 4, 8)).toBe(ha);
  });

  test("match returns the longest cached chain, retained for the caller", () => {
    const alloc = new BlockAllocator(8);
    const cache = new PrefixCache(keepAll(alloc), 2);
    const toks = [1, 2, 3, 4, 5, 6];
    let h = ROOT_HASH;
    const ids: number[] = [];
    for (let b = 0; b < 3; b++) {
      const id = alloc.allocate();
      ids.push(id);
      h = blockHash(h, toks, b * 2, b * 2 + 2);
      cache.insert(h, [id]);
      alloc.free(id); // the sequence is done; only the cache holds it
    }
    expect(alloc.numUsed).toBe(3);
    const m = cache.match([1, 2, 3, 4, 9, 9], 3);
    expect(m.held[0]!.ids).toEqual(ids.slice(0, 2));
    expect(m.held[0]!.ids.map((id) => alloc.refcount(id))).toEqual([2, 2]);
    expect(cache.match(toks, 2).held[0]!.ids).toEqual(ids.slice(0, 2));
    expect(cache.match([7, 7], 1).held[0]!.ids).toEqual([]);
  });

  test("when blocks run out, only cache-held blocks are evicted, least recently used first", () => {
    const alloc = new BlockAllocator(3);
    const cache = new PrefixCache(keepAll(alloc), 1);
    const ids = [alloc.allocate(), alloc.allocate(), alloc.allocate()];
    ids.forEach((id, i) => cache.insert(BigInt(i + 1), [id]));
    alloc.free(ids[0]!);
    alloc.free(ids[2]!);
    // ids[1] is still used by a sequence, so it is skipped although older than ids[2].
    expect(alloc.numFree).toBe(0);
    const fresh = alloc.allocate();
    expect(fresh).toBe(ids[0]!);
    expect(cache.size).toBe(2);
    const again = alloc.allocate();
    expect(again).toBe(ids[2]!);
    expect(() => alloc.allocate()).toThrow(/full/);
  });

  test("with recurrent state a prefix ends only on an entry with a snapshot, charged blocks and all", () => {
    const alloc = new BlockAllocator(8);
    const cache = new PrefixCache(keepAll(alloc), 2, ROOT_HASH, null, 2);
    const toks = [1, 2, 3, 4, 5, 6, 7];
    const hashes: bigint[] = [];
    let h = ROOT_HASH;
    for (let b = 0; b < 3; b++) {
      h = blockHash(h, toks, b * 2, b * 2 + 2);
      hashes.push(h);
      const id = alloc.allocate();
      cache.insert(h, [id]);
      alloc.free(id);
    }
    expect(cache.match(toks, 3).blocks).toBe(0);
    const snap = Uint8Array.of(1, 2, 3);
    expect(cache.wantsSnapshot(hashes[1]!)).toBe(true);
    expect(cache.attachSnapshot(hashes[1]!, snap)).toBe(true);
    expect(cache.wantsSnapshot(hashes[1]!)).toBe(false);
    expect(cache.attachSnapshot(99n, snap)).toBe(false);
    // Three blocks and the two charged for the snapshot.
    expect(alloc.numUsed).toBe(5);
    const m = cache.match(toks, 3);
    expect(m.blocks).toBe(2);
    expect(m.snapshot).toBe(snap);
    for (const id of m.held[0]!.ids) alloc.free(id);
    // Least recently used first: the unmatched third block, the first, then the second with its charged blocks.
    expect(cache.evict(0, 2)).toBe(2);
    expect(alloc.numUsed).toBe(3);
    expect(cache.evict(0, 1)).toBe(3);
    expect(alloc.numUsed).toBe(0);
    expect(cache.match(toks, 3).blocks).toBe(0);
  });

  test("a snapshot whose block a sequence still holds is given back alone under pressure", () => {
    const alloc = new BlockAllocator(4);
    const cache = new PrefixCache(keepAll(alloc), 1, ROOT_HASH, null, 2);
    const id = alloc.allocate();
    cache.insert(5n, [id]);
    expect(cache.attachSnapshot(5n, Uint8Array.of(1))).toBe(true);
    expect(alloc.numFree).toBe(1);
    // The sequence holding the block needs two more: the snapshot goes, the block stays cached.
    expect(alloc.ensureFree(2)).toBe(true);
    expect(cache.size).toBe(1);
    expect(cache.wantsSnapshot(5n)).toBe(true);
    expect(alloc.refcount(id)).toBe(2);
  });

  test("a snapshot the budget cannot hold is not kept", () => {
    const alloc = new BlockAllocator(2);
    const cache = new PrefixCache(keepAll(alloc), 1, ROOT_HASH, null, 2);
    const id = alloc.allocate();
    cache.insert(5n, [id]);
    // The block is still held by its sequence: neither it nor its entry can make room.
    expect(cache.attachSnapshot(5n, Uint8Array.of(1))).toBe(false);
    expect(alloc.numUsed).toBe(1);
  });
});
