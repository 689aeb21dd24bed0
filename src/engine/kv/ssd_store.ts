// The block files of one namespace (a model, its KV layout and codec) in an SSD tier directory:
//   DIR/index.db                 the SQLite index of every namespace's blocks (ssd_index.ts)
//   DIR/blocks/<ns>/<hash>.kvb   one block record each (ssd_record.ts)
//   DIR/tmp/                     files being written; each is renamed into blocks/ once whole
// Records to write wait in a queue that an async writer drains between engine steps, so a step never waits on the
// disk; a record asked for while still queued is served from the queue. A write that fails (a full disk) stops
// spilling with one warning; what is on disk still serves.
import { mkdirSync, readFileSync, rmSync, unlinkSync } from "node:fs";
import { rename, unlink } from "node:fs/promises";
import { join } from "node:path";
import { SsdIndex } from "./ssd_index.ts";
import { type BlockRecord, decodeRecord, encodeRecord } from "./ssd_record.ts";

export interface SsdStoreOptions {
  dir: string;
  /** Most bytes of block files in the directory, over every namespace. */
  budgetBytes: number;
  /** The namespace: a hash of the model's identity, the KV layout and the codec. */
  ns: bigint;
  /** One line for the server log. */
  warn?: (msg: string) => void;
  /** Writes a whole file; tests replace it with one that fails as a full disk does. */
  writeFile?: (path: string, bytes: Uint8Array) => Promise<unknown>;
  /** Most bytes of records waiting to be written; a spill beyond it is skipped. */
  maxQueuedBytes?: number;
}

export interface SsdStoreStats {
  /** Records written, read back, refused (corrupt, truncated, foreign) and skipped (queue full, over budget, stopped). */
  written: number;
  loaded: number;
  dropped: number;
  skipped: number;
}

const hex = (h: bigint) => BigInt.asUintN(64, h).toString(16).padStart(16, "0");
const DEFAULT_MAX_QUEUED = 512 * 1024 ** 2;
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

  /** Blocks of this namespace on disk or queued. */
  get size(): number {
    return new Set([...this.onDisk, ...this.queue.keys()]).size;
  }

  /** Whether spilling has stopped after a failed write. */
  get spilling(): boolean {
    return !this.stopped;
  }

  /** Queues a block's record for writing; a block already held is only marked as used. */
  put(hash: bigint, rec: BlockRecord): void {
    if (this.onDisk.has(hash)) return this.touch([hash]);
    if (this.stopped || this.queue.has(hash)) return;
    const bytes = encodeRecord(this.opts.ns, hash, rec);
    if (this.queuedBytes + bytes.byteLength > (this.opts.maxQueuedBytes ?? DEFAULT_MAX_QUEUED)) {
      this.stats.skipped++;
      return;
    }
    this.queue.set(hash, bytes);
    this.queuedBytes += bytes.byteLength;
    this.writer ??= this.drain().finally(() => {
      this.writer = null;
    });
  }

  /** The block's record, or null when there is none or its file is unsound (then it is deleted). */
  read(hash: bigint): BlockRecord | null {
    let bytes = this.queue.get(hash);
    if (!bytes) {
      if (!this.onDisk.has(hash)) return null;
      try {
        bytes = readFileSync(this.path(hash));
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

  /** Marks blocks as used now (least recently used blocks leave first when the budget is reached). */
  touch(hashes: readonly bigint[]): void {
    const held = hashes.filter((h) => this.onDisk.has(h));
    if (held.length > 0) this.index.touch(this.nsHex, held.map(hex));
  }

  /** Resolves when every queued record is written (or spilling has stopped). */
  async flush(): Promise<void> {
    while (this.writer) await this.writer;
  }

  async close(): Promise<void> {
    await this.flush();
    this.index.close();
  }

  private path(hash: bigint): string {
    return join(this.blockDir, `${hex(hash)}.kvb`);
  }

  private forget(hash: bigint): void {
    this.onDisk.delete(hash);
    this.index.remove(this.nsHex, hex(hash));
  }

  private async drain(): Promise<void> {
    let n = 0;
    while (this.queue.size > 0 && !this.stopped) {
      const [hash, bytes] = this.queue.entries().next().value as [bigint, Uint8Array];
      await this.write(hash, bytes);
      this.queue.delete(hash);
      this.queuedBytes -= bytes.byteLength;
      if (++n % WRITE_BATCH === 0) await new Promise<void>((r) => setImmediate(r));
    }
    if (this.stopped) {
      this.stats.skipped += this.queue.size;
      this.queue.clear();
      this.queuedBytes = 0;
    }
  }

  /** Writes one record: its index row first, so that a crash leaves at most a row without a file (a miss). */
  private async write(hash: bigint, bytes: Uint8Array): Promise<void> {
    const victims = this.index.makeRoom(bytes.byteLength, this.opts.budgetBytes);
    if (victims === null) {
      this.stats.skipped++;
      return;
    }
    for (const v of victims) {
      if (v.ns === this.nsHex) this.onDisk.delete(BigInt(`0x${v.hash}`));
      rmSync(join(this.opts.dir, "blocks", v.ns, `${v.hash}.kvb`), { force: true });
    }
    const tmp = join(this.tmpDir, `${process.pid}-${++tmpSeq}.tmp`);
    try {
      this.index.put(this.nsHex, hex(hash), bytes.byteLength);
      await this.writeFile(tmp, bytes);
      await rename(tmp, this.path(hash));
      this.onDisk.add(hash);
      this.stats.written++;
    } catch (e) {
      this.index.remove(this.nsHex, hex(hash));
      await unlink(tmp).catch(() => {});
      this.stopped = true;
      const err = e as NodeJS.ErrnoException;
      const why = err.code === "ENOSPC" ? "the disk is full" : (err.message ?? String(e));
      this.warn(`SSD tier: writing to ${this.opts.dir} failed (${why}); no more blocks are spilled, serving goes on`);
    }
  }
}

/** Empties an SSD tier directory's tmp/ of files a process left behind (call it holding the directory's lock). */
export function clearSsdTmp(dir: string): void {
  rmSync(join(dir, "tmp"), { recursive: true, force: true });
  mkdirSync(join(dir, "tmp"), { recursive: true });
}
