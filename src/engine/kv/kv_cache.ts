// The paged KV cache of one loaded model: one pool per layer, and the block tables and write slots of a step in
// which each sequence adds some tokens. Three rules:
//  1. A block space is a set of pools sharing one refcounted block allocator: the full-attention layers' main
//     space, and with `windowed` a space of the sliding-window layers. Each method works on every space alike.
//  2. A sequence holds in a space the logical blocks from the first one its next query reads up to its last:
//     from block 0 in the main space, from its window's first block in a sliding space. Table entries before that
//     block point at a block it holds, and attention never reads them.
//  3. A step writes only into blocks its sequence holds alone (a shared, partly filled last block is copied
//     first), and they stay held until the step has run: no write lands on a key any token of the step reads.
import { type AttentionBatch, type Backend, type DType, type KvPool, kvBlockBytes } from "../../backend/backend.ts";
import { StateSlots } from "./state_slots.ts";
import { RmlxError } from "../../errors.ts";
import { availableMemory } from "../../io/meminfo.ts";
import type { ForwardStep, LayerCacheSpec, SpaceView } from "../../models/model.ts";
import { type KvCodec, kvBytesPerToken, kvCodec, kvCodecProblem, kvLayerFormat } from "../../quant/kv_codec.ts";
import { codecRootHash, defaultKvCodec } from "./codec.ts";
import { blockHash, type PrefixCache, type PrefixMatch, ROOT_HASH } from "./prefix_cache.ts";

const DEFAULT_BLOCK_SIZE = 16;

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

/** The blocks a sequence holds in one space: ids[i] holds logical block first + i. */
export interface Held {
  first: number;
  ids: number[];
}

// A sequence's state is keyed by a symbol this module keeps to itself, so that only the cache changes it.
const state = Symbol("sequence state");

/** Where the main space and the sliding-window space sit among a cache's spaces and a sequence's holdings. */
const MAIN = 0;
const WINDOW = 1;

interface SequenceState {
  /** Tokens whose K/V are written. */
  length: number;
  /** Per space, in the cache's order. */
  held: Held[];
  /** Chain hash through the first `offered` blocks, the ones already offered to a prefix cache. */
  hash: bigint;
  offered: number;
  /** The recurrent state of an adopted prefix, written into the state slot the sequence takes next. */
  restore: Uint8Array | null;
}

/** One sequence's view of the cache: the blocks holding its tokens' K/V, and how many tokens are in. */
export class Sequence {
  readonly [state]: SequenceState = { length: 0, held: [], hash: ROOT_HASH, offered: 0, restore: null };

  get length(): number {
    return this[state].length;
  }

  /** Main-space blocks, one per logical block from the start. */
  get blocks(): readonly number[] {
    return this[state].held[MAIN]?.ids ?? [];
  }

  /** Sliding-space blocks of logical blocks windowStart, windowStart + 1, ... (windowed caches only). */
  get windowBlocks(): readonly number[] {
    return this[state].held[WINDOW]?.ids ?? [];
  }

  get windowStart(): number {
    return this[state].held[WINDOW]?.first ?? 0;
  }
}

/** One new-tokens entry of a step: the sequence and the tokens it adds. */
export interface StepEntry {
  seq: Sequence;
  tokens: Int32Array;
}

/**
 * A set of pools sharing one block allocator, and which logical blocks a sequence holds there: all of them
 * (window 0), or those from the first one the next query's window reads.
 */
export class BlockSpace {
  constructor(
    private readonly backend: Backend,
    /** Position among the cache's spaces and in each sequence's holdings. */
    readonly index: number,
    readonly allocator: BlockAllocator,
    readonly pools: readonly KvPool[],
    readonly blockSize: number,
    /** Largest sliding window of its layers in tokens; 0 for full attention. */
    readonly window: number,
    /** Bytes of one block across its pools. */
    readonly bytesPerBlock: number,
  ) {}

  /** Logical block of the first key a query at position `length` reads: where a sequence's held blocks start. */
  firstHeld(length: number): number {
    return this.window === 0 ? 0 : Math.floor(Math.max(0, length - this.window + 1) / this.blockSize);
  }

