// The paged KV cache of one loaded model: one pool per layer, a refcounted block allocator (prefix sharing and
// copy-on-write build on the refcounts), and the construction of a step's AttentionBatch and write slots for
// sequences that each add some tokens.
//
// Full-attention layers keep every token: their pools share one block id space (the main allocator), and a
// sequence's blocks[k] holds its tokens [k*blockSize, (k+1)*blockSize). With `windowed`, sliding-window layers
// get pools of their own with a second allocator, and a sequence holds there only the blocks its window can
// still read: a block is given back once every key in it is older than the next query's window. Their block
// table has the same logical indices; entries of blocks already given back point at a block the sequence still
// holds, which attention never reads (it starts at the window's first position). A step's new tokens always go
// into blocks that are held until after the step, so no write of a step overwrites a key another token of the
// same step reads. A sequence costs the window pools about (window + the tokens of its step) instead of its
// whole length. A memory budget is split so that the window pools hold what `sizing` asks for but never more
// blocks than the main pools (a sequence never holds more window blocks than main ones): the cache then holds
// every set of sequences a cache without window pools would, and more tokens when the budget allows.
import type { AttentionBatch, Backend, DType, KvPool } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { ForwardStep, LayerCacheSpec, SpaceView } from "../models/model.ts";

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
  /** Main-pool blocks, one per logical block from the start. */
  readonly blocks: number[] = [];
  /** Window-pool blocks of logical blocks windowStart, windowStart + 1, ... (windowed caches only). */
  readonly windowBlocks: number[] = [];
  windowStart = 0;
  /** Tokens whose K/V are written. */
  length = 0;
}

/** How to size the window pools from a memory budget: the most sequences run together and tokens one adds in a step. */
export interface WindowSizing {
  sequences: number;
  stepTokens: number;
}

export interface KvCacheOptions {
  blockSize?: number;
  /** Exactly this many main blocks, or as many as fit in memoryBytes. */
  numBlocks?: number;
  memoryBytes?: number;
  dtype?: DType;
  /**
   * Sliding-window layers keep only their window, in pools of their own (effective when the model has both
   * full and sliding layers). Without `sizing` the window pools have as many blocks as the main pools.
   */
  windowed?: boolean;
  sizing?: WindowSizing;
}

/** One new-tokens entry of a step: the sequence and the tokens it adds. */
export interface StepEntry {
  seq: Sequence;
  tokens: Int32Array;
}

/** A step's tokens and views before the caller says which rows it wants logits for. */
export interface BuiltStep extends Pick<ForwardStep, "tokens" | "batch" | "slots" | "windowed"> {
  /** Row of the last new token of each entry [entries]. */
  lastRows: Int32Array;
}

/** New blocks a reservation takes from each allocator. */
export interface BlockNeed {
  main: number;
  window: number;
}

export class KvCache {
  readonly pools: KvPool[];
  readonly allocator: BlockAllocator;
  /** The window pools' allocator; null when every layer lives in the main pools. */
  readonly windowAllocator: BlockAllocator | null;
  /** Largest sliding window of the layers in the window pools (0 when not windowed). */
  readonly window: number;
  readonly blockSize: number;
  readonly dtype: DType;
  /** Bytes of one main block across the layers of the main pools. */
  readonly bytesPerBlock: number;
  /** Bytes of one window block across the layers of the window pools. */
  readonly windowBytesPerBlock: number;
  private readonly mainPools: KvPool[];
  private readonly windowPools: KvPool[];

