import { describe, expect, test } from "bun:test";
import { BlockAllocator, KvCache, Sequence } from "../../../src/engine/kv/kv_cache.ts";
import { PrefixCache } from "../../../src/engine/kv/prefix_cache.ts";
import { RmlxError } from "../../../src/errors.ts";
import { fakeBackend } from "./fake_backend.ts";

const LAYERS = [
  { kvHeads: 2, headDim: 8, window: 0 },
  { kvHeads: 2, headDim: 8, window: 4 },
];

describe("BlockAllocator", () => {
  test("allocate, retain and free with refcounts", () => {
    const a = new BlockAllocator(3);
    const x = a.allocate();
    const y = a.allocate();
    expect(x).toBe(0);
    expect(y).toBe(1);
    expect(a.numFree).toBe(1);
    a.retain(x);
    expect(a.refcount(x)).toBe(2);
    a.free(x);
    expect(a.refcount(x)).toBe(1);
    expect(a.numFree).toBe(1);
    a.free(x);
    expect(a.refcount(x)).toBe(0);
    expect(a.numFree).toBe(2);
    expect(() => a.free(x)).toThrow(RmlxError);
  });

  test("out of blocks is overloaded; the reclaimer is asked first", () => {
    const a = new BlockAllocator(2);
    const held = [a.allocate(), a.allocate()];
    let err: unknown;
    try {
      a.allocate();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RmlxError);
    expect((err as RmlxError).code).toBe("overloaded");
    a.setReclaimer((needed) => {
      expect(needed).toBe(1);
      a.free(held.pop()!);
      return 1;
    });
    expect(a.allocate()).toBe(1);
  });
});

