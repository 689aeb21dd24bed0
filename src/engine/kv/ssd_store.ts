// The block files of one namespace (a model, its KV layout and codec) in an SSD tier directory:
//   DIR/index.db                 the SQLite index of every namespace's blocks (ssd_index.ts)
//   DIR/blocks/<ns>/<hash>.kvb   one block record each (ssd_record.ts)
//   DIR/tmp/                     files being written; each is renamed into blocks/ once whole
// Records to write wait in a queue that an async writer drains between engine steps, so a step never waits on the
// disk; a record asked for while still queued is served from the queue. A write or index update that fails (a
// full disk) stops spilling with one warning; what is on disk still serves, and no failure reaches the caller.
import { closeSync, fstatSync, mkdirSync, openSync, readSync, rmSync, unlinkSync } from "node:fs";
import { rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import { SsdIndex } from "./ssd_index.ts";
import { type BlockRecord, decodeRecord, draftRecord, type RecordDraft, recordBytes } from "./ssd_record.ts";

export interface SsdStoreOptions {
  dir: string;
  /** Most bytes of block files in the directory, over every namespace. */
  budgetBytes: number;
  /** The namespace: a hash of the model's identity, the KV layout and the codec. */
  ns: bigint;
  /** One line for the server log. */
  warn?: (msg: string) => void;
  /** Most bytes of records waiting to be written (default MAX_QUEUED_BYTES); tests make it small. */
  maxQueuedBytes?: number;
  /** Writes a whole file; tests replace it with one that fails as a full disk does. */
  writeFile?: (path: string, bytes: Uint8Array) => Promise<unknown>;
}

export interface SsdStoreStats {
  /** Records written, read back, refused (corrupt, truncated, foreign) and skipped (queue full, over budget, stopped). */
  written: number;
  loaded: number;
  dropped: number;
  skipped: number;
}

const hex = (h: bigint) => BigInt.asUintN(64, h).toString(16).padStart(16, "0");
/** Most bytes of records waiting to be written; a spill beyond it is skipped (the disk cannot keep up). */
const MAX_QUEUED_BYTES = 512 * 1024 ** 2;
/** Written records' buffers kept for the next spills, so that a steady stream of evictions allocates nothing. */
const SPARE_BUFFERS = 32;
/** Records written between two yields to the event loop. */
const WRITE_BATCH = 8;

let tmpSeq = 0;

export class SsdStore {
  readonly stats: SsdStoreStats = { written: 0, loaded: 0, dropped: 0, skipped: 0 };
  private readonly index: SsdIndex;
  private readonly nsHex: string;
  private readonly blockDir: string;
  private readonly tmpDir: string;
  /** Hashes with a file (as far as this process knows: another namespace's writes may have evicted some). */
  private readonly onDisk = new Set<bigint>();
  /** Encoded records waiting for the writer, in order. */
  private readonly queue = new Map<bigint, Uint8Array>();
  private queuedBytes = 0;
  private writer: Promise<void> | null = null;
  /** Blocks used since the index last heard of it: their stamps are written with the next batch. */
  private readonly touched = new Set<bigint>();
  /** Where files are read: reused, so that a long restored prefix does not allocate per block. */
  private readBuf = new Uint8Array(0);
  private readonly spare: Uint8Array[] = [];
  private stopped = false;
  private warnedCorrupt = false;
  private readonly warn: (msg: string) => void;
  private readonly writeFile: (path: string, bytes: Uint8Array) => Promise<unknown>;

  constructor(private readonly opts: SsdStoreOptions) {
    this.warn = opts.warn ?? ((m) => process.stderr.write(`rmlx: warning: ${m}\n`));
    this.writeFile = opts.writeFile ?? ((p, b) => Bun.write(p, b));
    this.nsHex = hex(opts.ns);
    this.blockDir = join(opts.dir, "blocks", this.nsHex);
    this.tmpDir = join(opts.dir, "tmp");
    mkdirSync(this.blockDir, { recursive: true });
    mkdirSync(this.tmpDir, { recursive: true });
    this.index = new SsdIndex(join(opts.dir, "index.db"));
    for (const h of this.index.hashes(this.nsHex)) this.onDisk.add(BigInt(`0x${h}`));
  }

  /** Whether a record of the block may be had (read() still checks it). */
  has(hash: bigint): boolean {
    return this.queue.has(hash) || this.onDisk.has(hash);
  }

  /** Whether spilling has stopped after a failed write. */
  get spilling(): boolean {
    return !this.stopped;
  }

  /**
   * A record of block `hash` to fill in place and hand to put(): `sizes` bytes per space (0 where none); null when
   * the block is held already (it is marked as used), queued, or spilling has stopped.
   */
  draft(hash: bigint, sizes: readonly number[], extra: Uint8Array): RecordDraft | null {
    if (this.onDisk.has(hash)) {
      this.touch([hash]);
      return null;
    }
    if (this.stopped || this.queue.has(hash)) return null;
    const bytes = recordBytes(sizes, extra.byteLength);
    if (!this.queueTakes(bytes)) {
      this.stats.skipped++;
      return null;
    }
    const i = this.spare.findIndex((b) => b.byteLength === bytes);
    return draftRecord(this.opts.ns, hash, sizes, extra, i < 0 ? undefined : this.spare.splice(i, 1)[0]);
  }

  /** Queues a block's sealed record (draft()'s, or encodeRecord's) for writing. */
  put(hash: bigint, bytes: Uint8Array): void {
    if (this.stopped || this.queue.has(hash) || this.onDisk.has(hash)) return;
    this.queue.set(hash, bytes);
    this.queuedBytes += bytes.byteLength;
    this.startWriter();
  }

  /**
   * The block's record, or null when there is none or its file is unsound (then it is deleted). Its bytes are
   * valid until the next read.
   */
  read(hash: bigint): BlockRecord | null {
    let bytes = this.queue.get(hash);
    if (!bytes) {
      if (!this.onDisk.has(hash)) return null;
      try {
        bytes = this.readFile(this.path(hash));
      } catch {
        // Evicted by another namespace's writes since this one listed it.
        this.forget(hash);
        return null;
      }
    }
    const rec = decodeRecord(bytes, this.opts.ns, hash);
    if (typeof rec === "string") {
      this.drop(hash, rec);
      return null;
    }
    this.stats.loaded++;
    return rec;
  }

  /** Deletes a block whose record cannot be used, with one warning per store. */
  drop(hash: bigint, why: string): void {
    this.stats.dropped++;
    if (!this.warnedCorrupt) {
      this.warnedCorrupt = true;
      this.warn(`SSD tier: dropped block file ${this.path(hash)} (${why}); such blocks are recomputed`);
    }
    this.queue.delete(hash);
    this.forget(hash);
    try {
      unlinkSync(this.path(hash));
    } catch {
      // already gone
    }
  }

  /**
   * Marks blocks as used now (least recently used blocks leave first when the budget is reached); the index hears
   * of it with the writer's next batch, not on the caller's path.
   */
  touch(hashes: readonly bigint[]): void {
    for (const h of hashes) if (this.onDisk.has(h)) this.touched.add(h);
    if (this.touched.size > 0) this.startWriter();
  }

  /**
   * Resolves once a record of these sizes would be queued rather than skipped for a full queue: at once when it
   * fits, else after the writer has drained the queue.
   */
  async roomFor(sizes: readonly number[], extraBytes: number): Promise<void> {
    if (!this.queueTakes(recordBytes(sizes, extraBytes))) await this.flush();
  }

  /**
   * Whether the write queue takes a record of this many bytes now; an empty one takes any, so that no record is
   * too large ever to be written.
   */
  private queueTakes(bytes: number): boolean {
    return this.queuedBytes === 0 || this.queuedBytes + bytes <= (this.opts.maxQueuedBytes ?? MAX_QUEUED_BYTES);
  }

  /** Resolves when every queued record is written (or spilling has stopped). */
  async flush(): Promise<void> {
    while (this.writer) await this.writer;
  }

  async close(): Promise<void> {
    await this.flush();
    this.index.close();
  }

  private startWriter(): void {
    this.writer ??= this.drain().finally(() => {
      this.writer = null;
    });
  }

  /** A whole file into the reused read buffer. */
  private readFile(path: string): Uint8Array {
    const fd = openSync(path, "r");
    try {
      const size = fstatSync(fd).size;
      if (this.readBuf.byteLength < size) this.readBuf = new Uint8Array(Math.max(size, 2 * this.readBuf.byteLength));
      const out = this.readBuf.subarray(0, size);
      let at = 0;
      while (at < size) {
        const n = readSync(fd, out, at, size - at, at);
        if (n === 0) break;
        at += n;
      }
      return out.subarray(0, at);
    } finally {
      closeSync(fd);
    }
  }

  private path(hash: bigint): string {
    return join(this.blockDir, `${hex(hash)}.kvb`);
  }

  private forget(hash: bigint): void {
    this.onDisk.delete(hash);
    this.safely(() => this.index.remove(this.nsHex, hex(hash)));
  }

  /** Runs an index update; a failure stops spilling (see fail) instead of reaching the engine. */
  private safely(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.fail(e);
    }
  }

  /** Stops spilling, with one warning. */
  private fail(e: unknown): void {
    if (this.stopped) return;
    this.stopped = true;
    const err = e as NodeJS.ErrnoException;
    const why = err?.code === "ENOSPC" ? "the disk is full" : (err?.message ?? String(e));
    this.warn(`SSD tier: writing to ${this.opts.dir} failed (${why}); no more blocks are spilled, serving goes on`);
  }

  private async drain(): Promise<void> {
    // Starts after the caller's step: touches of a whole match go to the index as one batch.
    await new Promise<void>((r) => setImmediate(r));
    let n = 0;
    while (!this.stopped && (this.touched.size > 0 || this.queue.size > 0)) {
      if (this.touched.size > 0) {
        const hashes = [...this.touched].map(hex);
        this.touched.clear();
        this.safely(() => this.index.touch(this.nsHex, hashes));
      }
      const next = this.queue.entries().next();
      if (next.done) continue;
      const [hash, bytes] = next.value;
      await this.write(hash, bytes);
      this.queue.delete(hash);
      this.queuedBytes -= bytes.byteLength;
      if (this.spare.length < SPARE_BUFFERS) this.spare.push(bytes);
      if (++n % WRITE_BATCH === 0) await new Promise<void>((r) => setImmediate(r));
    }
    if (this.stopped) {
      this.stats.skipped += this.queue.size;
      this.queue.clear();
      this.queuedBytes = 0;
      this.touched.clear();
    }
  }

  /** Writes one record: its index row first, so that a crash leaves at most a row without a file (a miss). */
  private async write(hash: bigint, bytes: Uint8Array): Promise<void> {
    const tmp = join(this.tmpDir, `${process.pid}-${++tmpSeq}.tmp`);
    try {
      const victims = this.index.makeRoom(bytes.byteLength, this.opts.budgetBytes);
      if (victims === null) {
        this.stats.skipped++;
        return;
      }
      for (const v of victims) {
        if (v.ns === this.nsHex) this.onDisk.delete(BigInt(`0x${v.hash}`));
        rmSync(join(this.opts.dir, "blocks", v.ns, `${v.hash}.kvb`), { force: true });
      }
      this.index.put(this.nsHex, hex(hash), bytes.byteLength);
      await this.writeFile(tmp, bytes);
      await rename(tmp, this.path(hash));
      this.onDisk.add(hash);
      this.stats.written++;
    } catch (e) {
      this.safely(() => this.index.remove(this.nsHex, hex(hash)));
      await unlink(tmp).catch(() => {});
      this.fail(e);
    }
  }
}

/** Empties an SSD tier directory's tmp/ of files a process left behind (call it holding the directory's lock). */
export function clearSsdTmp(dir: string): void {
  rmSync(join(dir, "tmp"), { recursive: true, force: true });
  mkdirSync(join(dir, "tmp"), { recursive: true });
}