  /**
   * Block `id` of every pool of the space as bytes (each pool's readKvBlock, in pool order): bytesPerBlock of them,
   * into `out` when given.
   */
  readBlock(id: number, out: Uint8Array = new Uint8Array(this.bytesPerBlock)): Uint8Array {
    if (out.byteLength !== this.bytesPerBlock) {
      throw new RmlxError("internal", `a block of this space has ${this.bytesPerBlock} bytes, not ${out.byteLength}`);
    }
    let at = 0;
    for (const pool of this.pools) {
      const n = kvBlockBytes(pool);
      this.backend.readKvBlock(pool, id, out.subarray(at, at + n));
      at += n;
    }
    return out;
  }

  /** Overwrites block `id` of every pool with bytes that readBlock gave. */
  writeBlock(id: number, bytes: Uint8Array): void {
    if (bytes.byteLength !== this.bytesPerBlock) {
      throw new RmlxError("internal", `a block of this space has ${this.bytesPerBlock} bytes, not ${bytes.byteLength}`);
    }
    let at = 0;
    for (const pool of this.pools) {
      const n = kvBlockBytes(pool);
      this.backend.writeKvBlock(pool, id, bytes.subarray(at, at + n));
      at += n;
    }
  }

  /** What decides the meaning of a block's bytes: window, and each pool's heads, head_dim and format. */
  get layout(): string {
    const pool = (p: KvPool) => `${p.kvHeads}x${p.headDim}:${JSON.stringify(p.format ?? p.k.dtype)}`;
    return `w${this.window}[${this.pools.map(pool).join(",")}]`;
  }

  /**
   * New blocks seq needs to add n tokens, of which the next step writes stepTokens (counting a copy of a shared,
   * partly filled last block).
   */
  needed(seq: Sequence, n: number, stepTokens: number): number {
    const k = this.ahead(n, stepTokens);
    if (k <= 0) return 0;
    const length = seq[state].length;
    const h = this.heldBy(seq);
    const first = h.ids.length === 0 ? this.firstHeld(length) : h.first;
    const last = Math.floor((length + k - 1) / this.blockSize);
    return Math.max(0, last + 1 - (first + h.ids.length)) + (this.sharedTail(h, length) ? 1 : 0);
  }

  /** Takes the blocks needed() counts; the caller has made sure that the allocator has them free. */
  reserve(seq: Sequence, n: number, stepTokens: number): void {
    const k = this.ahead(n, stepTokens);
    if (k <= 0) return;
    const length = seq[state].length;
    const h = this.heldBy(seq);
    if (h.ids.length === 0) h.first = this.firstHeld(length);
    if (this.sharedTail(h, length)) {
      const i = Math.floor(length / this.blockSize) - h.first;
      const copy = this.allocator.allocate();
      for (const pool of this.pools) this.backend.copyBlock(pool, h.ids[i]!, copy);
      this.allocator.free(h.ids[i]!);
      h.ids[i] = copy;
    }
    const last = Math.floor((length + k - 1) / this.blockSize);
    while (h.first + h.ids.length <= last) h.ids.push(this.allocator.allocate());
  }

  /** Makes `to` hold what `from` holds, each block retained once more. */
  share(from: Sequence, to: Sequence): void {
    const src = this.heldBy(from);
    const dst = this.heldBy(to);
    dst.first = src.first;
    for (const b of src.ids) {
      this.allocator.retain(b);
      dst.ids.push(b);
    }
  }

  release(seq: Sequence): void {
    const h = this.heldBy(seq);
    for (const b of h.ids) this.allocator.free(b);
    h.ids.length = 0;
    h.first = 0;
  }

  /** Gives back the blocks of seq that no later query reads. */
  trim(seq: Sequence): void {
    const h = this.heldBy(seq);
    const first = this.firstHeld(seq[state].length);
    let k = 0;
    while (h.first + k < first && k < h.ids.length) this.allocator.free(h.ids[k++]!);
    if (k === 0) return;
    h.ids.splice(0, k);
    h.first = h.ids.length === 0 ? first : h.first + k;
  }

