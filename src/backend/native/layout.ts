// Shapes and strides as the native kernels take them: broadcast strides, and dims merged so that most ops reach a
// kernel as one or two dims.
export function prod(xs: readonly number[], from = 0, to = xs.length): number {
  let n = 1;
  for (let i = from; i < to; i++) n *= xs[i]!;
  return n;
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Broadcast strides of `shape` against `out` (right-aligned, 0 on broadcast dims). */
export function broadcastStrides(shape: readonly number[], out: readonly number[]): number[] {
  const cs = contiguousStrides(shape);
  const r = new Array<number>(out.length).fill(0);
  const off = out.length - shape.length;
  for (let i = 0; i < shape.length; i++) r[off + i] = shape[i] === 1 && out[off + i] !== 1 ? 0 : cs[i]!;
  return r;
}

export interface Layout {
  shape: number[];
  strides: number[][];
}

/** Drops unit dims and merges dims that are contiguous in every operand. */
export function collapse(shape: readonly number[], strides: number[][]): Layout {
  const s: number[] = [];
  const st: number[][] = strides.map(() => []);
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 1) continue;
    const last = s.length - 1;
    if (last >= 0 && strides.every((x, k) => st[k]![last] === x[i]! * shape[i]!)) {
      s[last]! *= shape[i]!;
      for (let k = 0; k < strides.length; k++) st[k]![last] = strides[k]![i]!;
      continue;
    }
    s.push(shape[i]!);
    for (let k = 0; k < strides.length; k++) st[k]!.push(strides[k]![i]!);
  }
  if (s.length === 0) {
    s.push(1);
    for (const x of st) x.push(1);
  }
  return { shape: s, strides: st };
}

const UNIT = [1];
const ROW_STRIDES = [0, 1];

interface Operand {
  readonly shape: readonly number[];
  readonly size: number;
}

/** The kernel's view of a broadcasting binary op, with the two common cases (same shape; a row vector) direct. */
export function binaryLayout(x: Operand, y: Operand, shape: readonly number[]): Layout {
  const n = x.size === y.size ? x.size : 0;
  if (n > 0 && shape.length >= 1 && sameShape(x.shape, y.shape)) return { shape: [n], strides: [UNIT, UNIT] };
  const last = shape[shape.length - 1]!;
  if (y.size === last && last > 0 && sameShape(x.shape, shape) && y.shape[y.shape.length - 1] === last)
    return { shape: [x.size / last, last], strides: [[last, 1], ROW_STRIDES] };
  return collapse(shape, [broadcastStrides(x.shape, shape), broadcastStrides(y.shape, shape)]);
}
