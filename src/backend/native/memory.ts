// Native memory for tensors: single allocations (persistent tensors, tensors outside any scope) and the arena that
// holds a scope's temporaries. Addresses are plain numbers (exact for x86-64 user space).
import { toArrayBuffer } from "bun:ffi";
import { RmlxError } from "../../errors.ts";
import { check, native } from "./lib.ts";

const outPtr = new BigUint64Array(1);

/** Allocates nbytes of zero-filled, 64-byte aligned native memory. */
export function nativeAlloc(nbytes: number): number {
  check(native().rmlx_alloc(Math.max(nbytes, 1), outPtr), "alloc");
  return Number(outPtr[0]);
}

export function nativeFree(addr: number): void {
  if (addr) native().rmlx_free(addr as never);
}

/** A writable/readable byte view of native memory (valid while the memory is). */
export function bytesAt(addr: number, nbytes: number): Uint8Array {
  if (nbytes === 0) return new Uint8Array(0);
  return new Uint8Array(toArrayBuffer(addr as never, 0, nbytes));
}

export interface ArenaMark {
  block: number;
  offset: number;
}

const ALIGN = 64;
const MIN_BLOCK = 16 << 20;

/**
 * Bump allocator over chained native blocks. reset() makes all of it reusable; when a scope needed more than one
 * block, the blocks are merged into one of the total size so that the next scope fits in a single block.
 */
export class Arena {
  private blocks: { addr: number; size: number }[] = [];
  private cur = 0;
  private off = 0;

  alloc(nbytes: number): number {
    const need = Math.ceil(Math.max(nbytes, 1) / ALIGN) * ALIGN;
    for (;;) {
      const b = this.blocks[this.cur];
      if (b && this.off + need <= b.size) {
        const addr = b.addr + this.off;
        this.off += need;
        return addr;
      }
      if (b && this.cur + 1 < this.blocks.length) {
        this.cur++;
        this.off = 0;
        continue;
      }
      const size = Math.max(need, MIN_BLOCK, b ? b.size : 0);
      let addr: number;
      try {
        addr = nativeAlloc(size);
      } catch (err) {
        throw new RmlxError("native", `out of memory growing the step arena by ${size} bytes: ${(err as Error).message}`);
      }
      this.blocks.push({ addr, size });
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
  }

  reset(): void {
    if (this.blocks.length > 1) {
      const total = this.blocks.reduce((s, b) => s + b.size, 0);
      for (const b of this.blocks) nativeFree(b.addr);
      this.blocks = [{ addr: nativeAlloc(total), size: total }];
    }
    this.cur = 0;
    this.off = 0;
  }

  /** Bytes held in native blocks. */
  get capacity(): number {
    return this.blocks.reduce((s, b) => s + b.size, 0);
  }
}