  /**
   * Gives back the blocks of seq past the one holding token `length - 1` (speculative tokens that were not kept).
   * Those blocks were written by seq alone (rule 3) and never offered to a prefix cache, so nothing else reads them.
   */
  dropTail(seq: Sequence, length: number): void {
    const h = this.heldBy(seq);
    const keep = Math.max(0, Math.ceil(length / this.blockSize) - h.first);
    while (h.ids.length > keep) this.allocator.free(h.ids.pop()!);
  }

  /** seq's block of logical block b, or -1 when it holds none there. */
  blockAt(seq: Sequence, b: number): number {
    const h = this.heldBy(seq);
    return h.ids[b - h.first] ?? -1;
  }

  /**
   * The step's block tables and write slots here; positions, lengths and the order of tokens are every space's.
   * Throws unless each sequence holds every block its tokens read or write.
   */
  view(entries: readonly StepEntry[], shared: Omit<AttentionBatch, "blockTables">, total: number): SpaceView {
    const bs = this.blockSize;
    const { maxBlocks, seqLens, tokenSeq, positions } = shared;
    const blockTables = new Int32Array(entries.length * maxBlocks);
    const slots = new Int32Array(total);
    let t = 0;
    for (let s = 0; s < entries.length; s++) {
      const seq = entries[s]!.seq;
      const { first, ids } = this.heldBy(seq);
      const start = seq[state].length;
      const end = seqLens[s]!;
      const last = Math.floor((end - 1) / bs);
      if (ids.length === 0 || first > this.firstHeld(start) || first + ids.length <= last) {
        const held = `${first}..${first + ids.length - 1}`;
        throw new RmlxError("internal", `sequence holds blocks ${held}, the step needs up to ${last}: reserve first`);
      }
      const row = s * maxBlocks;
      for (let b = 0; b < first; b++) blockTables[row + b] = ids[0]!;
      // One set() copies a JS array into the table much faster than a loop does.
      const n = last + 1 - first;
      blockTables.set(ids.length === n ? ids : ids.slice(0, n), row + first);
      for (let pos = start; pos < end; pos++, t++) slots[t] = ids[((pos / bs) | 0) - first]! * bs + (pos % bs);
    }
    return { batch: { blockTables, maxBlocks, seqLens, tokenSeq, positions }, slots };
  }

  /** Of n tokens to come, the ones to hold blocks for now: a sliding space leaves those past the next step to later steps. */
  private ahead(n: number, stepTokens: number): number {
    return this.window === 0 ? n : Math.min(n, stepTokens);
  }

  private heldBy(seq: Sequence): Held {
    return (seq[state].held[this.index] ??= { first: 0, ids: [] });
  }

  /** Whether the partly filled block that the token at `length` goes into is shared. */
  private sharedTail(h: Held, length: number): boolean {
    if (length % this.blockSize === 0) return false;
    const last = h.ids[Math.floor(length / this.blockSize) - h.first];
    return last !== undefined && this.allocator.refcount(last) > 1;
  }
}

/** A layer may read only an earlier layer's K/V that it could have kept itself: same sizes, same window. */
function checkKvSources(layers: readonly LayerCacheSpec[]): void {
  layers.forEach((l, i) => {
    if (l.kvSource === undefined) return;
    const src = layers[l.kvSource];
    if (!Number.isInteger(l.kvSource) || l.kvSource >= i || !src || src.kvSource !== undefined)
      throw new RmlxError("internal", `layer ${i} reads the KV of layer ${l.kvSource}, which is not an earlier layer with a cache of its own`);
    if (src.kvHeads !== l.kvHeads || src.headDim !== l.headDim || src.window !== l.window)
      throw new RmlxError("internal", `layer ${i} reads the KV of layer ${l.kvSource}, whose sizes or window differ`);
  });
}

/** How to size the sliding space from a memory budget: the most sequences run together and tokens one adds in a step. */
export interface WindowSizing {
  sequences: number;
  stepTokens: number;
}

