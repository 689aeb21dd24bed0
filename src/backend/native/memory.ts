// Memory for tensors: single native allocations (persistent tensors: KV pools, model state), JS-owned buffers for
// results that outlive the scopes, and the arena that holds a scope's temporaries. Addresses are plain numbers
// (exact for x86-64 user space).
import { ptr, toArrayBuffer } from "bun:ffi";
import { RmlxError } from "../../errors.ts";
import { check, native } from "./lib.ts";
import { Home, type NTensor } from "./tensor.ts";

const outPtr = new BigUint64Array(1);

/** Allocates nbytes of zero-filled, 64-byte aligned native memory. */
export function nativeAlloc(nbytes: number): number {
  check(native().rmlx_alloc(Math.max(nbytes, 1), outPtr), "alloc");
  return Number(outPtr[0]);
}

export function nativeFree(addr: number): void {
  if (addr) native().rmlx_free(addr as never);
}

/** Makes native memory resident now (rmlx_populate); its contents stay as they are. */
export function nativePopulate(addr: number, nbytes: number): void {
  if (addr && nbytes > 0) check(native().rmlx_populate(addr as never, nbytes), "populate");
}

/** A writable/readable byte view of native memory (valid while the memory is). */
export function bytesAt(addr: number, nbytes: number): Uint8Array {
  if (nbytes === 0) return new Uint8Array(0);
  return new Uint8Array(toArrayBuffer(addr as never, 0, nbytes));
}

/**
 * Gives t memory of its own in a JS ArrayBuffer: the garbage collector sees its size and frees it with the
 * tensor, so results that leave scopes every step cannot pile up waiting for finalizers.
 */
export function heapPlace(t: NTensor): void {
  const buf = new Uint8Array(Math.max(t.nbytes, 1));
  t.hold = buf;
  t.addr = ptr(buf);
  t.home = Home.Heap;
}

/** The bytes of a computed tensor, read in place (JS-owned buffers directly, native memory through a view). */
export function bytesOf(t: NTensor): Uint8Array {
  const r = t.root();
  if (!r.hold) return bytesAt(t.address(), t.nbytes);
  const b = new Uint8Array(r.hold.buffer, r.hold.byteOffset + (t.base ? t.offset : 0), t.nbytes);
  // Wider typed views of it need an aligned offset (caller bytes may sit anywhere in a file mapping).
  return b.byteOffset % 4 === 0 ? b : b.slice();
}

export interface ArenaMark {
  block: number;
  offset: number;
}

const ALIGN = 64;
const MIN_BLOCK = 16 << 20;

/** Scopes over which the arena's peak use is watched before it gives memory back. */
const SHRINK_WINDOW = 32;
/**
 * What the arena keeps however little the last scopes used. A fresh block is resident only where written, so
 * this costs memory only once used; shrinking to the decode steps' size made every request's prefill grow it again
 * (a 0.6B model, 16 and 128-token prompts, 64 tokens each: 16k-23k page faults a request, 8k with this).
 */
export const ARENA_KEEP = 256 << 20;

/**
 * Bump allocator over chained native blocks. reset() makes all of it reusable. A block added when a scope
 * outgrows the arena is as large as all the blocks before it, so a chain stays short, and the blocks are kept as
 * they are: merging them into one fresh block of the total size made the next scope fault every page in again (on
 * a 2-core VM the second 48-token prefill of a 0.6B model took 280 ms instead of 130). When the last
 * SHRINK_WINDOW scopes all used less than half of it (a long prefill is over) and it holds more than ARENA_KEEP, it
 * shrinks to fit them, or to ARENA_KEEP where that is more.
 */
export class Arena {
  private blocks: { addr: number; size: number }[] = [];
  private cur = 0;
  private off = 0;
  /** Bytes of the blocks before `cur`. */
  private before = 0;
  private peak = 0;
  private peaks: number[] = [];

  alloc(nbytes: number): number {
    const need = Math.ceil(Math.max(nbytes, 1) / ALIGN) * ALIGN;
    for (;;) {
      const b = this.blocks[this.cur];
      if (b && this.off + need <= b.size) {
        const addr = b.addr + this.off;
        this.off += need;
        if (this.before + this.off > this.peak) this.peak = this.before + this.off;
        return addr;
      }
      if (b && this.cur + 1 < this.blocks.length) {
        this.before += b.size;
        this.cur++;
        this.off = 0;
        continue;
      }
      const size = Math.max(need, MIN_BLOCK, this.capacity);
      let addr: number;
      try {
        addr = nativeAlloc(size);
      } catch (err) {
        throw new RmlxError("native", `out of memory growing the step arena by ${size} bytes: ${(err as Error).message}`);
      }
      this.blocks.push({ addr, size });
      if (b) this.before += b.size;
      this.cur = this.blocks.length - 1;
      this.off = 0;
    }
  }

  mark(): ArenaMark {
    return { block: this.cur, offset: this.off };
  }

  /** Makes everything allocated since the mark reusable. */
  release(m: ArenaMark): void {
    this.cur = m.block;
    this.off = m.offset;
    this.before = 0;
    for (let i = 0; i < m.block; i++) this.before += this.blocks[i]!.size;
  }

  reset(): void {
    this.peaks.push(this.peak);
    if (this.peaks.length > SHRINK_WINDOW) this.peaks.shift();
    const capacity = this.capacity;
    const fit = Math.max(MIN_BLOCK, Math.ceil((Math.max(...this.peaks) * 1.25) / ALIGN) * ALIGN);
    if (this.peaks.length === SHRINK_WINDOW && capacity > 2 * fit && capacity > ARENA_KEEP) {
      const size = Math.max(fit, ARENA_KEEP);
      for (const b of this.blocks) nativeFree(b.addr);
      this.blocks = [{ addr: nativeAlloc(size), size }];
      this.peaks = [];
    }
    this.cur = 0;
    this.off = 0;
    this.before = 0;
    this.peak = 0;
  }

  /** Bytes held in native blocks. */
  get capacity(): number {
    return this.blocks.reduce((s, b) => s + b.size, 0);
  }
}
