// The native Backend: ops record nodes; eval() orders the nodes a result needs, places their outputs (scope arena
// or single allocations), encodes them as one program and runs it with one rmlx_exec call.
import { readFileSync } from "node:fs";
import { ptr } from "bun:ffi";
import type {
  AttentionBatch,
  AttentionOptions,
  Backend,
  DType,
  KvPool,
  QuantMode,
  QuantizedWeight,
  RopeOptions,
  Tensor,
  Weight,
} from "../backend.ts";
import { isQuantized } from "../backend.ts";
import { checkShape, collectTensors, fmt, invalid, normAxis } from "../args.ts";
import { RmlxError } from "../../errors.ts";
import { decodeFloats } from "../../quant/dtype.ts";
import { DT, QMODE, check, native } from "./lib.ts";
import { Arena, type ArenaMark, bytesAt, nativeAlloc, nativeFree } from "./memory.ts";
import { BINARY, GLU, OP, ProgramWriter, UNARY } from "./program.ts";
import { DTYPE_BYTES, Home, NTensor, Node, contiguousStrides, type Emit } from "./tensor.ts";

const FLOAT_DTYPES: readonly DType[] = ["f32", "f16", "bf16"];
const NO_ADDRS: number[] = [];
const NO_INPUTS: NTensor[] = [];
const NO_NODES: Node[] = [];
const NO_HOST: (Int32Array | Float32Array)[] = [];
// Host arrays are copies owned by their node, alive until the program has run; the collector does not move them.
const hostPtr = (h: Int32Array | Float32Array): number => (h.length ? ptr(h) : 0);

function prod(xs: readonly number[], from = 0, to = xs.length): number {
  let n = 1;
  for (let i = from; i < to; i++) n *= xs[i]!;
  return n;
}

/** Broadcast strides of `shape` against `out` (right-aligned, 0 on broadcast dims). */
function broadcastStrides(shape: readonly number[], out: readonly number[]): number[] {
  const cs = contiguousStrides(shape);
  const r = new Array<number>(out.length).fill(0);
  const off = out.length - shape.length;
  for (let i = 0; i < shape.length; i++) r[off + i] = shape[i] === 1 && out[off + i] !== 1 ? 0 : cs[i]!;
  return r;
}

function broadcastShapes(a: readonly number[], b: readonly number[], what: string): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) invalid(`${what}: shapes ${fmt(a)} and ${fmt(b)} do not broadcast`);
    out[i] = x === 1 ? y : x;
  }
  return out;
}

