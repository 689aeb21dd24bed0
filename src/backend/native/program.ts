// Encoding of a recorded step for rmlx_exec: records of doubles [op, nwords, fields...]. The op codes and field
// order must match native/cpu/ops.h and the table at the top of native/cpu/exec.cpp.

export const OP = {
  binary: 1,
  unary: 2,
  glu: 3,
  softmax: 4,
  sum: 5,
  argmax: 6,
  topk: 7,
  rmsNorm: 8,
  layerNorm: 9,
  rope: 10,
  kvWrite: 11,
  pagedAttention: 12,
  sdpa: 13,
  matmul: 14,
  copy: 15,
  astype: 16,
  memcpy: 17,
  ropeTable: 18,
  linear: 20,
  qlinear: 21,
  gatherQlinear: 22,
  gatherLinear: 23,
  dequantRows: 24,
  takeRows: 25,
} as const;

export const BINARY = { add: 0, sub: 1, mul: 2 } as const;
export const UNARY = { scale: 0, sigmoid: 1, silu: 2, geluTanh: 3, softcap: 4 } as const;
export const GLU = { swiglu: 0, geglu: 1 } as const;

/** A growable buffer of records, reused from one eval to the next. */
export class ProgramWriter {
  buf = new Float64Array(4096);
  len = 0;
  private start = 0;

  reset(): void {
    this.len = 0;
  }

  begin(op: number): void {
    this.start = this.len;
    this.push(op);
    this.push(0);
  }

  end(): void {
    this.buf[this.start + 1] = this.len - this.start;
  }

  push(x: number): void {
    if (this.len === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.len++] = x;
  }

  pushAll(xs: readonly number[]): void {
    for (let i = 0; i < xs.length; i++) this.push(xs[i]!);
  }
}