  constructor(
    private readonly backend: Backend,
    readonly layers: readonly LayerCacheSpec[],
    opts: KvCacheOptions = {},
  ) {
    this.blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    this.dtype = opts.dtype ?? "f32";
    const windowed = opts.windowed === true && layers.some((l) => l.window > 0) && layers.some((l) => l.window <= 0);
    const inWindow = (l: LayerCacheSpec) => windowed && l.window > 0;
    const mainLayers = layers.filter((l) => !inWindow(l));
    const windowLayers = layers.filter(inWindow);
    this.window = windowLayers.reduce((m, l) => Math.max(m, l.window), 0);
    this.bytesPerBlock = KvCache.bytesPerBlock(mainLayers, this.blockSize, this.dtype);
    this.windowBytesPerBlock = windowed ? KvCache.bytesPerBlock(windowLayers, this.blockSize, this.dtype) : 0;
    const want = windowed && opts.sizing ? this.windowBlocksFor(opts.sizing) : Infinity;
    let numBlocks = opts.numBlocks;
    let windowBlocks = 0;
    if (numBlocks === undefined) {
      if (opts.memoryBytes === undefined) throw new RmlxError("invalid_argument", "KV cache needs numBlocks or memoryBytes");
      const per = this.bytesPerBlock + this.windowBytesPerBlock;
      // Never more window blocks than main ones: a sequence holds at most one window block per main block.
      const both = Math.floor(opts.memoryBytes / per);
      if (want < both) {
        windowBlocks = want;
        numBlocks = Math.floor((opts.memoryBytes - want * this.windowBytesPerBlock) / this.bytesPerBlock);
      } else {
        numBlocks = windowBlocks = both;
      }
      if (numBlocks < 1) {
        throw new RmlxError(
          "invalid_argument",
          `KV memory budget of ${opts.memoryBytes} bytes is below one block (${per} bytes)`,
        );
      }
    } else {
      windowBlocks = Math.min(numBlocks, want);
    }
    this.allocator = new BlockAllocator(numBlocks);
    this.windowAllocator = windowed ? new BlockAllocator(windowBlocks) : null;
    this.pools = layers.map((l) =>
      backend.createKvPool(inWindow(l) ? windowBlocks : numBlocks, this.blockSize, l.kvHeads, l.headDim, this.dtype),
    );
    this.mainPools = this.pools.filter((_, i) => !inWindow(layers[i]!));
    this.windowPools = this.pools.filter((_, i) => inWindow(layers[i]!));
  }

  /** Bytes of K and V for one block across all the given layers. */
  static bytesPerBlock(layers: readonly LayerCacheSpec[], blockSize: number, dtype: DType): number {
    const elem = DTYPE_BYTES[dtype];
    if (!elem) throw new RmlxError("invalid_argument", `KV cache dtype ${dtype} is not a float type`);
    let perToken = 0;
    for (const l of layers) perToken += 2 * l.kvHeads * l.headDim * elem;
    return perToken * blockSize;
  }

  get windowed(): boolean {
    return this.windowAllocator !== null;
  }

  get numBlocks(): number {
    return this.allocator.numBlocks;
  }

  /** Bytes of all pools. */
  get memoryBytes(): number {
    return this.numBlocks * this.bytesPerBlock + (this.windowAllocator?.numBlocks ?? 0) * this.windowBytesPerBlock;
  }

  /** Capacity in tokens if one sequence had every block. */
  get capacityTokens(): number {
    return this.numBlocks * this.blockSize;
  }

  /**
   * The most window blocks one sequence holds during a step of n tokens: the blocks of positions from the first
   * token's window start (length - window + 1) to the last new token.
   */
  windowBlocksPerSequence(n: number): number {
    return Math.floor((this.window + Math.max(1, n) - 2) / this.blockSize) + 2;
  }

  /**
   * Window blocks for `sequences` decoding together while one step prefills up to stepTokens over all of them;
   * one more block each for a copied shared tail or the growth room the scheduler keeps per sequence.
   */
  windowBlocksFor(s: WindowSizing): number {
    return s.sequences * (this.windowBlocksPerSequence(1) + 1) + Math.ceil(s.stepTokens / this.blockSize);
  }

  /** New main blocks seq needs to add n tokens (counting a copy of a shared, partly filled last block). */
  blocksNeeded(seq: Sequence, n: number): number {
    const have = seq.blocks.length;
    const need = Math.ceil((seq.length + n) / this.blockSize);
    let extra = Math.max(0, need - have);
    if (n > 0 && this.sharedTail(this.allocator, seq.blocks, seq.length, 0)) extra++;
    return extra;
  }

  /**
   * New blocks of each allocator that seq needs to add n tokens, of which the window pools hold only the first
   * windowTokens for now (the rest are reserved by later, smaller steps).
   */
  needs(seq: Sequence, n: number, windowTokens = n): BlockNeed {
    return { main: this.blocksNeeded(seq, n), window: this.windowNeeded(seq, Math.min(n, windowTokens)) };
  }