export interface KvCacheOptions {
  blockSize?: number;
  /** Exactly this many main blocks, or as many as fit in memoryBytes. */
  numBlocks?: number;
  memoryBytes?: number;
  /** A float element type: the codec of that name. */
  dtype?: DType;
  /** How pages store K and V (see codec.ts); overrides dtype. Default: defaultKvCodec of the backend. */
  codec?: KvCodec | string;
  /**
   * Sliding-window layers keep only their window, in a space of their own (effective when the model has both
   * full and sliding layers). Without `sizing` that space has as many blocks as the main one.
   */
  windowed?: boolean;
  sizing?: WindowSizing;
  /**
   * Recurrent-state slots of a model with linear-attention layers: the most sequences that run at once (default:
   * sizing's sequences, else 16). Their memory comes out of memoryBytes first.
   */
  stateSlots?: number;
}

const DEFAULT_STATE_SLOTS = 16;

/**
 * Whether `bytes` may be made resident at once: at most half of the memory available (Linux's MemAvailable, else
 * the system's free memory). A budget larger than the machine can spare stays resident only as written, rather
 * than court the out-of-memory killer at load.
 */
function residentAffordable(bytes: number): boolean {
  return 2 * bytes <= availableMemory();
}

/** A step's tokens and views before the caller says which rows it wants logits for. */
export interface BuiltStep extends Pick<ForwardStep, "tokens" | "batch" | "slots" | "windowed" | "recurrent"> {
  /** Row of the last new token of each entry [entries]. */
  lastRows: Int32Array;
}

/** New blocks a reservation takes from each space, in the cache's order. */
export type BlockNeed = readonly number[];

/** A prefix cache to offer a step's filled blocks to, and each entry's whole token list so far. */
export interface PrefixOffer {
  prefix: PrefixCache;
  tokens: readonly ArrayLike<number>[];
  /**
   * Per entry, whether to keep its recurrent state in the prefix cache when the step ends it on a block boundary
   * (models with linear-attention layers; the scheduler asks for it at the ends of prompt chunks).
   */
  snapshot?: readonly boolean[];
}

/**
 * Whether a layer keeps K/V of its own. Layers that read another layer's (kvSource) and linear-attention layers
 * (state) hold no pool memory and are in no block space.
 */
function holdsKv(l: LayerCacheSpec): boolean {
  return l.kvSource === undefined && !l.state;
}

export class KvCache {
  /** One pool per layer, in layer order. */
  readonly pools: KvPool[];
  /** The main space, then the sliding layers' space of a windowed cache. */
  readonly spaces: readonly BlockSpace[];
  /** Largest sliding window of the layers in the sliding space (0 when not windowed). */
  readonly window: number;
  readonly blockSize: number;
  /** How every layer's pages store K and V (sliding-window layers too). */
  readonly codec: KvCodec;
  /** First hash of the prefix-cache chain of this codec's blocks. */
  readonly rootHash: bigint;
  /** Per-sequence recurrent state of linear-attention layers; null when the model has none. */
  readonly states: StateSlots<Sequence> | null;
  /** Where populateStep goes on: a space and its next block; null when done or nothing to do; undefined before it starts. */
  private populated: { space: number; block: number } | null | undefined;

