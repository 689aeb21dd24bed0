// The paged KV cache of one loaded model: one pool per layer, all indexed by the same block ids, a refcounted
// block allocator (prefix sharing and copy-on-write build on the refcounts), and the construction of a step's
// AttentionBatch and write slots for sequences that each add some tokens.
import type { AttentionBatch, Backend, DType, KvPool } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { LayerCacheSpec } from "../models/model.ts";

export const DEFAULT_BLOCK_SIZE = 16;

const DTYPE_BYTES: Partial<Record<DType, number>> = { f32: 4, f16: 2, bf16: 2 };

/**
 * Fixed pool of block ids with reference counts. A block is free when its count is 0. When the free list is
 * empty, allocate() asks the reclaimer (e.g. a prefix cache holding idle blocks) to give some back first.
 */
export class BlockAllocator {
  private readonly refs: Int32Array;
  private readonly freeStack: Int32Array;
  private freeTop: number;
  private reclaimer: ((needed: number) => number) | null = null;

  constructor(readonly numBlocks: number) {
    if (!Number.isInteger(numBlocks) || numBlocks < 1) {
      throw new RmlxError("invalid_argument", `KV cache needs at least one block (got ${numBlocks})`);
    }
    this.refs = new Int32Array(numBlocks);
    this.freeStack = new Int32Array(numBlocks);
    // Lowest ids are handed out first.
    for (let i = 0; i < numBlocks; i++) this.freeStack[i] = numBlocks - 1 - i;
    this.freeTop = numBlocks;
  }

  get numFree(): number {
    return this.freeTop;
  }

  get numUsed(): number {
    return this.numBlocks - this.freeTop;
  }

  /** fn(needed) should free up to `needed` blocks it holds and return how many it freed. */
  setReclaimer(fn: ((needed: number) => number) | null): void {
    this.reclaimer = fn;
  }

  /** Makes sure `n` blocks are free, reclaiming if needed; false when impossible. */
  ensureFree(n: number): boolean {
    if (this.freeTop >= n) return true;
    if (this.reclaimer) this.reclaimer(n - this.freeTop);
    return this.freeTop >= n;
  }

  /** A fresh block with refcount 1. */
  allocate(): number {
    if (!this.ensureFree(1)) {
      throw new RmlxError("overloaded", `KV cache is full (${this.numBlocks} blocks in use)`);
    }
    const id = this.freeStack[--this.freeTop]!;
    this.refs[id] = 1;
    return id;
  }

  retain(id: number): void {
    this.check(id);
    this.refs[id]!++;
  }

  /** Drops one reference; the block returns to the free list when none remain. */
  free(id: number): void {
    this.check(id);
    if (--this.refs[id]! === 0) this.freeStack[this.freeTop++] = id;
  }

  refcount(id: number): number {
    if (!Number.isInteger(id) || id < 0 || id >= this.numBlocks) {
      throw new RmlxError("internal", `block id ${id} out of range [0, ${this.numBlocks})`);
    }
    return this.refs[id]!;
  }

  private check(id: number): void {
    if (this.refcount(id) <= 0) throw new RmlxError("internal", `block ${id} is not allocated`);
  }
}

/** One sequence's view of the cache: the blocks holding its tokens' K/V, in order, and how many tokens are in. */
export class Sequence {
  readonly blocks: number[] = [];
  /** Tokens whose K/V are written. */
  length = 0;
}

export interface KvCacheOptions {
  blockSize?: number;
  /** Exactly this many blocks, or as many as fit in memoryBytes. */
  numBlocks?: number;
  memoryBytes?: number;
  dtype?: DType;
}

/** One new-tokens entry of a step: the sequence and the tokens it adds. */
export interface StepEntry {
  seq: Sequence;
  tokens: Int32Array;
}

export interface BuiltStep {
  tokens: Int32Array;
  batch: AttentionBatch;
  slots: Int32Array;
  /** Row of the last new token of each entry [entries]. */
  lastRows: Int32Array;
}

export class KvCache {
  readonly pools: KvPool[];
  readonly allocator: BlockAllocator;
  readonly blockSize: number;
  readonly dtype: DType;
  readonly bytesPerBlock: number;

  constructor(
    private readonly backend: Backend,
    readonly layers: readonly LayerCacheSpec[],
    opts: KvCacheOptions = {},
  ) {
    this.blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    this.dtype = opts.dtype ?? "f32";
    this.bytesPerBlock = KvCache.bytesPerBlock(layers, this.blockSize, this.dtype);
    let numBlocks = opts.numBlocks;
    if (numBlocks === undefined) {
      if (opts.memoryBytes === undefined) throw new RmlxError("invalid_argument", "KV cache needs numBlocks or memoryBytes");
      numBlocks = Math.floor(opts.memoryBytes / this.bytesPerBlock);
      if (numBlocks < 1) {
        throw new RmlxError(
          "invalid_argument",
          `KV memory budget of ${opts.memoryBytes} bytes is below one block (${this.bytesPerBlock} bytes)`,
        );
      }
    }
    this.allocator = new BlockAllocator(numBlocks);
    this.pools = layers.map((l) => backend.createKvPool(numBlocks, this.blockSize, l.kvHeads, l.headDim, this.dtype));
  }