  /** Makes sure each allocator has the needed blocks plus `spare` free; false when impossible. */
  ensureFree(need: BlockNeed, spare = 0): boolean {
    if (!this.allocator.ensureFree(need.main + spare)) return false;
    return this.windowAllocator === null || this.windowAllocator.ensureFree(need.window + spare);
  }

  /** "need ... more blocks" for an overloaded error. */
  describeShortage(need: BlockNeed): string {
    const main = `${need.main} more blocks, ${this.allocator.numFree} free of ${this.numBlocks}`;
    const w = this.windowAllocator;
    return w ? `${main}; ${need.window} more window blocks, ${w.numFree} free of ${w.numBlocks}` : main;
  }

  /**
   * Gives seq room for n more tokens (of which the window pools get the first windowTokens). A partly filled
   * last block that other sequences share is copied first, so writes never touch shared K/V. All or nothing: on
   * RmlxError("overloaded") seq is unchanged.
   */
  reserve(seq: Sequence, n: number, windowTokens = n): void {
    if (n <= 0) return;
    const wn = Math.min(n, windowTokens);
    const need = this.needs(seq, n, wn);
    if (need.main === 0 && need.window === 0) return;
    if (!this.ensureFree(need)) {
      throw new RmlxError("overloaded", `KV cache is full: need ${this.describeShortage(need)}`);
    }
    const bs = this.blockSize;
    this.copySharedTail(this.allocator, this.mainPools, seq.blocks, seq.length, 0);
    const need1 = Math.ceil((seq.length + n) / bs);
    while (seq.blocks.length < need1) seq.blocks.push(this.allocator.allocate());
    const wa = this.windowAllocator;
    if (wa && wn > 0) {
      if (seq.windowBlocks.length === 0) seq.windowStart = this.firstReadBlock(seq.length);
      this.copySharedTail(wa, this.windowPools, seq.windowBlocks, seq.length, seq.windowStart);
      const last = Math.floor((seq.length + wn - 1) / bs);
      while (seq.windowStart + seq.windowBlocks.length <= last) seq.windowBlocks.push(wa.allocate());
    }
  }

  /** A new sequence sharing seq's blocks (each retained once more). */
  fork(seq: Sequence): Sequence {
    const child = new Sequence();
    for (const b of seq.blocks) {
      this.allocator.retain(b);
      child.blocks.push(b);
    }
    for (const b of seq.windowBlocks) {
      this.windowAllocator!.retain(b);
      child.windowBlocks.push(b);
    }
    child.windowStart = seq.windowStart;
    child.length = seq.length;
    return child;
  }