  constructor(
    private readonly backend: Backend,
    readonly layers: readonly LayerCacheSpec[],
    opts: KvCacheOptions = {},
  ) {
    this.blockSize = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    this.codec = kvCodec(opts.codec ?? opts.dtype ?? defaultKvCodec(backend));
    this.rootHash = codecRootHash(this.codec);
    checkKvSources(layers);
    this.states = layers.some((l) => l.state)
      ? new StateSlots<Sequence>(backend, layers, opts.stateSlots ?? opts.sizing?.sequences ?? DEFAULT_STATE_SLOTS)
      : null;
    const budget = opts.memoryBytes === undefined ? undefined : opts.memoryBytes - (this.states?.memoryBytes ?? 0);
    const own = layers.filter(holdsKv);
    for (const l of own) {
      const why = kvCodecProblem(this.codec, l.headDim);
      if (why) throw new RmlxError("invalid_argument", why);
    }
    const windowed = opts.windowed === true && own.some((l) => l.window > 0) && own.some((l) => l.window <= 0);
    const inWindow = (l: LayerCacheSpec) => windowed && l.window > 0;
    const windowLayers = own.filter(inWindow);
    this.window = windowLayers.reduce((m, l) => Math.max(m, l.window), 0);
    const mainBytes = KvCache.bytesPerBlock(own.filter((l) => !inWindow(l)), this.blockSize, this.codec);
    const windowBytes = windowed ? KvCache.bytesPerBlock(windowLayers, this.blockSize, this.codec) : 0;
    // The sliding space gets what `sizing` asks for but never more blocks than the main one (a sequence holds at
    // most one sliding block per main block): the cache then holds every set of sequences that a cache without
    // a sliding space would, and more tokens when the budget allows.
    const want = windowed && opts.sizing ? this.windowBlocksFor(opts.sizing) : Infinity;
    let numBlocks = opts.numBlocks;
    let windowBlocks = 0;
    if (numBlocks === undefined) {
      if (budget === undefined) throw new RmlxError("invalid_argument", "KV cache needs numBlocks or memoryBytes");
      const per = mainBytes + windowBytes;
      const both = Math.floor(Math.max(0, budget) / per);
      if (want < both) {
        windowBlocks = want;
        numBlocks = Math.floor((budget - want * windowBytes) / mainBytes);
      } else {
        numBlocks = windowBlocks = both;
      }
      if (numBlocks < 1) {
        throw new RmlxError(
          "invalid_argument",
          `KV memory budget of ${opts.memoryBytes} bytes is below one block (${per} bytes)` +
            (this.states ? ` after ${this.states.memoryBytes} bytes of recurrent state for ${this.states.numSlots} sequences` : ""),
        );
      }
    } else {
      windowBlocks = Math.min(numBlocks, want);
    }
    const allocator = new BlockAllocator(numBlocks);
    const windowAllocator = windowed ? new BlockAllocator(windowBlocks) : null;
    const pools: KvPool[] = [];
    for (const l of layers) {
      if (l.kvSource !== undefined) pools.push(pools[l.kvSource]!);
      // A linear-attention layer's entry is a one-slot placeholder that no step reads or writes.
      else if (l.state) pools.push(backend.createKvPool(1, 1, 1, 1, "f32"));
      else {
        const blocks = inWindow(l) ? windowBlocks : numBlocks;
        pools.push(backend.createKvPool(blocks, this.blockSize, l.kvHeads, l.headDim, kvLayerFormat(this.codec, l.headDim)));
      }
    }
    this.pools = pools;
    const poolsWhere = (sliding: boolean) =>
      this.pools.filter((_, i) => holdsKv(layers[i]!) && inWindow(layers[i]!) === sliding);
    const spaces = [new BlockSpace(backend, MAIN, allocator, poolsWhere(false), this.blockSize, 0, mainBytes)];
    if (windowAllocator) {
      spaces.push(new BlockSpace(backend, WINDOW, windowAllocator, poolsWhere(true), this.blockSize, this.window, windowBytes));
    }
    this.spaces = spaces;
  }

  /** What decides the meaning of a block's bytes in each space: block size, and each space's layout. */
  get layout(): string {
    return `bs${this.blockSize}|${this.spaces.map((sp) => sp.layout).join("|")}`;
  }

  /** Bytes of K and V for one block across all the given layers. */
  static bytesPerBlock(layers: readonly LayerCacheSpec[], blockSize: number, codec: KvCodec | DType): number {
    return kvBytesPerToken(kvCodec(codec), layers) * blockSize;
  }

  /** Main-space blocks a snapshot of one sequence's recurrent state is charged in a prefix cache; 0 without state. */
  get snapshotBlocks(): number {
    if (!this.states) return 0;
    return Math.ceil(this.states.snapshotBytes / Math.max(1, this.spaces[MAIN]!.bytesPerBlock));
  }

  /** Bytes of K and V per token over all layers (a sliding layer's tokens leave its window, but count here). */
  get bytesPerToken(): number {
    return kvBytesPerToken(this.codec, this.layers.filter(holdsKv));
  }

  /** Bytes of the blocks in use now (held by sequences or the prefix cache). */
  get usedBytes(): number {
    return this.spaces.reduce((sum, sp) => sum + sp.allocator.numUsed * sp.bytesPerBlock, 0);
  }

  get windowed(): boolean {
    return this.spaces.length > WINDOW;
  }

  get allocator(): BlockAllocator {
    return this.spaces[MAIN]!.allocator;
  }