describe("KvCache", () => {
  test("memory budget -> blocks", () => {
    // per token: 2 layers * 2 (k,v) * 2 heads * 8 dims * 4 bytes = 256; block of 16 tokens = 4096 bytes
    expect(KvCache.bytesPerBlock(LAYERS, 16, "f32")).toBe(4096);
    const c = new KvCache(fakeBackend([]), LAYERS, { memoryBytes: 4096 * 10 + 100 });
    expect(c.numBlocks).toBe(10);
    expect(c.pools.length).toBe(2);
    expect(c.pools[0]!.numBlocks).toBe(10);
    expect(() => new KvCache(fakeBackend([]), LAYERS, { memoryBytes: 100 })).toThrow(RmlxError);
  });

  test("step construction for two sequences of different lengths", () => {
    const c = new KvCache(fakeBackend([]), LAYERS, { numBlocks: 8, blockSize: 4 });
    const a = new Sequence();
    const b = new Sequence();
    c.reserve(a, 6); // blocks 0,1
    c.reserve(b, 2); // block 2
    const e1 = [
      { seq: a, tokens: new Int32Array([10, 11, 12, 13, 14, 15]) },
      { seq: b, tokens: new Int32Array([20, 21]) },
    ];
    const s1 = c.buildStep(e1);
    expect([...s1.tokens]).toEqual([10, 11, 12, 13, 14, 15, 20, 21]);
    expect([...s1.batch.positions]).toEqual([0, 1, 2, 3, 4, 5, 0, 1]);
    expect([...s1.batch.tokenSeq]).toEqual([0, 0, 0, 0, 0, 0, 1, 1]);
    expect([...s1.batch.seqLens]).toEqual([6, 2]);
    expect(s1.batch.maxBlocks).toBe(2);
    expect([...s1.batch.blockTables]).toEqual([0, 1, 2, 0]);
    expect([...s1.slots]).toEqual([0, 1, 2, 3, 4, 5, 8, 9]);
    expect([...s1.lastRows]).toEqual([5, 7]);
    c.advance(e1);
    expect(a.length).toBe(6);

    // decode one token each: a stays in block 1, b in block 2
    c.reserve(a, 1);
    c.reserve(b, 1);
    const s2 = c.buildStep([
      { seq: a, tokens: new Int32Array([16]) },
      { seq: b, tokens: new Int32Array([22]) },
    ]);
    expect([...s2.batch.positions]).toEqual([6, 2]);
    expect([...s2.slots]).toEqual([6, 10]);
    expect([...s2.batch.seqLens]).toEqual([7, 3]);
    expect([...s2.lastRows]).toEqual([0, 1]);
  });

  test("building a step without reserving is an error", () => {
    const c = new KvCache(fakeBackend([]), LAYERS, { numBlocks: 4, blockSize: 4 });
    expect(() => c.buildStep([{ seq: new Sequence(), tokens: new Int32Array([1]) }])).toThrow(RmlxError);
  });

  test("reserve is all or nothing when the cache is full", () => {
    const c = new KvCache(fakeBackend([]), LAYERS, { numBlocks: 3, blockSize: 4 });
    const a = new Sequence();
    c.reserve(a, 8);
    const b = new Sequence();
    expect(() => c.reserve(b, 5)).toThrow(RmlxError);
    expect(b.blocks.length).toBe(0);
    expect(c.allocator.numFree).toBe(1);
    c.release(a);
    expect(c.allocator.numFree).toBe(3);
  });

  test("fork shares blocks; a write into a shared partial block copies it first", () => {
    const copies: [number, number][] = [];
    const c = new KvCache(fakeBackend(copies), LAYERS, { numBlocks: 8, blockSize: 4 });
    const a = new Sequence();
    c.reserve(a, 6);
    c.advance([{ seq: a, tokens: new Int32Array(6) }]);
    const b = c.fork(a);
    expect(c.allocator.refcount(0)).toBe(2);
    expect(c.allocator.refcount(1)).toBe(2);
    expect(c.needs(b, 1)).toEqual([1]);
    c.reserve(b, 1);
    // block 1 (partly filled, shared) copied to a fresh block for b, once per layer pool
    expect(copies).toEqual([
      [1, 2],
      [1, 2],
    ]);
    expect(b.blocks).toEqual([0, 2]);
    expect(c.allocator.refcount(1)).toBe(1);
    expect(c.allocator.refcount(0)).toBe(2);
    // a full shared block is never copied
    const d = new Sequence();
    c.reserve(d, 4);
    c.advance([{ seq: d, tokens: new Int32Array(4) }]);
    const e = c.fork(d);
    copies.length = 0;
    c.reserve(e, 1);
    expect(copies.length).toBe(0);
    expect(e.blocks.length).toBe(2);
  });

  test("advance offers each filled block to a prefix cache once; adopt starts a sequence with a match", () => {
    const c = new KvCache(fakeBackend([]), LAYERS, { numBlocks: 8, blockSize: 4 });
    const prefix = new PrefixCache(c.spaces, c.blockSize);
    const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    const a = new Sequence();
    for (const [from, to] of [
      [0, 6],
      [6, 10],
    ] as const) {
      const e = [{ seq: a, tokens: Int32Array.from(tokens.slice(from, to)) }];
      c.reserve(a, e[0]!.tokens.length);
      c.advance(e, { prefix, tokens: [tokens] });
    }
    expect(prefix.size).toBe(2);
    expect(a.blocks.map((b) => c.allocator.refcount(b))).toEqual([2, 2, 1]);

    const b = new Sequence();
    c.adopt(b, prefix.match([...tokens.slice(0, 8), 42], 2));
    expect(b.length).toBe(8);
    expect(b.blocks).toEqual(a.blocks.slice(0, 2));
    expect(() => c.adopt(b, prefix.match([], 0))).toThrow(RmlxError);
    // b's blocks are offered already: its next filled block is the only new entry
    const e = [{ seq: b, tokens: Int32Array.of(42, 43, 44, 45) }];
    c.reserve(b, 4);
    c.advance(e, { prefix, tokens: [[...tokens.slice(0, 8), 42, 43, 44, 45]] });
    expect(prefix.size).toBe(3);
    c.release(b);
    expect(b.length).toBe(0);
  });

  test("truncate cuts a sequence back and gives back the blocks past it, never into prefix-cache blocks", () => {
    const c = new KvCache(fakeBackend([]), [{ kvHeads: 2, headDim: 8, window: 0 }], { numBlocks: 8, blockSize: 4 });
    const prefix = new PrefixCache(c.spaces, c.blockSize);
    const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const a = new Sequence();
    const e = [{ seq: a, tokens: Int32Array.from(tokens) }];
    c.reserve(a, tokens.length);
    c.advance(e, { prefix, tokens: [tokens] });
    expect(a.blocks.length).toBe(3);
    const free = c.allocator.numFree;
    c.truncate(a, 9);
    expect(a.length).toBe(9);
    expect(a.blocks.length).toBe(3);
    c.truncate(a, 8);
    expect(a.blocks.length).toBe(2);
    expect(c.allocator.numFree).toBe(free + 1);
    // Blocks 0 and 1 are in the prefix cache: cutting into them would change what it hands out.
    expect(() => c.truncate(a, 7)).toThrow(/prefix cache/);
    expect(() => c.truncate(a, 9)).toThrow(RmlxError);
    c.release(a);
  });

  test("truncate keeps a sliding window it can still read, and refuses one already trimmed", () => {
    const c = new KvCache(fakeBackend([]), LAYERS, { numBlocks: 8, blockSize: 4, windowed: true });
    const a = new Sequence();
    const e = [{ seq: a, tokens: Int32Array.from({ length: 14 }, (_, i) => i) }];
    c.reserve(a, 14);
    c.advance(e);
    // Window 4 at length 14: the next query reads keys 11..14, in logical block 2 onwards.
    expect(a.windowStart).toBe(2);
    c.truncate(a, 12);
    expect(a.length).toBe(12);
    expect(() => c.truncate(a, 6)).toThrow(/trimmed sliding window/);
    c.release(a);
  });
});