  /** Bytes of K and V for one block across all layers. */
  static bytesPerBlock(layers: readonly LayerCacheSpec[], blockSize: number, dtype: DType): number {
    const elem = DTYPE_BYTES[dtype];
    if (!elem) throw new RmlxError("invalid_argument", `KV cache dtype ${dtype} is not a float type`);
    let perToken = 0;
    for (const l of layers) perToken += 2 * l.kvHeads * l.headDim * elem;
    return perToken * blockSize;
  }

  get numBlocks(): number {
    return this.allocator.numBlocks;
  }

  /** Capacity in tokens if one sequence had every block. */
  get capacityTokens(): number {
    return this.numBlocks * this.blockSize;
  }

  /** New blocks seq needs to add n tokens (counting a copy of a shared, partly filled last block). */
  blocksNeeded(seq: Sequence, n: number): number {
    const have = seq.blocks.length;
    const need = Math.ceil((seq.length + n) / this.blockSize);
    let extra = Math.max(0, need - have);
    if (n > 0 && this.sharedTail(seq)) extra++;
    return extra;
  }

  /**
   * Gives seq room for n more tokens. A partly filled last block that other sequences share is copied first,
   * so writes never touch shared K/V. All or nothing: on RmlxError("overloaded") seq is unchanged.
   */
  reserve(seq: Sequence, n: number): void {
    if (n <= 0) return;
    const needed = this.blocksNeeded(seq, n);
    if (needed === 0) return;
    if (!this.allocator.ensureFree(needed)) {
      throw new RmlxError(
        "overloaded",
        `KV cache is full: need ${needed} more blocks, ${this.allocator.numFree} free of ${this.numBlocks}`,
      );
    }
    if (this.sharedTail(seq)) {
      const last = (seq.length / this.blockSize) | 0;
      const src = seq.blocks[last]!;
      const dst = this.allocator.allocate();
      for (const pool of this.pools) this.backend.copyBlock(pool, src, dst);
      this.allocator.free(src);
      seq.blocks[last] = dst;
    }
    const need = Math.ceil((seq.length + n) / this.blockSize);
    while (seq.blocks.length < need) seq.blocks.push(this.allocator.allocate());
  }

  /** A new sequence sharing seq's blocks (each retained once more). */
  fork(seq: Sequence): Sequence {
    const child = new Sequence();
    for (const b of seq.blocks) {
      this.allocator.retain(b);
      child.blocks.push(b);
    }
    child.length = seq.length;
    return child;
  }

  /** Drops seq's references to its blocks. */
  release(seq: Sequence): void {
    for (const b of seq.blocks) this.allocator.free(b);
    seq.blocks.length = 0;
    seq.length = 0;
  }

  /** Frees the device memory of the pools; the cache is unusable afterwards. */
  dispose(): void {
    for (const p of this.pools) {
      this.backend.dispose(p.k);
      this.backend.dispose(p.v);
    }
  }

  /**
   * The AttentionBatch and write slots for entries that each add their tokens after the ones already cached.
   * Blocks must already be reserved. Lengths are not advanced: call advance() once the step has run.
   */
  buildStep(entries: readonly StepEntry[]): BuiltStep {
    const bs = this.blockSize;
    let total = 0;
    let maxBlocks = 1;
    for (const e of entries) {
      total += e.tokens.length;
      const need = Math.ceil((e.seq.length + e.tokens.length) / bs);
      if (e.seq.blocks.length < need) {
        throw new RmlxError("internal", `sequence has ${e.seq.blocks.length} blocks, needs ${need}: reserve first`);
      }
      maxBlocks = Math.max(maxBlocks, need);
    }
    const ns = entries.length;
    const tokens = new Int32Array(total);
    const slots = new Int32Array(total);
    const positions = new Int32Array(total);
    const tokenSeq = new Int32Array(total);
    const seqLens = new Int32Array(ns);
    const blockTables = new Int32Array(ns * maxBlocks);
    const lastRows = new Int32Array(ns);
    let t = 0;
    for (let s = 0; s < ns; s++) {
      const { seq, tokens: toks } = entries[s]!;
      const n = toks.length;
      if (n === 0) throw new RmlxError("internal", "a step entry adds no tokens");
      const nb = Math.ceil((seq.length + n) / bs);
      for (let b = 0; b < nb; b++) blockTables[s * maxBlocks + b] = seq.blocks[b]!;
      seqLens[s] = seq.length + n;
      tokens.set(toks, t);
      for (let i = 0; i < n; i++, t++) {
        const pos = seq.length + i;
        positions[t] = pos;
        tokenSeq[t] = s;
        slots[t] = seq.blocks[(pos / bs) | 0]! * bs + (pos % bs);
      }
      lastRows[s] = t - 1;
    }
    return { tokens, slots, lastRows, batch: { blockTables, maxBlocks, seqLens, tokenSeq, positions } };
  }

  /** Records that each entry's tokens are now in the cache. */
  advance(entries: readonly StepEntry[]): void {
    for (const e of entries) e.seq.length += e.tokens.length;
  }

  private sharedTail(seq: Sequence): boolean {
    if (seq.length % this.blockSize === 0) return false;
    const last = seq.blocks[((seq.length / this.blockSize) | 0)];
    return last !== undefined && this.allocator.refcount(last) > 1;
  }
}