  /** The sliding space's allocator; null when every layer lives in the main space. */
  get windowAllocator(): BlockAllocator | null {
    return this.spaces[WINDOW]?.allocator ?? null;
  }

  get numBlocks(): number {
    return this.allocator.numBlocks;
  }

  /** Bytes of all pools and recurrent state. */
  get memoryBytes(): number {
    return this.spaces.reduce((sum, sp) => sum + sp.allocator.numBlocks * sp.bytesPerBlock, this.states?.memoryBytes ?? 0);
  }

  /** Capacity in tokens if one sequence had every block. */
  get capacityTokens(): number {
    return this.numBlocks * this.blockSize;
  }

  /**
   * The most sliding blocks one sequence holds during a step of n tokens: the blocks of positions from the first
   * token's window start (length - window + 1) to the last new token.
   */
  windowBlocksPerSequence(n: number): number {
    return Math.floor((this.window + Math.max(1, n) - 2) / this.blockSize) + 2;
  }

  /**
   * Sliding blocks for `sequences` decoding together while one step prefills up to stepTokens over all of them;
   * one more block each for a copied shared tail or the growth room the scheduler keeps per sequence.
   */
  windowBlocksFor(s: WindowSizing): number {
    return s.sequences * (this.windowBlocksPerSequence(1) + 1) + Math.ceil(s.stepTokens / this.blockSize);
  }

  /**
   * New blocks of each space that seq needs to add n tokens, of which the next step writes stepTokens: a sliding
   * space holds blocks for those only (the rest are reserved by later, smaller steps).
   */
  needs(seq: Sequence, n: number, stepTokens = n): BlockNeed {
    return this.spaces.map((sp) => sp.needed(seq, n, stepTokens));
  }

  /** Makes sure each space has the needed blocks plus `spare` free; false when impossible. */
  ensureFree(need: BlockNeed, spare = 0): boolean {
    return this.spaces.every((sp, i) => sp.allocator.ensureFree(need[i]! + spare));
  }

  /**
   * Gives seq room for n more tokens, of which the next step writes stepTokens (see needs()). All or nothing: on
   * RmlxError("overloaded") seq is unchanged.
   */
  reserve(seq: Sequence, n: number, stepTokens = n): void {
    if (n > 0 && this.states) {
      const st = seq[state];
      this.states.take(seq, st.restore ?? undefined);
      st.restore = null;
    }
    if (n <= 0 || this.holdsRoom(seq, n, stepTokens)) return;
    const need = this.needs(seq, n, stepTokens);
    if (!this.ensureFree(need)) {
      throw new RmlxError("overloaded", `KV cache is full: need ${this.describeShortage(need)}`);
    }
    for (const sp of this.spaces) sp.reserve(seq, n, stepTokens);
  }

  /** Room for every entry's tokens, all or nothing: on RmlxError("overloaded") no sequence has changed. */
  reserveStep(entries: readonly StepEntry[]): void {
    const need = this.spaces.map(() => 0);
    for (const e of entries) {
      this.needs(e.seq, e.tokens.length).forEach((k, i) => {
        need[i]! += k;
      });
    }
    if (!this.ensureFree(need)) {
      throw new RmlxError("overloaded", `KV cache is full: the step needs ${this.describeShortage(need)}`);
    }
    if (this.states && this.states.needed(entries.map((e) => e.seq)) > this.states.numFree) {
      throw new RmlxError("overloaded", `recurrent state is full: ${this.states.numFree} of ${this.states.numSlots} sequence slots free`);
    }
    for (const e of entries) this.reserve(e.seq, e.tokens.length);
  }

  /**
   * Starts an empty seq with a prefix cache's match: its blocks (retained for seq), their tokens and hash, and with
   * recurrent state the snapshot its state slot starts from.
   */
  adopt(seq: Sequence, m: PrefixMatch): void {
    const st = seq[state];
    if (st.length > 0 || st.held.some((h) => h.ids.length > 0)) {
      throw new RmlxError("internal", "only an empty sequence can start with a cached prefix");
    }
    if (this.states && m.blocks > 0 && !m.snapshot) {
      throw new RmlxError("internal", "a model with recurrent state can start only from a prefix with a state snapshot");
    }
    st.held = m.held;
    st.restore = m.blocks > 0 ? (m.snapshot ?? null) : null;
    st.length = m.blocks * this.blockSize;
    st.hash = m.hash;
    st.offered = m.blocks;
  }