  /** Drops seq's references to its blocks. */
  release(seq: Sequence): void {
    for (const b of seq.blocks) this.allocator.free(b);
    for (const b of seq.windowBlocks) this.windowAllocator!.free(b);
    seq.blocks.length = 0;
    seq.windowBlocks.length = 0;
    seq.windowStart = 0;
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
    const windowed = this.windowed;
    let total = 0;
    let maxBlocks = 1;
    for (const e of entries) {
      total += e.tokens.length;
      const need = Math.ceil((e.seq.length + e.tokens.length) / bs);
      if (e.seq.blocks.length < need) {
        throw new RmlxError("internal", `sequence has ${e.seq.blocks.length} blocks, needs ${need}: reserve first`);
      }
      if (windowed) this.checkWindowHeld(e.seq, e.tokens.length);
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
    const wSlots = windowed ? new Int32Array(total) : null;
    const wTables = windowed ? new Int32Array(ns * maxBlocks) : null;
    let t = 0;
    for (let s = 0; s < ns; s++) {
      const { seq, tokens: toks } = entries[s]!;
      const n = toks.length;
      if (n === 0) throw new RmlxError("internal", "a step entry adds no tokens");
      const nb = Math.ceil((seq.length + n) / bs);
      for (let b = 0; b < nb; b++) blockTables[s * maxBlocks + b] = seq.blocks[b]!;
      if (wTables) {
        const ws = seq.windowStart;
        for (let b = 0; b < nb; b++) wTables[s * maxBlocks + b] = seq.windowBlocks[Math.max(0, b - ws)]!;
      }
      seqLens[s] = seq.length + n;
      tokens.set(toks, t);
      for (let i = 0; i < n; i++, t++) {
        const pos = seq.length + i;
        const blk = (pos / bs) | 0;
        positions[t] = pos;
        tokenSeq[t] = s;
        slots[t] = seq.blocks[blk]! * bs + (pos % bs);
        if (wSlots) wSlots[t] = seq.windowBlocks[blk - seq.windowStart]! * bs + (pos % bs);
      }
      lastRows[s] = t - 1;
    }
    const batch = { blockTables, maxBlocks, seqLens, tokenSeq, positions };
    const view: SpaceView | undefined = wTables && wSlots ? { batch: { ...batch, blockTables: wTables }, slots: wSlots } : undefined;
    return { tokens, slots, lastRows, batch, windowed: view };
  }

  /** The model's view of a built step. */
  forwardStep(built: BuiltStep, logitRows: Int32Array): ForwardStep {
    const { tokens, batch, slots, windowed } = built;
    return { tokens, batch, slots, windowed, pools: this.pools, logitRows };
  }

  /**
   * Records that each entry's tokens are now in the cache. Window blocks no later query reads are given back,
   * unless `trim` is false: then the caller may still look at them and calls trimWindow() afterwards.
   */
  advance(entries: readonly StepEntry[], trim = true): void {
    for (const e of entries) {
      e.seq.length += e.tokens.length;
      if (trim) this.trimWindow(e.seq);
    }
  }

  /** Gives back the window blocks of seq that no later query reads. */
  trimWindow(seq: Sequence): void {
    if (this.windowAllocator === null) return;
    const first = this.firstReadBlock(seq.length);
    let k = 0;
    while (seq.windowStart + k < first && k < seq.windowBlocks.length) this.windowAllocator.free(seq.windowBlocks[k++]!);
    if (k === 0) return;
    seq.windowBlocks.splice(0, k);
    seq.windowStart = seq.windowBlocks.length === 0 ? first : seq.windowStart + k;
  }

  /** Logical block of the first key the next query (at position `length`) reads in a sliding layer. */
  firstReadBlock(length: number): number {
    return Math.floor(Math.max(0, length - this.window + 1) / this.blockSize);
  }

  private windowNeeded(seq: Sequence, n: number): number {
    if (this.windowAllocator === null || n <= 0) return 0;
    const start = seq.windowBlocks.length === 0 ? this.firstReadBlock(seq.length) : seq.windowStart;
    const last = Math.floor((seq.length + n - 1) / this.blockSize);
    let extra = Math.max(0, last + 1 - (start + seq.windowBlocks.length));
    if (this.sharedTail(this.windowAllocator, seq.windowBlocks, seq.length, seq.windowStart)) extra++;
    return extra;
  }

  private checkWindowHeld(seq: Sequence, n: number): void {
    const last = Math.floor((seq.length + n - 1) / this.blockSize);
    const held = seq.windowStart + seq.windowBlocks.length - 1;
    if (seq.windowBlocks.length === 0 || seq.windowStart > this.firstReadBlock(seq.length) || held < last) {
      throw new RmlxError("internal", `sequence holds window blocks ${seq.windowStart}..${held}, the step needs up to ${last}: reserve first`);
    }
  }

  /** blocks[i] holds logical block first + i; whether the partly filled block at `length` is shared. */
  private sharedTail(alloc: BlockAllocator, blocks: readonly number[], length: number, first: number): boolean {
    if (length % this.blockSize === 0) return false;
    const last = blocks[((length / this.blockSize) | 0) - first];
    return last !== undefined && alloc.refcount(last) > 1;
  }

  private copySharedTail(alloc: BlockAllocator, pools: readonly KvPool[], blocks: number[], length: number, first: number): void {
    if (!this.sharedTail(alloc, blocks, length, first)) return;
    const i = ((length / this.blockSize) | 0) - first;
    const src = blocks[i]!;
    const dst = alloc.allocate();
    for (const pool of pools) this.backend.copyBlock(pool, src, dst);
    alloc.free(src);
    blocks[i] = dst;
  }
}