/** Drops unit dims and merges dims that are contiguous in every operand, so most ops reach the kernel as 1-2 dims. */
function collapse(shape: readonly number[], strides: number[][]): { shape: number[]; strides: number[][] } {
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

function sameInts(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

const UNIT = [1];
const ROW_STRIDES = [0, 1];

/** The kernel's view of a broadcasting binary op, with the two common cases (same shape; a row vector) direct. */
function binaryLayout(x: NTensor, y: NTensor, shape: readonly number[]): { shape: number[]; strides: number[][] } {
  const n = x.size === y.size ? x.size : 0;
  if (n > 0 && shape.length >= 1 && sameShape(x.shape, y.shape)) return { shape: [n], strides: [UNIT, UNIT] };
  const last = shape[shape.length - 1]!;
  if (y.size === last && last > 0 && sameShape(x.shape, shape) && y.shape[y.shape.length - 1] === last)
    return { shape: [x.size / last, last], strides: [[last, 1], ROW_STRIDES] };
  return collapse(shape, [broadcastStrides(x.shape, shape), broadcastStrides(y.shape, shape)]);
}

interface NKvPool extends KvPool {
  readonly k: NTensor;
  readonly v: NTensor;
  /** The last recorded write to this pool and the reads recorded since, so that writes and reads stay ordered. */
  lastWrite: Node | null;
  readers: Node[];
}

/**
 * Gives t memory of its own in a JS ArrayBuffer: the garbage collector sees its size and frees it with the
 * tensor, so results that leave scopes every step cannot pile up waiting for finalizers.
 */
function heapPlace(t: NTensor): void {
  const buf = new Uint8Array(Math.max(t.nbytes, 1));
  t.hold = buf;
  t.addr = ptr(buf);
  t.home = Home.Heap;
}

function cpuName(): string {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    if (m) return m[1]!.trim();
  } catch {
    // Not Linux or no procfs: the ISA alone describes the device.
  }
  return "CPU";
}

export class NativeBackend implements Backend {
  readonly name = "native";
  readonly device: string;

  private readonly arena = new Arena();
  private readonly prog = new ProgramWriter();
  private depth = 0;
  private scopeTensors: NTensor[] = [];
  /** Arena tensors in placement (= arena) order since the outermost scope began. */
  private placed: NTensor[] = [];
  private effects: Node[] = [];
  private pass = 0;
  private freqCache = new Map<string, Float32Array>();
  private lastFreqs: { base: number; dims: number; freqs: Float32Array } | null = null;
  private ropeTables: { positions: Int32Array; freqs: Float32Array; scale: number; mscale: number; table: NTensor }[] = [];

  constructor() {
    const lib = native();
    this.device = `${cpuName()} (${String(lib.rmlx_isa())}, ${lib.rmlx_num_threads()} threads)`;
  }

  // ---------------------------------------------------------------- tensors and memory

  private newTensor(shape: readonly number[], dtype: DType): NTensor {
    const t = new NTensor(shape, dtype);
    if (this.depth > 0) {
      t.scoped = true;
      this.scopeTensors.push(t);
    }
    return t;
  }

  private arg(x: Tensor, what: string): NTensor {
    if (!(x instanceof NTensor)) invalid(`${what}: not a tensor of the native backend`);
    if (x.home === Home.Dead || x.root().home === Home.Dead)
      invalid(`${what}: tensor ${fmt(x.shape)} is gone (used after its scope ended, disposed, or its eval failed)`);
    return x;
  }

  private floatArg(x: Tensor, what: string): NTensor {
    const t = this.arg(x, what);
    return t.dtype === "f32" ? t : (this.astype(t, "f32") as NTensor);
  }

  /** Gives a computed root tensor its memory now (leaves: fromArray, zeros). */
  private place(t: NTensor): void {
    if (t.scoped) {
      t.addr = this.arena.alloc(t.nbytes);
      t.home = Home.Arena;
      this.placed.push(t);
    } else {
      heapPlace(t);
    }
  }

  private record(inputs: NTensor[], outputs: NTensor[], emit: Emit, host?: (Int32Array | Float32Array)[], deps?: Node[]): Node {
    const n = new Node(inputs, outputs, emit, host, deps);
    for (const o of outputs) o.node = n;
    return n;
  }

  private view(x: NTensor, shape: readonly number[], byteOffset: number): NTensor {
    const t = this.newTensor(shape, x.dtype);
    const r = x.root();
    t.base = r;
    t.offset = (x.base ? x.offset : 0) + byteOffset;
    return t;
  }

  fromArray(data: Float32Array | Int32Array | Uint32Array | Uint16Array | Uint8Array, shape: readonly number[], dtype: DType): Tensor {
    checkShape(shape, "fromArray");
    const t = this.newTensor(shape, dtype);
    if (data.byteLength !== t.nbytes)
      invalid(`fromArray: ${data.byteLength} bytes for ${dtype} ${fmt(shape)} (${t.nbytes} bytes)`);
    this.place(t);
    (t.hold ?? bytesAt(t.addr, t.nbytes)).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    return t;
  }

  fromBytes(bytes: Uint8Array, shape: readonly number[], dtype: DType): Tensor {
    checkShape(shape, "fromBytes");
    const t = new NTensor(shape, dtype);
    if (bytes.byteLength !== t.nbytes)
      invalid(`fromBytes: ${bytes.byteLength} bytes for ${dtype} ${fmt(shape)} (${t.nbytes} bytes)`);
    t.addr = bytes.byteLength ? ptr(bytes) : 0;
    t.home = Home.External;
    t.hold = bytes;
    return t;
  }

  zeros(shape: readonly number[], dtype: DType): Tensor {
    checkShape(shape, "zeros");
    const t = this.newTensor(shape, dtype);
    this.place(t);
    if (t.scoped) bytesAt(t.addr, t.nbytes).fill(0);
    return t;
  }

  allocPersistent(shape: readonly number[], dtype: DType): Tensor {
    checkShape(shape, "allocPersistent");
    const t = new NTensor(shape, dtype);
    t.addr = nativeAlloc(t.nbytes);
    t.home = Home.Persistent;
    return t;
  }

  dispose(x: Tensor): void {
    // Arena memory goes with its scope, and a tensor not yet computed may still feed others: only tensors that own
    // memory of their own are released here.
    if (!(x instanceof NTensor) || x.base) return;
    if (x.home !== Home.Heap && x.home !== Home.Persistent && x.home !== Home.External) return;
    if (x.home === Home.Persistent) nativeFree(x.addr);
    x.home = Home.Dead;
    x.addr = 0;
    x.hold = null;
  }

  // ---------------------------------------------------------------- evaluation

  eval(...tensors: Tensor[]): void {
    const roots: Node[] = [];
    for (const x of tensors) {
      const t = this.arg(x, "eval").root();
      if (t.node && !t.node.done) roots.push(t.node);
    }
    for (const e of this.effects) if (!e.done) roots.push(e);
    if (roots.length === 0) return;
    this.run(roots);
    this.effects = this.effects.filter((e) => !e.done);
  }

  private run(roots: Node[]): void {
    const pass = ++this.pass;
    const order: Node[] = [];
    for (const r of roots) if (r.mark !== pass && !r.done) this.collect(r, pass, order);

    for (let i = 0; i < order.length; i++) {
      const outs = order[i]!.outputs;
      for (let j = 0; j < outs.length; j++) if (outs[j]!.home === Home.Pending) this.place(outs[j]!);
    }

    const w = this.prog;
    w.reset();
    for (let i = 0; i < order.length; i++) {
      const n = order[i]!;
      n.emit(w, n.host.length === 0 ? NO_ADDRS : n.host.map(hostPtr));
    }
    if (w.len > 0) {
      const status = native().rmlx_exec(w.buf, w.len);
      if (status !== 0) {
        // A failed program is dropped whole (its results become unusable) so that it cannot fail every later eval.
        for (const n of order) {
          n.done = true;
          for (const o of n.outputs) {
            o.hold = null;
            o.home = Home.Dead;
            o.addr = 0;
            o.node = null;
          }
        }
        this.effects = this.effects.filter((e) => !e.done);
        check(status, "eval");
      }
    }
    for (let i = 0; i < order.length; i++) {
      const n = order[i]!;
      n.done = true;
      for (let j = 0; j < n.outputs.length; j++) n.outputs[j]!.node = null;
      n.inputs = NO_INPUTS;
      n.deps = NO_NODES;
      n.host = NO_HOST;
    }
  }

  private collect(start: Node, pass: number, order: Node[]): void {
    const stack: Node[] = [start];
    const pos: number[] = [0];
    start.mark = pass;
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      let i = pos[pos.length - 1]!;
      const nIn = top.inputs.length;
      const total = nIn + top.deps.length;
      let next: Node | null = null;
      while (i < total) {
        let c: Node | null;
        if (i < nIn) {
          const r = top.inputs[i]!.root();
          if (r.home === Home.Dead) throw new RmlxError("invalid_argument", `eval: an input ${fmt(r.shape)} is gone (its scope ended)`);
          c = r.node;
        } else {
          c = top.deps[i - nIn]!;
          // A read recorded in a scope that ended unevaluated never happens: nothing to wait for.
          if (c.outputs.length > 0 && c.outputs[0]!.home === Home.Dead) c = null;
        }
        i++;
        if (c && !c.done && c.mark !== pass) {
          next = c;
          break;
        }
      }
      pos[pos.length - 1] = i;
      if (next) {
        next.mark = pass;
        stack.push(next);
        pos.push(0);
      } else {
        stack.pop();
        pos.pop();
        order.push(top);
      }
    }
  }

  /** The bytes of a computed tensor, read in place (JS-owned buffers directly, native memory through a view). */
  private bytesOf(t: NTensor): Uint8Array {
    const r = t.root();
    if (!r.hold) return bytesAt(t.address(), t.nbytes);
    const b = new Uint8Array(r.hold.buffer, r.hold.byteOffset + (t.base ? t.offset : 0), t.nbytes);
    // Wider typed views of it need an aligned offset (caller bytes may sit anywhere in a file mapping).
    return b.byteOffset % 4 === 0 ? b : b.slice();
  }

  toFloat32(x: Tensor): Float32Array {
    const t = this.arg(x, "toFloat32");
    this.eval(t);
    const b = this.bytesOf(t);
    switch (t.dtype) {
      case "f32":
        return new Float32Array(b.slice().buffer);
      case "f16":
      case "bf16":
        return decodeFloats(t.dtype === "f16" ? "F16" : "BF16", b.subarray(0, t.size * 2));
      case "i32":
        return Float32Array.from(new Int32Array(b.buffer, b.byteOffset, t.size));
      case "u32":
        return Float32Array.from(new Uint32Array(b.buffer, b.byteOffset, t.size));
      case "u8":
        return Float32Array.from(b);
    }
  }

  toInt32(x: Tensor): Int32Array {
    const t = this.arg(x, "toInt32");
    if (t.dtype !== "i32" && t.dtype !== "u32" && t.dtype !== "u8") invalid(`toInt32: tensor is ${t.dtype}`);
    this.eval(t);
    const b = this.bytesOf(t);
    if (t.dtype === "u8") return Int32Array.from(b);
    return new Int32Array(b.slice().buffer);
  }

  scope<T>(fn: () => T): T {
    const mark = { arena: this.arena.mark(), tensors: this.scopeTensors.length, placed: this.placed.length };
    this.depth++;
    let result: T;
    try {
      result = fn();
    } catch (err) {
      this.depth--;
      if (this.depth === 0) this.endScope([]);
      else this.endInner([], mark);
      throw err;
    }
    this.depth--;
    if (this.depth === 0) this.endScope(collectTensors(result, NTensor));
    else this.endInner(collectTensors(result, NTensor), mark);
    return result;
  }

  /**
   * Ends a nested scope: computes what it returns, frees what it created, and packs the arena memory that must
   * survive (its results, and outer tensors computed meanwhile) down to where the scope began, so that a model
   * running each layer in its own scope holds about one layer's temporaries at a time.
   */
  private endInner(escapes: NTensor[], mark: { arena: ArenaMark; tensors: number; placed: number }): void {
    const inner = this.scopeTensors;
    const keep = new Set<NTensor>();
    for (const t of escapes) {
      if (t.home === Home.Dead || t.root().home === Home.Dead) continue;
      keep.add(t);
      keep.add(t.root());
    }
    let failed = true;
    try {
      if (keep.size > 0 || this.effects.length > 0) this.eval(...keep);
      failed = false;
    } finally {
      const kept: NTensor[] = [];
      for (let i = mark.tensors; i < inner.length; i++) {
        const t = inner[i]!;
        if (!failed && keep.has(t)) kept.push(t);
        else {
          t.home = Home.Dead;
          t.node = null;
          t.addr = 0;
        }
      }
      inner.length = mark.tensors;
      for (const t of kept) inner.push(t);
      this.effects = this.effects.filter((e) => !e.done && e.inputs.every((i) => i.root().home !== Home.Dead));
      // Placement order is arena order, and packing the survivors from the mark never moves one past its old
      // place, so moving them in order (memmove) cannot clobber a survivor not yet moved.
      const movers: NTensor[] = [];
      for (let i = mark.placed; i < this.placed.length; i++) {
        const t = this.placed[i]!;
        if (t.home === Home.Arena && !t.base) movers.push(t);
      }
      this.placed.length = mark.placed;
      this.arena.release(mark.arena);
      const w = this.prog;
      w.reset();
      for (const t of movers) {
        const addr = this.arena.alloc(t.nbytes);
        this.placed.push(t);
        if (addr === t.addr) continue;
        w.begin(OP.memcpy);
        w.push(addr);
        w.push(t.addr);
        w.push(t.nbytes);
        w.end();
        t.addr = addr;
      }
      if (w.len > 0) check(native().rmlx_exec(w.buf, w.len), "scope");
    }
  }

  /** Runs what is still pending that must survive, moves returned tensors out of the arena, frees the rest. */
  private endScope(escapes: NTensor[]): void {
    const keep = new Set<NTensor>();
    const copies: NTensor[] = [];
    try {
      for (const t of escapes) {
        if (keep.has(t) || t.home === Home.Dead || t.root().home === Home.Dead) continue;
        keep.add(t);
        const r = t.root();
        if (!r.scoped) continue;
        if (t === r && r.home === Home.Pending) r.scoped = false;
        else copies.push(t);
      }
      this.eval(...keep);
      if (copies.length > 0) {
        const w = this.prog;
        w.reset();
        for (const t of copies) {
          const src = t.address();
          t.base = null;
          t.offset = 0;
          t.scoped = false;
          heapPlace(t);
          w.begin(OP.memcpy);
          w.push(t.addr);
          w.push(src);
          w.push(t.nbytes);
          w.end();
        }
        check(native().rmlx_exec(w.buf, w.len), "scope");
      }
    } finally {
      for (const t of this.scopeTensors) {
        if (keep.has(t)) continue;
        t.home = Home.Dead;
        t.node = null;
        t.addr = 0;
      }
      this.scopeTensors = [];
      this.placed = [];
      this.effects = this.effects.filter((e) => !e.done && e.inputs.every((i) => i.root().home !== Home.Dead));
      this.arena.reset();
    }
  }

  /** Bytes held by the step arena (for tests and metrics). */
  get arenaBytes(): number {
    return this.arena.capacity;
  }

  // ---------------------------------------------------------------- shape

  reshape(x: Tensor, shape: readonly number[]): Tensor {
    const t = this.arg(x, "reshape");
    const s = shape.slice();
    let infer = -1;
    let known = 1;
    for (let i = 0; i < s.length; i++) {
      const d = s[i]!;
      if (d === -1 && infer < 0) infer = i;
      else if (!Number.isInteger(d) || d < 0) invalid(`reshape: bad shape ${fmt(shape)}`);
      else known *= d;
    }
    if (infer >= 0) {
      if (known === 0 || t.size % known !== 0) invalid(`reshape: cannot reshape ${fmt(t.shape)} to ${fmt(shape)}`);
      s[infer] = t.size / known;
    } else if (known !== t.size) {
      invalid(`reshape: cannot reshape ${fmt(t.shape)} (${t.size} elements) to ${fmt(shape)}`);
    }
    return this.view(t, s, 0);
  }

  transpose(x: Tensor, axes: readonly number[]): Tensor {
    const t = this.arg(x, "transpose");
    const nd = t.shape.length;
    if (axes.length !== nd) invalid(`transpose: ${axes.length} axes for rank ${nd}`);
    const seen = new Set<number>();
    const ax = axes.map((a) => normAxis(a, nd, "transpose"));
    for (const a of ax) {
      if (seen.has(a)) invalid(`transpose: axes ${fmt(axes)} repeat an axis`);
      seen.add(a);
    }
    const shape = ax.map((a) => t.shape[a]!);
    const xs = contiguousStrides(t.shape);
    return this.stridedCopy(t, shape, ax.map((a) => xs[a]!), 0);
  }

  /** Materialises `shape` elements of x read with the given strides (elements) from byte offset srcOffset. */
  private stridedCopy(x: NTensor, shape: number[], strides: number[], srcOffset: number): NTensor {
    const out = this.newTensor(shape, x.dtype);
    const c = collapse(shape, [strides, contiguousStrides(shape)]);
    const esize = DTYPE_BYTES[x.dtype];
    this.record([x], [out], (w) => {
      if (out.size === 0) return;
      w.begin(OP.copy);
      w.push(out.address());
      w.push(x.address() + srcOffset);
      w.push(esize);
      w.push(c.shape.length);
      w.pushAll(c.shape);
      w.pushAll(c.strides[0]!);
      w.pushAll(c.strides[1]!);
      w.end();
    });
    return out;
  }

  slice(x: Tensor, axis: number, start: number, end: number): Tensor {
    const t = this.arg(x, "slice");
    const nd = t.shape.length;
    const a = normAxis(axis, nd, "slice");
    const n = t.shape[a]!;
    const clamp = (v: number) => Math.min(n, Math.max(0, v < 0 ? v + n : v));
    if (!Number.isInteger(start) || !Number.isInteger(end)) invalid(`slice: bounds ${start}:${end} are not integers`);
    const s = clamp(start);
    const e = Math.max(s, clamp(end));
    const shape = [...t.shape];
    shape[a] = e - s;
    const strides = contiguousStrides(t.shape);
    const offset = s * strides[a]! * DTYPE_BYTES[t.dtype];
    if (prod(t.shape, 0, a) === 1) return this.view(t, shape, offset);
    return this.stridedCopy(t, shape, strides, offset);
  }

  concatenate(xs: readonly Tensor[], axis: number): Tensor {
    if (xs.length === 0) invalid("concatenate: no tensors");
    const ts = xs.map((x) => this.arg(x, "concatenate"));
    const first = ts[0]!;
    const nd = first.shape.length;
    const a = normAxis(axis, nd, "concatenate");
    let total = 0;
    for (const t of ts) {
      if (t.dtype !== first.dtype) invalid(`concatenate: dtypes ${first.dtype} and ${t.dtype} differ`);
      if (t.shape.length !== nd || t.shape.some((d, i) => i !== a && d !== first.shape[i]))
        invalid(`concatenate: shapes ${ts.map((u) => fmt(u.shape)).join(", ")} differ off axis ${a}`);
      total += t.shape[a]!;
    }
    const shape = [...first.shape];
    shape[a] = total;
    const out = this.newTensor(shape, first.dtype);
    const os = contiguousStrides(shape);
    const esize = DTYPE_BYTES[first.dtype];
    const parts = ts.map((t, i) => {
      const before = ts.slice(0, i).reduce((s, u) => s + u.shape[a]!, 0);
      return { t, off: before * os[a]! * esize, c: collapse(t.shape, [contiguousStrides(t.shape), os]) };
    });
    this.record(ts, [out], (w) => {
      for (const p of parts) {
        if (p.t.size === 0) continue;
        w.begin(OP.copy);
        w.push(out.address() + p.off);
        w.push(p.t.address());
        w.push(esize);
        w.push(p.c.shape.length);
        w.pushAll(p.c.shape);
        w.pushAll(p.c.strides[0]!);
        w.pushAll(p.c.strides[1]!);
        w.end();
      }
    });
    return out;
  }

  astype(x: Tensor, dtype: DType): Tensor {
    const t = this.arg(x, "astype");
    if (t.dtype === dtype) return t;
    if (dtype === "u32" || dtype === "u8") throw new RmlxError("unsupported", `astype: to ${dtype} is not supported`);
    const out = this.newTensor(t.shape, dtype);
    this.record([t], [out], (w) => {
      if (out.size === 0) return;
      w.begin(OP.astype);
      w.push(out.address());
      w.push(t.address());
      w.push(t.size);
      w.push(DT[t.dtype]);
      w.push(DT[dtype]);
      w.end();
    });
    return out;
  }

  // ---------------------------------------------------------------- products

  matmul(a: Tensor, b: Tensor): Tensor {
    const x = this.floatArg(a, "matmul");
    const y = this.floatArg(b, "matmul");
    if (x.shape.length < 2 || y.shape.length < 2) invalid(`matmul: operands ${fmt(x.shape)} and ${fmt(y.shape)} need rank >= 2`);
    const M = x.shape[x.shape.length - 2]!;
    const K = x.shape[x.shape.length - 1]!;
    const K2 = y.shape[y.shape.length - 2]!;
    const N = y.shape[y.shape.length - 1]!;
    if (K !== K2) invalid(`matmul: ${fmt(x.shape)} @ ${fmt(y.shape)}: inner dims ${K} and ${K2} differ`);
    const ba = x.shape.slice(0, -2);
    const bb = y.shape.slice(0, -2);
    const bshape = broadcastShapes(ba, bb, "matmul");
    const sa = broadcastStrides(ba, bshape).map((s) => s * M * K);
    const sb = broadcastStrides(bb, bshape).map((s) => s * K * N);
    const out = this.newTensor([...bshape, M, N], "f32");
    this.record([x, y], [out], (w) => {
      if (out.size === 0) return;
      w.begin(OP.matmul);
      w.push(out.address());
      w.push(x.address());
      w.push(y.address());
      w.push(M);
      w.push(K);
      w.push(N);
      w.push(bshape.length);
      w.pushAll(bshape);
      w.pushAll(sa);
      w.pushAll(sb);
      w.end();
    });
    return out;
  }

  linear(x: Tensor, w: Weight, bias?: Tensor): Tensor {
    if (isQuantized(w)) return this.qlinear(x, w, bias);
    const xt = this.floatArg(x, "linear");
    const wt = this.arg(w, "linear weight");
    if (wt.shape.length !== 2 || !FLOAT_DTYPES.includes(wt.dtype))
      invalid(`linear: weight must be a float [out, in] matrix, got ${wt.dtype} ${fmt(wt.shape)}`);
    const [N, K] = wt.shape as [number, number];
    const xK = xt.shape[xt.shape.length - 1];
    if (xK !== K) invalid(`linear: input ${fmt(xt.shape)} does not match weight ${fmt(wt.shape)}`);
    let bt: NTensor | null = bias ? this.arg(bias, "linear bias") : null;
    if (bt && bt.size !== N) invalid(`linear: bias ${fmt(bt.shape)} for ${N} outputs`);
    let separateBias: NTensor | null = null;
    if (bt && bt.dtype !== wt.dtype) {
      separateBias = bt;
      bt = null;
    }
    const M = xt.size / K;
    const oshape = xt.shape.slice();
    oshape[oshape.length - 1] = N;
    const out = this.newTensor(oshape, "f32");
    const inputs = bt ? [xt, wt, bt] : [xt, wt];
    const biasT = bt;
    this.record(inputs, [out], (p) => {
      if (out.size === 0) return;
      p.begin(OP.linear);
      p.push(out.address());
      p.push(xt.address());
      p.push(M);
      p.push(K);
      p.push(N);
      p.push(wt.address());
      p.push(DT[wt.dtype]);
      p.push(biasT ? biasT.address() : 0);
      p.end();
    });
    return separateBias ? this.add(out, separateBias) : out;
  }

  private quantArgs(w: QuantizedWeight, what: string) {
    const wt = this.arg(w.w, `${what} weight`);
    const sc = this.arg(w.scales, `${what} scales`);
    const bi = w.biases ? this.arg(w.biases, `${what} biases`) : null;
    if (wt.dtype !== "u32") invalid(`${what}: packed weight must be u32, got ${wt.dtype}`);
    if (!(w.mode in QMODE)) throw new RmlxError("unsupported", `${what}: quantization mode ${w.mode}`);
    if (w.mode === "affine" && !bi) invalid(`${what}: affine quantization needs biases`);
    const nd = wt.shape.length;
    if (nd < 2) invalid(`${what}: packed weight ${fmt(wt.shape)} needs rank >= 2`);
    const K = (wt.shape[nd - 1]! * 32) / w.bits;
    const N = wt.shape[nd - 2]!;
    if (!Number.isInteger(K) || K % w.groupSize !== 0)
      invalid(`${what}: packed weight ${fmt(wt.shape)} with ${w.bits} bits and group ${w.groupSize}`);
    const groups = K / w.groupSize;
    if (sc.shape[sc.shape.length - 1] !== groups || sc.size * w.groupSize !== wt.size * (32 / w.bits))
      invalid(`${what}: scales ${fmt(sc.shape)} do not match weight ${fmt(wt.shape)} (group ${w.groupSize})`);
    if (bi && bi.size !== sc.size) invalid(`${what}: biases ${fmt(bi.shape)} do not match scales ${fmt(sc.shape)}`);
    const sbdt = w.mode === "affine" ? DT[sc.dtype] : DT.u8;
    const mode = QMODE[w.mode];
    /** The weight's arguments, in the order every quantized entry point of rmlx.h takes them. */
    const pushWeight = (p: ProgramWriter) => {
      p.push(wt.address());
      p.push(sc.address());
      p.push(bi ? bi.address() : 0);
      p.push(sbdt);
      p.push(mode);
      p.push(w.bits);
      p.push(w.groupSize);
      p.push(w.globalScale ?? 0);
    };
    return { wt, sc, bi, K, N, pushWeight, inputs: bi ? [wt, sc, bi] : [wt, sc] };
  }

  private qlinear(x: Tensor, w: QuantizedWeight, bias?: Tensor): Tensor {
    const xt = this.floatArg(x, "quantizedMatmul");
    const q = this.quantArgs(w, "quantizedMatmul");
    if (q.wt.shape.length !== 2) invalid(`quantizedMatmul: weight ${fmt(q.wt.shape)} must be [out, in/pack]`);
    const xK = xt.shape[xt.shape.length - 1];
    if (xK !== q.K) invalid(`quantizedMatmul: input ${fmt(xt.shape)} does not match weight of ${q.K} inputs`);
    const bt = bias ? this.arg(bias, "linear bias") : null;
    if (bt && (bt.size !== q.N || !FLOAT_DTYPES.includes(bt.dtype))) invalid(`linear: bias ${bt.dtype} ${fmt(bt.shape)} for ${q.N} outputs`);
    const M = xt.size / q.K;
    const out = this.newTensor([...xt.shape.slice(0, -1), q.N], "f32");
    this.record(bt ? [xt, ...q.inputs, bt] : [xt, ...q.inputs], [out], (p) => {
      if (out.size === 0) return;
      p.begin(OP.qlinear);
      p.push(out.address());
      p.push(xt.address());
      p.push(M);
      p.push(q.K);
      p.push(q.N);
      q.pushWeight(p);
      p.push(bt ? bt.address() : 0);
      p.push(bt ? DT[bt.dtype] : 0);
      p.end();
    });
    return out;
  }

  quantizedMatmul(x: Tensor, w: QuantizedWeight): Tensor {
    return this.qlinear(x, w);
  }

  gatherMatmul(x: Tensor, w: Weight, indices: Tensor): Tensor {
    const xt = this.floatArg(x, "gatherMatmul");
    const it = this.arg(indices, "gatherMatmul indices");
    if (it.dtype !== "i32" && it.dtype !== "u32") invalid(`gatherMatmul: indices must be i32, got ${it.dtype}`);
    if (it.shape.length !== 2) invalid(`gatherMatmul: indices ${fmt(it.shape)} must be [T, topk]`);
    const [T, topk] = it.shape as [number, number];
    const P = T * topk;
    const K = xt.shape[xt.shape.length - 1]!;
    const rows = xt.size / K;
    let xdiv: number;
    if (rows === P) xdiv = 1;
    else if (rows === T) xdiv = topk;
    else invalid(`gatherMatmul: input ${fmt(xt.shape)} has ${rows} rows, expected ${T} or ${P} for indices ${fmt(it.shape)}`);
    if (isQuantized(w)) {
      const q = this.quantArgs(w, "gatherMatmul");
      if (q.wt.shape.length !== 3) invalid(`gatherMatmul: stacked weight ${fmt(q.wt.shape)} must be [E, out, in/pack]`);
      if (q.K !== K) invalid(`gatherMatmul: input ${fmt(xt.shape)} does not match experts of ${q.K} inputs`);
      const E = q.wt.shape[0]!;
      const out = this.newTensor([T, topk, q.N], "f32");
      this.record([xt, it, ...q.inputs], [out], (p) => {
        if (out.size === 0) return;
        p.begin(OP.gatherQlinear);
        p.push(out.address());
        p.push(xt.address());
        p.push(P);
        p.push(xdiv);
        p.push(K);
        p.push(q.N);
        p.push(it.address());
        p.push(E);
        q.pushWeight(p);
        p.end();
      });
      return out;
    }
    const wt = this.arg(w, "gatherMatmul weight");
    if (wt.shape.length !== 3 || !FLOAT_DTYPES.includes(wt.dtype))
      invalid(`gatherMatmul: stacked weight must be float [E, out, in], got ${wt.dtype} ${fmt(wt.shape)}`);
    const [E, N, WK] = wt.shape as [number, number, number];
    if (WK !== K) invalid(`gatherMatmul: input ${fmt(xt.shape)} does not match experts ${fmt(wt.shape)}`);
    const out = this.newTensor([T, topk, N], "f32");
    this.record([xt, it, wt], [out], (p) => {
      if (out.size === 0) return;
      p.begin(OP.gatherLinear);
      p.push(out.address());
      p.push(xt.address());
      p.push(P);
      p.push(xdiv);
      p.push(K);
      p.push(N);
      p.push(it.address());
      p.push(E);
      p.push(wt.address());
      p.push(DT[wt.dtype]);
      p.end();
    });
    return out;
  }

  take(table: Weight, ids: Tensor): Tensor {
    const it = this.arg(ids, "take ids");
    if (it.dtype !== "i32" && it.dtype !== "u32") invalid(`take: ids must be i32, got ${it.dtype}`);
    if (isQuantized(table)) {
      const q = this.quantArgs(table, "take");
      if (q.wt.shape.length !== 2) invalid(`take: table ${fmt(q.wt.shape)} must be 2-D`);
      return this.dequantRows(q, table, it, [...it.shape, q.K]);
    }
    const wt = this.arg(table, "take table");
    if (wt.shape.length !== 2 || !FLOAT_DTYPES.includes(wt.dtype))
      invalid(`take: table must be a float [rows, dim] matrix, got ${wt.dtype} ${fmt(wt.shape)}`);
    const [N, K] = wt.shape as [number, number];
    const out = this.newTensor([...it.shape, K], "f32");
    this.record([it, wt], [out], (p) => {
      if (out.size === 0) return;
      p.begin(OP.takeRows);
      p.push(out.address());
      p.push(it.address());
      p.push(it.size);
      p.push(N);
      p.push(K);
      p.push(wt.address());
      p.push(DT[wt.dtype]);
      p.end();
    });
    return out;
  }

  private dequantRows(q: ReturnType<NativeBackend["quantArgs"]>, w: QuantizedWeight, rows: NTensor | null, shape: number[]): NTensor {
    const N = q.wt.size / q.wt.shape[q.wt.shape.length - 1]!;
    const nrows = rows ? rows.size : N;
    const out = this.newTensor(shape, "f32");
    this.record(rows ? [rows, ...q.inputs] : q.inputs, [out], (p) => {
      if (out.size === 0) return;
      p.begin(OP.dequantRows);
      p.push(out.address());
      p.push(rows ? rows.address() : 0);
      p.push(nrows);
      p.push(N);
      p.push(q.K);
      q.pushWeight(p);
      p.end();
    });
    return out;
  }

  quantize(_w: Tensor, mode: QuantMode, _bits: number, _groupSize: number): QuantizedWeight {
    throw new RmlxError("unsupported", `quantize (${mode}) is not available on the native backend; convert quantizes on its own`);
  }

  dequantize(w: QuantizedWeight): Tensor {
    const q = this.quantArgs(w, "dequantize");
    return this.dequantRows(q, w, null, [...q.wt.shape.slice(0, -1), q.K]);
  }

  // ---------------------------------------------------------------- elementwise and reductions

  private binary(kind: number, a: Tensor, b: Tensor, what: string): Tensor {
    const x = this.floatArg(a, what);
    const y = this.floatArg(b, what);
    const shape = sameShape(x.shape, y.shape) ? x.shape : broadcastShapes(x.shape, y.shape, what);
    const out = this.newTensor(shape, "f32");
    const c = binaryLayout(x, y, shape);
    this.record([x, y], [out], (w) => {
      if (out.size === 0) return;
      w.begin(OP.binary);
      w.push(kind);
      w.push(out.address());
      w.push(x.address());
      w.push(y.address());
      w.push(c.shape.length);
      w.pushAll(c.shape);
      w.pushAll(c.strides[0]!);
      w.pushAll(c.strides[1]!);
      w.end();
    });
    return out;
  }

  add(a: Tensor, b: Tensor): Tensor {
    return this.binary(BINARY.add, a, b, "add");
  }

  sub(a: Tensor, b: Tensor): Tensor {
    return this.binary(BINARY.sub, a, b, "sub");
  }

  mul(a: Tensor, b: Tensor): Tensor {
    return this.binary(BINARY.mul, a, b, "mul");
  }

  private unary(kind: number, x: Tensor, param: number, what: string): Tensor {
    const t = this.floatArg(x, what);
    const out = this.newTensor(t.shape, "f32");
    this.record([t], [out], (w) => {
      if (out.size === 0) return;
      w.begin(OP.unary);
      w.push(kind);
      w.push(out.address());
      w.push(t.address());
      w.push(t.size);
      w.push(param);
      w.end();
    });
    return out;
  }

  scale(x: Tensor, s: number): Tensor {
    return this.unary(UNARY.scale, x, s, "scale");
  }

  sigmoid(x: Tensor): Tensor {
    return this.unary(UNARY.sigmoid, x, 0, "sigmoid");
  }

  silu(x: Tensor): Tensor {
    return this.unary(UNARY.silu, x, 0, "silu");
  }

  geluTanh(x: Tensor): Tensor {
    return this.unary(UNARY.geluTanh, x, 0, "geluTanh");
  }

  softcap(x: Tensor, cap: number): Tensor {
    if (!(cap > 0)) invalid(`softcap: cap must be > 0, got ${cap}`);
    return this.unary(UNARY.softcap, x, cap, "softcap");
  }

  private glu(kind: number, gate: Tensor, up: Tensor, what: string): Tensor {
    const g = this.floatArg(gate, what);
    const u = this.floatArg(up, what);
    if (g.shape.length !== u.shape.length || g.shape.some((d, i) => d !== u.shape[i])) {
      const act = kind === GLU.swiglu ? this.silu(g) : this.geluTanh(g);
      return this.mul(act, u);
    }
    const out = this.newTensor(g.shape, "f32");
    this.record([g, u], [out], (w) => {
      if (out.size === 0) return;
      w.begin(OP.glu);
      w.push(kind);
      w.push(out.address());
      w.push(g.address());
      w.push(u.address());
      w.push(g.size);
      w.end();
    });
    return out;
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    return this.glu(GLU.swiglu, gate, up, "swiglu");
  }

  geglu(gate: Tensor, up: Tensor): Tensor {
    return this.glu(GLU.geglu, gate, up, "geglu");
  }

  private axisReduce(op: number, x: Tensor, axis: number, keep: boolean, what: string): Tensor {
    const t = this.floatArg(x, what);
    const nd = t.shape.length;
    if (nd === 0) invalid(`${what}: scalar input`);
    const a = normAxis(axis, nd, what);
    const outer = prod(t.shape, 0, a);
    const n = t.shape[a]!;
    const inner = prod(t.shape, a + 1);
    const shape = keep ? t.shape : t.shape.filter((_, i) => i !== a);
    const out = this.newTensor(shape, "f32");
    this.record([t], [out], (w) => {
      if (out.size === 0) return;
      w.begin(op);
      w.push(out.address());
      w.push(t.address());
      w.push(outer);
      w.push(n);
      w.push(inner);
      w.end();
    });
    return out;
  }

  softmax(x: Tensor, axis = -1): Tensor {
    return this.axisReduce(OP.softmax, x, axis, true, "softmax");
  }

  sum(x: Tensor, axis: number): Tensor {
    return this.axisReduce(OP.sum, x, axis, false, "sum");
  }

  argmax(x: Tensor): Tensor {
    const t = this.floatArg(x, "argmax");
    if (t.shape.length === 0) invalid("argmax: scalar input");
    const n = t.shape[t.shape.length - 1]!;
    if (n === 0) invalid(`argmax: empty last axis in ${fmt(t.shape)}`);
    const out = this.newTensor(t.shape.slice(0, -1), "i32");
    this.record([t], [out], (w) => {
      if (out.size === 0) return;
      w.begin(OP.argmax);
      w.push(out.address());
      w.push(t.address());
      w.push(out.size);
      w.push(n);
      w.end();
    });
    return out;
  }

  topk(x: Tensor, k: number): { values: Tensor; indices: Tensor } {
    const t = this.floatArg(x, "topk");
    if (t.shape.length === 0) invalid("topk: scalar input");
    const n = t.shape[t.shape.length - 1]!;
    if (!Number.isInteger(k) || k < 1 || k > n) invalid(`topk: k=${k} out of range for ${fmt(t.shape)}`);
    const shape = [...t.shape.slice(0, -1), k];
    const values = this.newTensor(shape, "f32");
    const indices = this.newTensor(shape, "i32");
    const rows = t.size / n;
    this.record([t], [values, indices], (w) => {
      if (values.size === 0) return;
      w.begin(OP.topk);
      w.push(values.address());
      w.push(indices.address());
      w.push(t.address());
      w.push(rows);
      w.push(n);
      w.push(k);
      w.end();
    });
    return { values, indices };
  }

  // ---------------------------------------------------------------- normalisation and position

  private normWeight(w: Tensor | null, n: number, what: string): NTensor | null {
    if (!w) return null;
    const t = this.arg(w, what);
    if (!FLOAT_DTYPES.includes(t.dtype)) invalid(`${what}: weight dtype ${t.dtype}`);
    if (t.size !== n) invalid(`${what}: weight ${fmt(t.shape)} for a last axis of ${n}`);
    return t;
  }

  rmsNorm(x: Tensor, w: Tensor | null, eps: number, onePlus = false): Tensor {
    const t = this.floatArg(x, "rmsNorm");
    if (t.shape.length === 0) invalid("rmsNorm: scalar input");
    const n = t.shape[t.shape.length - 1]!;
    const wt = this.normWeight(w, n, "rmsNorm");
    const out = this.newTensor(t.shape, "f32");
    const rows = n ? t.size / n : 0;
    this.record(wt ? [t, wt] : [t], [out], (p) => {
      if (out.size === 0) return;
      p.begin(OP.rmsNorm);
      p.push(out.address());
      p.push(t.address());
      p.push(wt ? wt.address() : 0);
      p.push(wt ? DT[wt.dtype] : 0);
      p.push(rows);
      p.push(n);
      p.push(eps);
      p.push(onePlus ? 1 : 0);
      p.end();
    });
    return out;
  }

  layerNorm(x: Tensor, w: Tensor | null, b: Tensor | null, eps: number): Tensor {
    const t = this.floatArg(x, "layerNorm");
    if (t.shape.length === 0) invalid("layerNorm: scalar input");
    const n = t.shape[t.shape.length - 1]!;
    const wt = this.normWeight(w, n, "layerNorm");
    const bt = this.normWeight(b, n, "layerNorm bias");
    const out = this.newTensor(t.shape, "f32");
    const rows = n ? t.size / n : 0;
    const inputs = [t];
    if (wt) inputs.push(wt);
    if (bt) inputs.push(bt);
    this.record(inputs, [out], (p) => {
      if (out.size === 0) return;
      p.begin(OP.layerNorm);
      p.push(out.address());
      p.push(t.address());
      p.push(wt ? wt.address() : 0);
      p.push(wt ? DT[wt.dtype] : 0);
      p.push(bt ? bt.address() : 0);
      p.push(bt ? DT[bt.dtype] : 0);
      p.push(rows);
      p.push(n);
      p.push(eps);
      p.end();
    });
    return out;
  }

  private invFreq(opts: RopeOptions): Float32Array {
    if (opts.freqs) {
      if (opts.freqs.length !== opts.dims / 2) invalid(`rope: ${opts.freqs.length} freqs for ${opts.dims} dims`);
      return opts.freqs;
    }
    const last = this.lastFreqs;
    if (last && last.base === opts.base && last.dims === opts.dims) return last.freqs;
    const key = `${opts.base}/${opts.dims}`;
    let f = this.freqCache.get(key);
    if (!f) {
      f = new Float32Array(opts.dims / 2);
      for (let i = 0; i < f.length; i++) f[i] = 1 / Math.pow(opts.base, (2 * i) / opts.dims);
      this.freqCache.set(key, f);
    }
    this.lastFreqs = { base: opts.base, dims: opts.dims, freqs: f };
    return f;
  }

  /**
   * The cos/sin table of a step's positions, shared by every rope call with equal positions and frequencies (q and
   * k of all layers). It lives in its own buffer, outside the scopes, so per-layer scopes do not drop it.
   */
  private ropeTable(positions: Int32Array, freqs: Float32Array, scale: number, mscale: number): NTensor {
    for (const e of this.ropeTables)
      if (e.table.home !== Home.Dead && e.freqs === freqs && e.scale === scale && e.mscale === mscale && sameInts(e.positions, positions))
        return e.table;
    const T = positions.length;
    const half = freqs.length;
    const table = new NTensor([2, T, half], "f32");
    const pos = positions.slice();
    this.record(
      NO_INPUTS,
      [table],
      (p, host) => {
        if (table.size === 0) return;
        p.begin(OP.ropeTable);
        p.push(table.address());
        p.push(host[0]!);
        p.push(T);
        p.push(half);
        p.push(host[1]!);
        p.push(scale);
        p.push(mscale);
        p.end();
      },
      [pos, freqs],
    );
    this.ropeTables.unshift({ positions: pos, freqs, scale, mscale, table });
    if (this.ropeTables.length > 4) this.ropeTables.pop();
    return table;
  }

  rope(x: Tensor, positions: Int32Array, opts: RopeOptions): Tensor {
    const t = this.floatArg(x, "rope");
    if (t.shape.length !== 3) invalid(`rope: input ${fmt(t.shape)} must be [T, H, D]`);
    const [T, H, D] = t.shape as [number, number, number];
    if (positions.length !== T) invalid(`rope: ${positions.length} positions for ${T} tokens`);
    if (!Number.isInteger(opts.dims) || opts.dims < 2 || opts.dims > D || opts.dims % 2)
      invalid(`rope: dims ${opts.dims} for head dim ${D}`);
    const table = this.ropeTable(positions, this.invFreq(opts), opts.scale, opts.mscale ?? 1);
    const out = this.newTensor(t.shape, "f32");
    const dims = opts.dims;
    const traditional = opts.traditional ? 1 : 0;
    this.record([t, table], [out], (p) => {
      if (out.size === 0) return;
      p.begin(OP.rope);
      p.push(out.address());
      p.push(t.address());
      p.push(table.address());
      p.push(T);
      p.push(H);
      p.push(D);
      p.push(dims);
      p.push(traditional);
      p.end();
    });
    return out;
  }

  // ---------------------------------------------------------------- attention

  createKvPool(numBlocks: number, blockSize: number, kvHeads: number, headDim: number, dtype: DType): KvPool {
    if (!FLOAT_DTYPES.includes(dtype)) invalid(`createKvPool: dtype ${dtype} (f32, f16 or bf16)`);
    for (const [n, v] of [["numBlocks", numBlocks], ["blockSize", blockSize], ["kvHeads", kvHeads], ["headDim", headDim]] as const)
      if (!Number.isInteger(v) || v < 1) invalid(`createKvPool: ${n} = ${v}`);
    const shape = [numBlocks, blockSize, kvHeads, headDim];
    const pool: NKvPool = {
      k: this.allocPersistent(shape, dtype) as NTensor,
      v: this.allocPersistent(shape, dtype) as NTensor,
      numBlocks,
      blockSize,
      kvHeads,
      headDim,
      lastWrite: null,
      readers: [],
    };
    return pool;
  }

  private pool(p: KvPool, what: string): NKvPool {
    const pool = p as NKvPool;
    if (!(pool.k instanceof NTensor) || !Array.isArray(pool.readers)) invalid(`${what}: not a KV pool of the native backend`);
    this.arg(pool.k, what);
    this.arg(pool.v, what);
    return pool;
  }

  /** Records a write to the pool, ordered after earlier writes and reads of it. */
  private poolWrite(pool: NKvPool, inputs: NTensor[], emit: Emit, host?: Int32Array[]): void {
    const deps: Node[] = [];
    if (pool.lastWrite && !pool.lastWrite.done) deps.push(pool.lastWrite);
    for (const r of pool.readers) if (!r.done) deps.push(r);
    const n = this.record(inputs, [], emit, host, deps);
    pool.lastWrite = n;
    pool.readers = [];
    this.effects.push(n);
  }

  kvWrite(p: KvPool, k: Tensor, v: Tensor, slots: Int32Array): void {
    const pool = this.pool(p, "kvWrite");
    const kt = this.floatArg(k, "kvWrite");
    const vt = this.floatArg(v, "kvWrite");
    const { kvHeads, headDim } = pool;
    for (const t of [kt, vt])
      if (t.shape.length !== 3 || t.shape[1] !== kvHeads || t.shape[2] !== headDim)
        invalid(`kvWrite: k/v ${fmt(t.shape)} must be [T, ${kvHeads}, ${headDim}]`);
    const T = kt.shape[0]!;
    if (vt.shape[0] !== T) invalid(`kvWrite: k ${fmt(kt.shape)} and v ${fmt(vt.shape)} differ`);
    if (slots.length !== T) invalid(`kvWrite: ${slots.length} slots for ${T} tokens`);
    if (T === 0) return;
    const row = kvHeads * headDim;
    const numSlots = pool.numBlocks * pool.blockSize;
    this.poolWrite(
      pool,
      [kt, vt],
      (w, host) => {
        w.begin(OP.kvWrite);
        w.push(pool.k.address());
        w.push(pool.v.address());
        w.push(DT[pool.k.dtype]);
        w.push(kt.address());
        w.push(vt.address());
        w.push(host[0]!);
        w.push(T);
        w.push(row);
        w.push(numSlots);
        w.end();
      },
      [slots.slice()],
    );
  }

  copyBlock(p: KvPool, src: number, dst: number): void {
    const pool = this.pool(p, "copyBlock");
    for (const b of [src, dst])
      if (!Number.isInteger(b) || b < 0 || b >= pool.numBlocks) invalid(`copyBlock: block ${b} outside the pool's ${pool.numBlocks}`);
    if (src === dst) return;
    const bytes = pool.blockSize * pool.kvHeads * pool.headDim * DTYPE_BYTES[pool.k.dtype];
    this.poolWrite(pool, [], (w) => {
      for (const t of [pool.k, pool.v]) {
        w.begin(OP.memcpy);
        w.push(t.address() + dst * bytes);
        w.push(t.address() + src * bytes);
        w.push(bytes);
        w.end();
      }
    });
  }

  pagedAttention(q: Tensor, p: KvPool, batch: AttentionBatch, opts: AttentionOptions): Tensor {
    const pool = this.pool(p, "pagedAttention");
    const qt = this.floatArg(q, "pagedAttention");
    if (qt.shape.length !== 3 || qt.shape[2] !== pool.headDim)
      invalid(`pagedAttention: q ${fmt(qt.shape)} must be [T, heads, ${pool.headDim}]`);
    const [T, H] = qt.shape as [number, number, number];
    if (H % pool.kvHeads !== 0) invalid(`pagedAttention: ${H} heads not a multiple of ${pool.kvHeads} KV heads`);
    const numSeqs = batch.seqLens.length;
    if (batch.tokenSeq.length !== T || batch.positions.length !== T)
      invalid(`pagedAttention: ${batch.tokenSeq.length} tokenSeq and ${batch.positions.length} positions for ${T} tokens`);
    if (!Number.isInteger(batch.maxBlocks) || batch.maxBlocks < 1 || batch.blockTables.length !== numSeqs * batch.maxBlocks)
      invalid(`pagedAttention: block tables of ${batch.blockTables.length} entries for ${numSeqs} sequences x ${batch.maxBlocks} blocks`);
    const window = opts.window ?? 0;
    const softcap = opts.softcap ?? 0;
    const out = this.newTensor(qt.shape, "f32");
    const deps = pool.lastWrite && !pool.lastWrite.done ? [pool.lastWrite] : [];
    const n = this.record(
      [qt, pool.k, pool.v],
      [out],
      (w, host) => {
        if (out.size === 0) return;
        w.begin(OP.pagedAttention);
        w.push(out.address());
        w.push(qt.address());
        w.push(pool.k.address());
        w.push(pool.v.address());
        w.push(DT[pool.k.dtype]);
        w.push(pool.blockSize);
        w.push(pool.kvHeads);
        w.push(pool.headDim);
        w.push(pool.numBlocks);
        w.push(host[0]!);
        w.push(batch.maxBlocks);
        w.push(host[1]!);
        w.push(host[2]!);
        w.push(host[3]!);
        w.push(numSeqs);
        w.push(T);
        w.push(H);
        w.push(opts.scale);
        w.push(window);
        w.push(softcap);
        w.end();
      },
      [batch.blockTables.slice(), batch.tokenSeq.slice(), batch.positions.slice(), batch.seqLens.slice()],
      deps,
    );
    pool.readers.push(n);
    if (pool.readers.length > 64) pool.readers = pool.readers.filter((r) => !r.done);
    return out;
  }

  sdpa(q: Tensor, k: Tensor, v: Tensor, scale: number, causal: boolean): Tensor {
    const qt = this.floatArg(q, "sdpa");
    const kt = this.floatArg(k, "sdpa");
    const vt = this.floatArg(v, "sdpa");
    if (qt.shape.length !== 4 || kt.shape.length !== 4 || vt.shape.length !== 4)
      invalid(`sdpa: q ${fmt(qt.shape)}, k ${fmt(kt.shape)}, v ${fmt(vt.shape)} must be rank 4`);
    const [B, H, L, D] = qt.shape as [number, number, number, number];
    const [B2, Hkv, S, D2] = kt.shape as [number, number, number, number];
    if (B2 !== B || D2 !== D || H % Hkv !== 0 || vt.shape.some((d, i) => d !== kt.shape[i]))
      invalid(`sdpa: q ${fmt(qt.shape)}, k ${fmt(kt.shape)}, v ${fmt(vt.shape)} are not [B,H,L,D], [B,Hkv,S,D], [B,Hkv,S,D]`);
    const out = this.newTensor(qt.shape, "f32");
    this.record([qt, kt, vt], [out], (w) => {
      if (out.size === 0) return;
      w.begin(OP.sdpa);
      w.push(out.address());
      w.push(qt.address());
      w.push(kt.address());
      w.push(vt.address());
      w.push(B);
      w.push(H);
      w.push(Hkv);
      w.push(L);
      w.push(S);
      w.push(D);
      w.push(scale);
      w.push(causal ? 1 : 0);
      w.end();
    });
    return out;
  }
}