  /** A new sequence sharing seq's blocks (each retained once more). */
  fork(seq: Sequence): Sequence {
    const child = new Sequence();
    for (const sp of this.spaces) sp.share(seq, child);
    this.states?.fork(seq, child);
    const from = seq[state];
    const to = child[state];
    to.length = from.length;
    to.hash = from.hash;
    to.offered = from.offered;
    to.restore = from.restore;
    return child;
  }

  /** Drops seq's references to its blocks; it is empty afterwards. */
  release(seq: Sequence): void {
    for (const sp of this.spaces) sp.release(seq);
    this.states?.release(seq);
    const st = seq[state];
    st.length = 0;
    st.hash = ROOT_HASH;
    st.offered = 0;
    st.restore = null;
  }

  /**
   * Cuts seq back to its first `length` tokens (the K/V of rejected speculative tokens), giving back the blocks
   * past them. Blocks offered to a prefix cache are never cut, nor a sliding window already trimmed past the new
   * end; a model with recurrent state cannot be cut back at all (only its blocks past its length given back).
   */
  truncate(seq: Sequence, length: number): void {
    const st = seq[state];
    if (!Number.isInteger(length) || length < 0 || length > st.length) {
      throw new RmlxError("internal", `cannot truncate a sequence of ${st.length} tokens to ${length}`);
    }
    if (this.states && length < st.length) throw new RmlxError("internal", "a model with recurrent state cannot be cut back");
    if (length < st.offered * this.blockSize) throw new RmlxError("internal", "cannot cut into blocks shared with the prefix cache");
    for (const sp of this.spaces) {
      if (sp.window > 0 && sp.blockAt(seq, sp.firstHeld(length)) < 0 && length > 0) {
        throw new RmlxError("internal", "cannot cut back past a trimmed sliding window");
      }
    }
    st.length = length;
    for (const sp of this.spaces) sp.dropTail(seq, length);
  }

  /**
   * Makes the next blocks' memory resident (Backend.populateKvPool), about `maxBytes` of them across the pools,
   * lowest block ids first as the allocators hand them out; true while blocks are left. A long-lived cache, the
   * server's, calls it while idle, as llama.cpp clears its cache at start: otherwise its steps pay the page faults
   * while its pools grow into untouched memory. Resident memory is then the pools' size; pools that would take more
   * than half of the memory available, and backends whose pools are resident when made, have nothing to do.
   */
  populateStep(maxBytes: number): boolean {
    if (this.populated === undefined) {
      const bytes = [...new Set(this.pools)].reduce((sum, p) => sum + p.numBlocks * kvBlockBytes(p), 0);
      this.populated = this.backend.populateKvPool && residentAffordable(bytes) ? { space: 0, block: 0 } : null;
    }
    const at = this.populated;
    if (!at) return false;
    const space = this.spaces[at.space]!;
    const pools = [...new Set(space.pools)];
    const end = Math.min(space.allocator.numBlocks, at.block + Math.max(1, Math.floor(maxBytes / space.bytesPerBlock)));
    for (const p of pools) this.backend.populateKvPool!(p, at.block, end);
    at.block = end;
    if (end < space.allocator.numBlocks) return true;
    at.space++;
    at.block = 0;
    if (at.space < this.spaces.length) return true;
    this.populated = null;
    return false;
  }

  /** Frees the device memory of the pools; the cache is unusable afterwards. */
  dispose(): void {
    for (const p of new Set(this.pools)) for (const t of [p.k, p.v, p.kScales, p.kBiases, p.vScales, p.vBiases]) if (t) this.backend.dispose(t);
    this.states?.dispose();
  }

