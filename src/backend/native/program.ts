// The buffer a recorded step is encoded into for rmlx_exec. The records themselves are written by the encoders of
// oplist_gen.ts, derived from the op list (oplist.ts).

/** A growable buffer of records, reused from one eval to the next. */
export class ProgramWriter {
  buf = new Float64Array(4096);
  len = 0;

  reset(): void {
    this.len = 0;
  }

  /** Appends a record of `words` words in all (op and length included) and returns the index of its first field. */
  open(op: number, words: number): number {
    const at = this.len;
    if (at + words > this.buf.length) {
      const next = new Float64Array(Math.max(this.buf.length * 2, at + words));
      next.set(this.buf.subarray(0, at));
      this.buf = next;
    }
    this.buf[at] = op;
    this.buf[at + 1] = words;
    this.len = at + words;
    return at + 2;
  }
}

/** Writes xs into b from index at. */
export function put(b: Float64Array, at: number, xs: readonly number[]): void {
  for (let k = 0; k < xs.length; k++) b[at + k] = xs[k]!;
}