  /**
   * The block tables and write slots for entries that each add their tokens after the ones already cached.
   * Blocks must already be reserved. Lengths are not advanced: call advance() once the step has run.
   */
  buildStep(entries: readonly StepEntry[]): BuiltStep {
    let total = 0;
    let maxBlocks = 1;
    for (const e of entries) {
      const n = e.tokens.length;
      if (n === 0) throw new RmlxError("internal", "a step entry adds no tokens");
      total += n;
      maxBlocks = Math.max(maxBlocks, Math.ceil((e.seq.length + n) / this.blockSize));
    }
    const ns = entries.length;
    const tokens = new Int32Array(total);
    const positions = new Int32Array(total);
    const tokenSeq = new Int32Array(total);
    const seqLens = new Int32Array(ns);
    const lastRows = new Int32Array(ns);
    let t = 0;
    for (let s = 0; s < ns; s++) {
      const { seq, tokens: toks } = entries[s]!;
      const start = seq.length;
      seqLens[s] = start + toks.length;
      tokens.set(toks, t);
      for (let pos = start; pos < seqLens[s]!; pos++, t++) {
        positions[t] = pos;
        tokenSeq[t] = s;
      }
      lastRows[s] = t - 1;
    }
    const shared = { maxBlocks, seqLens, tokenSeq, positions };
    const views = this.spaces.map((sp) => sp.view(entries, shared, total));
    const recurrent = this.states?.view(entries.map((e) => ({ seq: e.seq, tokens: e.tokens, fresh: e.seq.length === 0 })));
    return { tokens, lastRows, batch: views[MAIN]!.batch, slots: views[MAIN]!.slots, windowed: views[WINDOW], recurrent };
  }

  /** The model's view of a built step. */
  forwardStep(built: BuiltStep, logitRows: Int32Array): ForwardStep {
    const { tokens, batch, slots, windowed, recurrent } = built;
    const step: ForwardStep = { tokens, batch, slots, windowed, pools: this.pools, logitRows };
    if (recurrent && this.states) {
      step.recurrent = recurrent;
      step.states = this.states.pools;
    }
    return step;
  }

  /**
   * Records that each entry's tokens are now in the cache and gives back the blocks no later query reads. With
   * `offer`, the blocks the step filled go to the prefix cache first, so that it keeps their sliding-layer K/V,
   * and with recurrent state the state at the end of the step where offer.snapshot asks for it.
   */
  advance(entries: readonly StepEntry[], offer?: PrefixOffer): void {
    for (let i = 0; i < entries.length; i++) {
      const { seq, tokens } = entries[i]!;
      seq[state].length += tokens.length;
      if (offer) {
        this.offerFilled(seq, offer.tokens[i]!, offer.prefix);
        if (offer.snapshot?.[i]) this.offerSnapshot(seq, offer.prefix);
      }
      for (const sp of this.spaces) sp.trim(seq);
    }
  }

  /** Gives the prefix cache seq's recurrent state when seq ends on the boundary of a block it has just offered. */
  private offerSnapshot(seq: Sequence, prefix: PrefixCache): void {
    const st = seq[state];
    if (!this.states || st.length === 0 || st.offered * this.blockSize !== st.length) return;
    if (prefix.wantsSnapshot(st.hash)) prefix.attachSnapshot(st.hash, this.states.exportState(seq));
  }

  /** Offers the blocks seq has filled since its last offer, with their block in every space. */
  private offerFilled(seq: Sequence, tokens: ArrayLike<number>, prefix: PrefixCache): void {
    const st = seq[state];
    const bs = this.blockSize;
    while ((st.offered + 1) * bs <= st.length) {
      const b = st.offered++;
      st.hash = blockHash(b === 0 ? this.rootHash : st.hash, tokens, b * bs, (b + 1) * bs);
      prefix.insert(st.hash, this.spaces.map((sp) => sp.blockAt(seq, b)));
    }
  }

  /** Whether seq needs no new block anywhere for n tokens: most decode steps, which thus allocate nothing here. */
  private holdsRoom(seq: Sequence, n: number, stepTokens: number): boolean {
    for (const sp of this.spaces) if (sp.needed(seq, n, stepTokens) > 0) return false;
    return true;
  }

  /** "need ... more blocks" for an overloaded error. */
  private describeShortage(need: BlockNeed): string {
    const one = (sp: BlockSpace, i: number) =>
      `${need[i]} more ${sp.window > 0 ? "window " : ""}blocks, ${sp.allocator.numFree} free of ${sp.allocator.numBlocks}`;
    return this.spaces.map(one).join("; ");
  }
}
