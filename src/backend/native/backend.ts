// The native Backend: each op checks its arguments, works out its output's shape and records a node whose emit
// writes the op's record through its typed encoder (oplist_gen.ts). graph.ts runs what was recorded, scope.ts
// decides where results live and when they die.
import { readFileSync } from "node:fs";
import { ptr } from "bun:ffi";
import {
  type AttentionBatch,
  type AttentionOptions,
  type Backend,
  DTYPE_BYTES,
  type DType,
  type KvPool,
  type QuantMode,
  type QuantizedWeight,
  type TernaryWeight,
  type RecurrentBatch,
  type RopeOptions,
  type RowDraw,
  type StatePool,
  type StateSpec,
  type Tensor,
  type VarlenAttentionOptions,
  type Weight,
  isQuantized,
  kvBlockBytes,
} from "../backend.ts";
import { type KvElement, type KvFormat, kvElementBits, kvElementGroups, plainKvDtype } from "../../quant/kv_codec.ts";
import {
  broadcastShapes,
  checkArgmax,
  clampBound,
  checkCausalConv,
  checkCopyBlock,
  checkKvBlockIo,
  checkGatedDelta,
  checkRecurrentBatch,
  statePoolLayout,
  checkExperts,
  checkGather,
  checkKvPool,
  kvPoolFormat,
  checkKvWrite,
  checkLinear,
  checkNormWeight,
  checkPagedAttention,
  checkQuantized,
  checkQuantizedMatmul,
  checkRope,
  checkShape,
  checkSoftcap,
  checkTable,
  checkTakeIds,
  checkTopk,
  checkVarlenAttention,
  concatAxis,
  FLOAT_DTYPES,
  fmt,
  invalid,
  normAxis,
  normAxisLength,
  sliceAxis,
  transposeAxes,
} from "../args.ts";
import { RmlxError } from "../../errors.ts";
import { availableMemory } from "../../io/meminfo.ts";
import { decodeFloats } from "../../quant/dtype.ts";
import { Graph, type Shared } from "./graph.ts";
import { binaryLayout, broadcastStrides, collapse, contiguousStrides, prod, sameShape } from "./layout.ts";
import { DT, Q_EXACT_ROWS, QMODE, native } from "./lib.ts";
import { bytesAt, bytesOf, nativeAlloc, nativeFree, nativePopulate } from "./memory.ts";
import * as encode from "./oplist_gen.ts";
import { BINARY, type BinaryKind, GLU, type GluKind, UNARY, type UnaryKind } from "./oplist_gen.ts";
import { RopeTables } from "./rope.ts";
import { Scopes } from "./scope.ts";
import { Home, NTensor } from "./tensor.ts";

interface NStatePool extends StatePool, Shared {
  readonly conv: NTensor;
  readonly delta: NTensor;
}

interface NKvPool extends KvPool, Shared {
  readonly k: NTensor;
  readonly v: NTensor;
  readonly format: KvFormat;
  /** Every tensor of the pool (codes, scales, biases of both sides). */
  readonly parts: NTensor[];
  /** Both sides float of one dtype: the plain ops serve it. */
  readonly plain: boolean;
}

const KV_MODE = { float: 0, affine: 1, fp8: 2, turbo: 3 } as const;
/** Weights smaller than this stay in place (the library's own small allocations are not in huge pages either). */
const WEIGHT_COPY_MIN = 1 << 20;

let hugePagesCache: boolean | undefined;
/** Whether Linux gives this process transparent huge pages where it asks for them (rmlx_alloc's madvise). */
function hugePages(): boolean {
  if (hugePagesCache === undefined) {
    try {
      hugePagesCache = !readFileSync("/sys/kernel/mm/transparent_hugepage/enabled", "utf8").includes("[never]");
    } catch {
      hugePagesCache = false;
    }
  }
  return hugePagesCache;
}

/** The op list's KvPage of one side of a pool. */
function kvPage(e: KvElement, data: NTensor, scales?: NTensor, biases?: NTensor): encode.KvPage {
  return {
    data: data.address(),
    scales: scales ? scales.address() : 0,
    biases: biases ? biases.address() : 0,
    dt: e.kind === "float" ? DT[e.dtype] : DT.u8,
    mode: KV_MODE[e.kind],
    bits: e.kind === "float" ? 0 : kvElementBits(e),
    group: e.kind === "affine" || e.kind === "fp8" ? e.group : 0,
  };
}

/** A checked quantized weight, which is also its records' QuantWeight fields (addresses read as they are written). */
class NQuant implements encode.QuantWeight {
  readonly sbdt: number;
  readonly mode: number;
  readonly bits: number;
  readonly group: number;
  readonly gscale: number;
  readonly inputs: NTensor[];

  constructor(
    q: QuantizedWeight,
    readonly wt: NTensor,
    private readonly sc: NTensor,
    private readonly bi: NTensor | null,
    readonly N: number,
    readonly K: number,
  ) {
    this.sbdt = q.mode === "affine" ? DT[sc.dtype] : DT.u8;
    this.mode = QMODE[q.mode] | (q.exactRows ? Q_EXACT_ROWS : 0);
    this.bits = q.bits;
    this.group = q.groupSize;
    this.gscale = q.globalScale ?? 0;
    this.inputs = bi ? [wt, sc, bi] : [wt, sc];
  }

  get w(): number {
    return this.wt.address();
  }

  get scales(): number {
    return this.sc.address();
  }

  get biases(): number {
    return this.bi ? this.bi.address() : 0;
  }
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

  private readonly graph: Graph = new Graph((t) => this.scopes.place(t));
  private readonly scopes = new Scopes(this.graph);
  private readonly ropeTables = new RopeTables(this.graph);

  /**
   * Pipelined decode (the scheduler's in-flight step, as on the mlx backend): present only with `pipeline` (env
   * RMLX_PIPELINE=1). The host then records step N+1 while the library's executor thread computes step N. Off by
   * default: the executor and its pool use every core, so the host's recording takes its time from them; on a
   * 2-core machine the 0.6B 4-bit shape decoded 70-73 tok/s pipelined against 72-75 plain (the same tokens).
   */
  readonly evalAsync?: (...tensors: Tensor[]) => void;

  constructor(opts: { pipeline?: boolean } = {}) {
    const lib = native();
    this.device = `${cpuName()} (${String(lib.rmlx_isa())}, ${lib.rmlx_num_threads()} threads)`;
    if (opts.pipeline ?? process.env.RMLX_PIPELINE === "1") this.evalAsync = (...tensors) => this.launch(tensors);
  }

  // ---------------------------------------------------------------- tensors

  private arg(x: Tensor, what: string): NTensor {
    if (!(x instanceof NTensor)) invalid(`${what}: not a tensor of the native backend`);
    if (x.dead()) invalid(`${what}: tensor ${fmt(x.shape)} is gone (used after its scope ended, disposed, or its eval failed)`);
    return x;
  }

  private floatArg(x: Tensor, what: string): NTensor {
    const t = this.arg(x, what);
    return t.dtype === "f32" ? t : (this.astype(t, "f32") as NTensor);
  }

  private out(shape: readonly number[], dtype: DType = "f32"): NTensor {
    return this.scopes.newTensor(shape, dtype);
  }

  private view(x: NTensor, shape: readonly number[], byteOffset: number): NTensor {
    const t = this.out(shape, x.dtype);
    t.base = x.root();
    t.offset = (x.base ? x.offset : 0) + byteOffset;
    return t;
  }

  fromArray(data: Float32Array | Int32Array | Uint32Array | Uint16Array | Uint8Array, shape: readonly number[], dtype: DType): Tensor {
    checkShape(shape, "fromArray");
    const t = this.out(shape, dtype);
    if (data.byteLength !== t.nbytes)
      invalid(`fromArray: ${data.byteLength} bytes for ${dtype} ${fmt(shape)} (${t.nbytes} bytes)`);
    this.scopes.place(t);
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

  /**
   * Weights of 1 MiB or more get memory of the library's, which is mapped in 2 MiB pages: a decode step streams
   * every weight, and over a file's 4 KiB pages (the page cache, or JavaScript's heap for weights made in memory)
   * the hardware prefetchers stop at every page boundary and each page costs a TLB entry (about 12% of the
   * products' time in a 28-layer loop of the 0.6B shape's 4-bit products). None where the weight would take more
   * than a quarter of the memory available, so a model larger than memory keeps its mapping and pages from the
   * file as before, and none where the kernel gives no transparent huge pages (the copy would gain nothing);
   * RMLX_MMAP_WEIGHTS=1 keeps every weight mapped.
   */
  weightBuffer(shape: readonly number[], dtype: DType): { tensor: Tensor; bytes: Uint8Array } | undefined {
    checkShape(shape, "weightBuffer");
    const t = new NTensor(shape, dtype);
    if (t.nbytes < WEIGHT_COPY_MIN || process.env.RMLX_MMAP_WEIGHTS === "1" || !hugePages() || 4 * t.nbytes > availableMemory())
      return undefined;
    t.addr = nativeAlloc(t.nbytes);
    t.home = Home.Persistent;
    // A model is dropped, not disposed, when it is unloaded: its weights' memory goes with their tensors.
    this.weightRelease.register(t, t.addr, t);
    return { tensor: t, bytes: bytesAt(t.addr, t.nbytes) };
  }

  private readonly weightRelease = new FinalizationRegistry<number>((addr) => nativeFree(addr));

  zeros(shape: readonly number[], dtype: DType): Tensor {
    checkShape(shape, "zeros");
    const t = this.out(shape, dtype);
    this.scopes.place(t);
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
    if (x.home === Home.Persistent) {
      this.weightRelease.unregister(x);
      nativeFree(x.addr);
    }
    x.home = Home.Dead;
    x.addr = 0;
    x.hold = null;
  }

  // ---------------------------------------------------------------- evaluation, read-back, scopes

  eval(...tensors: Tensor[]): void {
    this.graph.eval(tensors.map((x) => this.arg(x, "eval").root()));
  }

  /**
   * Launches what eval() would run on the library's executor thread and returns (evalAsync). The given tensors get
   * memory of their own, not the scope's arena, so that they can leave the scope without a copy while the program
   * still writes them.
   */
  private launch(tensors: Tensor[]): void {
    const roots = tensors.map((x) => this.arg(x, "evalAsync").root());
    for (const r of roots) if (r.scoped && r.home === Home.Pending) r.scoped = false;
    this.graph.evalAsync(roots);
  }

  toFloat32(x: Tensor, out?: Float32Array): Float32Array {
    const t = this.arg(x, "toFloat32");
    this.eval(t);
    const b = bytesOf(t);
    if (out && out.length >= t.size && t.dtype === "f32") {
      const view = out.subarray(0, t.size);
      view.set(new Float32Array(b.buffer, b.byteOffset, t.size));
      return view;
    }
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
    const b = bytesOf(t);
    if (t.dtype === "u8") return Int32Array.from(b);
    return new Int32Array(b.slice().buffer);
  }

  scope<T>(fn: () => T): T {
    return this.scopes.scope(fn);
  }

  get computeMs(): number {
    return this.graph.execMs;
  }

  /** Bytes held by the step arena (for tests and metrics). */
  get arenaBytes(): number {
    return this.scopes.arenaBytes;
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
    const ax = transposeAxes(t.shape, axes);
    const xs = contiguousStrides(t.shape);
    return this.stridedCopy(
      t,
      ax.map((a) => t.shape[a]!),
      ax.map((a) => xs[a]!),
      0,
    );
  }

  /** Materialises `shape` elements of x read with the given strides (elements) from byte offset srcOffset. */
  private stridedCopy(x: NTensor, shape: number[], strides: number[], srcOffset: number): NTensor {
    const out = this.out(shape, x.dtype);
    const c = collapse(shape, [strides, contiguousStrides(shape)]);
    const esize = DTYPE_BYTES[x.dtype];
    this.graph.record([x], [out], (w) => {
      if (out.size === 0) return;
      encode.copy(w, out.address(), x.address() + srcOffset, esize, c.shape, c.strides[0]!, c.strides[1]!);
    });
    return out;
  }

  slice(x: Tensor, axis: number, start: number, end: number): Tensor {
    const t = this.arg(x, "slice");
    const a = sliceAxis(t.shape, axis, start, end);
    const s = clampBound(start, t.shape[a]!);
    const e = Math.max(s, clampBound(end, t.shape[a]!));
    const shape = [...t.shape];
    shape[a] = e - s;
    const strides = contiguousStrides(t.shape);
    const offset = s * strides[a]! * DTYPE_BYTES[t.dtype];
    if (prod(t.shape, 0, a) === 1) return this.view(t, shape, offset);
    return this.stridedCopy(t, shape, strides, offset);
  }

  concatenate(xs: readonly Tensor[], axis: number): Tensor {
    const ts = xs.map((x) => this.arg(x, "concatenate"));
    const a = concatAxis(ts, axis);
    const first = ts[0]!;
    const shape = [...first.shape];
    shape[a] = ts.reduce((s, t) => s + t.shape[a]!, 0);
    const out = this.out(shape, first.dtype);
    const os = contiguousStrides(shape);
    const esize = DTYPE_BYTES[first.dtype];
    const parts = ts.map((t, i) => {
      const before = ts.slice(0, i).reduce((s, u) => s + u.shape[a]!, 0);
      return { t, off: before * os[a]! * esize, c: collapse(t.shape, [contiguousStrides(t.shape), os]) };
    });
    this.graph.record(ts, [out], (w) => {
      for (const p of parts) {
        if (p.t.size === 0) continue;
        encode.copy(w, out.address() + p.off, p.t.address(), esize, p.c.shape, p.c.strides[0]!, p.c.strides[1]!);
      }
    });
    return out;
  }

  astype(x: Tensor, dtype: DType): Tensor {
    const t = this.arg(x, "astype");
    if (t.dtype === dtype) return t;
    if (dtype === "u32" || dtype === "u8") throw new RmlxError("unsupported", `astype: to ${dtype} is not supported`);
    const out = this.out(t.shape, dtype);
    this.graph.record([t], [out], (w) => {
      if (out.size === 0) return;
      encode.astype(w, out.address(), t.address(), t.size, DT[t.dtype], DT[dtype]);
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
    const out = this.out([...bshape, M, N]);
    this.graph.record([x, y], [out], (w) => {
      if (out.size === 0) return;
      encode.matmul(w, out.address(), x.address(), y.address(), M, K, N, bshape, sa, sb);
    });
    return out;
  }

  linear(x: Tensor, w: Weight, bias?: Tensor): Tensor {
    if (isQuantized(w)) return this.qlinear(x, w, bias);
    const xt = this.floatArg(x, "linear");
    const wt = this.arg(w, "linear weight");
    const bt = bias ? this.arg(bias, "linear bias") : null;
    checkLinear(xt, wt, bt);
    const [N, K] = wt.shape as [number, number];
    // rmlx_linear's bias has W's dtype; another is added on its own.
    const fused = bt && bt.dtype === wt.dtype ? bt : null;
    const M = xt.size / K;
    const oshape = xt.shape.slice();
    oshape[oshape.length - 1] = N;
    const out = this.out(oshape);
    this.graph.record(fused ? [xt, wt, fused] : [xt, wt], [out], (p) => {
      if (out.size === 0) return;
      encode.linear(p, out.address(), xt.address(), M, K, N, wt.address(), DT[wt.dtype], fused ? fused.address() : 0);
    });
    return bt && !fused ? this.add(out, bt) : out;
  }

  private quant(w: QuantizedWeight, what: string): NQuant {
    const wt = this.arg(w.w, `${what} weight`);
    const sc = this.arg(w.scales, `${what} scales`);
    const bi = w.biases ? this.arg(w.biases, `${what} biases`) : null;
    const K = checkQuantized(what, w, wt, sc, bi);
    return new NQuant(w, wt, sc, bi, wt.shape[wt.shape.length - 2]!, K);
  }

  private qlinear(x: Tensor, w: QuantizedWeight, bias?: Tensor): Tensor {
    const xt = this.floatArg(x, "quantizedMatmul");
    const q = this.quant(w, "quantizedMatmul");
    checkQuantizedMatmul(xt, q.wt, q.K);
    const bt = bias ? this.arg(bias, "linear bias") : null;
    if (bt && (bt.size !== q.N || !FLOAT_DTYPES.includes(bt.dtype))) invalid(`linear: bias ${bt.dtype} ${fmt(bt.shape)} for ${q.N} outputs`);
    const { N, K } = q;
    const M = xt.size / K;
    const out = this.out([...xt.shape.slice(0, -1), N]);
    this.graph.record(bt ? [xt, ...q.inputs, bt] : [xt, ...q.inputs], [out], (p) => {
      if (out.size === 0) return;
      encode.qlinear(p, out.address(), xt.address(), M, K, N, q, bt ? bt.address() : 0, bt ? DT[bt.dtype] : 0);
    });
    return out;
  }

  quantizedMatmul(x: Tensor, w: QuantizedWeight): Tensor {
    return this.qlinear(x, w);
  }

  ternaryLinear(x: Tensor, w: TernaryWeight): Tensor {
    const xt = this.floatArg(x, "ternaryLinear");
    const wt = this.arg(w.packed, "ternaryLinear weight");
    if (wt.dtype !== "u8" || wt.shape.length !== 2) invalid(`ternaryLinear: weight ${wt.dtype} ${fmt(wt.shape)} is not packed uint8 [out/4, in]`);
    const [R, K] = wt.shape as [number, number];
    if (xt.shape[xt.shape.length - 1] !== K) invalid(`ternaryLinear: x ${fmt(xt.shape)} against weight ${fmt(wt.shape)}`);
    const N = 4 * R;
    const M = xt.size / K;
    const out = this.out([...xt.shape.slice(0, -1), N]);
    this.graph.record([xt, wt], [out], (p) => {
      if (out.size === 0) return;
      encode.ternaryLinear(p, out.address(), xt.address(), M, K, N, wt.address(), w.scale, w.divide);
    });
    return out;
  }

  gatherMatmul(x: Tensor, w: Weight, indices: Tensor): Tensor {
    const xt = this.floatArg(x, "gatherMatmul");
    const it = this.arg(indices, "gatherMatmul indices");
    const xdiv = checkGather(xt, it);
    const [T, topk] = it.shape as [number, number];
    const K = xt.shape[xt.shape.length - 1]!;
    const P = T * topk;
    if (isQuantized(w)) {
      const q = this.quant(w, "gatherMatmul");
      const N = checkExperts(xt, q.wt, K, q.K);
      const E = q.wt.shape[0]!;
      const out = this.out([T, topk, N]);
      this.graph.record([xt, it, ...q.inputs], [out], (p) => {
        if (out.size === 0) return;
        encode.gatherQlinear(p, out.address(), xt.address(), P, xdiv, K, N, it.address(), E, q);
      });
      return out;
    }
    const wt = this.arg(w, "gatherMatmul weight");
    const N = checkExperts(xt, wt, K);
    const E = wt.shape[0]!;
    const out = this.out([T, topk, N]);
    this.graph.record([xt, it, wt], [out], (p) => {
      if (out.size === 0) return;
      encode.gatherLinear(p, out.address(), xt.address(), P, xdiv, K, N, it.address(), E, wt.address(), DT[wt.dtype]);
    });
    return out;
  }

  take(table: Weight, ids: Tensor): Tensor {
    const it = this.arg(ids, "take ids");
    checkTakeIds(it);
    if (isQuantized(table)) {
      const q = this.quant(table, "take");
      checkTable(q.wt, true);
      return this.dequantRows(q, it, [...it.shape, q.K]);
    }
    const wt = this.arg(table, "take table");
    checkTable(wt, false);
    const [N, K] = wt.shape as [number, number];
    const out = this.out([...it.shape, K]);
    this.graph.record([it, wt], [out], (p) => {
      if (out.size === 0) return;
      encode.takeRows(p, out.address(), it.address(), it.size, N, K, wt.address(), DT[wt.dtype]);
    });
    return out;
  }

  /** Rows of the dequantized weight as f32: the given rows, or (rows null) all of them in order. */
  private dequantRows(q: NQuant, rows: NTensor | null, shape: number[]): NTensor {
    const N = q.wt.size / q.wt.shape[q.wt.shape.length - 1]!;
    const nrows = rows ? rows.size : N;
    const K = q.K;
    const out = this.out(shape);
    this.graph.record(rows ? [rows, ...q.inputs] : q.inputs, [out], (p) => {
      if (out.size === 0) return;
      encode.dequantRows(p, out.address(), rows ? rows.address() : 0, nrows, N, K, q);
    });
    return out;
  }

  quantize(_w: Tensor, mode: QuantMode, _bits: number, _groupSize: number): QuantizedWeight {
    throw new RmlxError("unsupported", `quantize (${mode}) is not available on the native backend; convert quantizes on its own`);
  }

  dequantize(w: QuantizedWeight): Tensor {
    const q = this.quant(w, "dequantize");
    return this.dequantRows(q, null, [...q.wt.shape.slice(0, -1), q.K]);
  }

  // ---------------------------------------------------------------- elementwise and reductions

  private binary(kind: BinaryKind, a: Tensor, b: Tensor, what: string): Tensor {
    const x = this.floatArg(a, what);
    const y = this.floatArg(b, what);
    const shape = sameShape(x.shape, y.shape) ? x.shape : broadcastShapes(x.shape, y.shape, what);
    const out = this.out(shape);
    const c = binaryLayout(x, y, shape);
    this.graph.record([x, y], [out], (w) => {
      if (out.size === 0) return;
      encode.binary(w, kind, out.address(), x.address(), y.address(), c.shape, c.strides[0]!, c.strides[1]!);
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

  private unary(kind: UnaryKind, x: Tensor, param: number, what: string): Tensor {
    const t = this.floatArg(x, what);
    const out = this.out(t.shape);
    this.graph.record([t], [out], (w) => {
      if (out.size === 0) return;
      encode.unary(w, kind, out.address(), t.address(), t.size, param);
    });
    return out;
  }

  scale(x: Tensor, s: number): Tensor {
    return this.unary(UNARY.scale, x, s, "scale");
  }

  sigmoid(x: Tensor): Tensor {
    return this.unary(UNARY.sigmoid, x, 0, "sigmoid");
  }

  softplus(x: Tensor): Tensor {
    return this.unary(UNARY.softplus, x, 0, "softplus");
  }

  silu(x: Tensor): Tensor {
    return this.unary(UNARY.silu, x, 0, "silu");
  }

  gelu(x: Tensor): Tensor {
    const t = this.floatArg(x, "gelu");
    const out = this.out(t.shape);
    this.graph.record([t], [out], (w) => {
      if (out.size > 0) encode.geluErf(w, out.address(), t.address(), t.size);
    });
    return out;
  }

  geluTanh(x: Tensor): Tensor {
    return this.unary(UNARY.geluTanh, x, 0, "geluTanh");
  }

  softcap(x: Tensor, cap: number): Tensor {
    checkSoftcap(cap);
    return this.unary(UNARY.softcap, x, cap, "softcap");
  }

  private glu(kind: GluKind, gate: Tensor, up: Tensor, what: string): Tensor {
    const g = this.floatArg(gate, what);
    const u = this.floatArg(up, what);
    if (!sameShape(g.shape, u.shape)) return this.mul(kind === GLU.swiglu ? this.silu(g) : this.geluTanh(g), u);
    const out = this.out(g.shape);
    this.graph.record([g, u], [out], (w) => {
      if (out.size === 0) return;
      encode.glu(w, kind, out.address(), g.address(), u.address(), g.size);
    });
    return out;
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    return this.glu(GLU.swiglu, gate, up, "swiglu");
  }

  geglu(gate: Tensor, up: Tensor): Tensor {
    return this.glu(GLU.geglu, gate, up, "geglu");
  }

  relu2Mul(gate: Tensor, up: Tensor): Tensor {
    const g = this.floatArg(gate, "relu2Mul");
    const u = this.floatArg(up, "relu2Mul");
    if (!sameShape(g.shape, u.shape)) invalid(`relu2Mul: gate ${fmt(g.shape)} and up ${fmt(u.shape)} differ`);
    const out = this.out(g.shape);
    this.graph.record([g, u], [out], (p) => {
      if (out.size === 0) return;
      encode.relu2Mul(p, out.address(), g.address(), u.address(), g.size);
    });
    return out;
  }

  /** softmax or sum over one axis, as the middle axis of [outer, n, inner]. */
  private axisReduce(enc: typeof encode.softmax, x: Tensor, axis: number, keep: boolean, what: string): Tensor {
    const t = this.floatArg(x, what);
    const nd = t.shape.length;
    if (nd === 0) invalid(`${what}: scalar input`);
    const a = normAxis(axis, nd, what);
    const outer = prod(t.shape, 0, a);
    const n = t.shape[a]!;
    const inner = prod(t.shape, a + 1);
    const out = this.out(keep ? t.shape : t.shape.filter((_, i) => i !== a));
    this.graph.record([t], [out], (w) => {
      if (out.size === 0) return;
      enc(w, out.address(), t.address(), outer, n, inner);
    });
    return out;
  }

  softmax(x: Tensor, axis = -1): Tensor {
    return this.axisReduce(encode.softmax, x, axis, true, "softmax");
  }

  sum(x: Tensor, axis: number): Tensor {
    return this.axisReduce(encode.sum, x, axis, false, "sum");
  }

  argmax(x: Tensor): Tensor {
    const t = this.floatArg(x, "argmax");
    const n = checkArgmax(t.shape);
    const out = this.out(t.shape.slice(0, -1), "i32");
    this.graph.record([t], [out], (w) => {
      if (out.size === 0) return;
      encode.argmax(w, out.address(), t.address(), out.size, n);
    });
    return out;
  }

  /**
   * Drawing inside the step runs the host sampler's own code where the logits already are, and spares copying
   * them out: 16 rows of a 151,936-token vocabulary are 9.7 MB a step.
   */
  drawPays(_temperature: number): boolean {
    return true;
  }

  /** One token a row by the host sampler's rule (rmlx_sample), inside the step. */
  drawRows(logits: Tensor, draws: readonly RowDraw[]): Tensor {
    const t = this.floatArg(logits, "drawRows");
    if (t.shape.length !== 2 || t.shape[0] !== draws.length || t.shape[1]! < 1) {
      invalid(`drawRows: logits ${fmt(t.shape)} for ${draws.length} draws`);
    }
    const V = t.shape[1]!;
    const params = new Float64Array(6 * draws.length);
    const masked = draws.filter((d) => d.allowed).length;
    const masks = new Uint8Array(masked * V);
    let at = 0;
    draws.forEach((d, i) => {
      params.set([d.temperature, d.topP, d.topK, d.minP, d.u, d.allowed ? at : -1], 6 * i);
      if (!d.allowed) return;
      if (d.allowed.length !== V) invalid(`drawRows: a mask of ${d.allowed.length} tokens for ${V} logits`);
      masks.set(d.allowed, at);
      at += V;
    });
    const out = this.out([draws.length], "i32");
    this.graph.record(
      [t],
      [out],
      (w, host) => {
        if (out.size === 0) return;
        encode.draw(w, out.address(), t.address(), draws.length, V, host[0]!, masked > 0 ? host[1]! : 0);
      },
      masked > 0 ? [params, masks] : [params],
    );
    return out;
  }

  topk(x: Tensor, k: number): { values: Tensor; indices: Tensor } {
    const t = this.floatArg(x, "topk");
    const n = checkTopk(t.shape, k);
    const shape = [...t.shape.slice(0, -1), k];
    const values = this.out(shape);
    const indices = this.out(shape, "i32");
    const rows = t.size / n;
    this.graph.record([t], [values, indices], (w) => {
      if (values.size === 0) return;
      encode.topk(w, values.address(), indices.address(), t.address(), rows, n, k);
    });
    return { values, indices };
  }

  // ---------------------------------------------------------------- normalisation and position

  private normWeight(w: Tensor | null, n: number, what: string): NTensor | null {
    if (!w) return null;
    const t = this.arg(w, what);
    checkNormWeight(t, n, what);
    return t;
  }

  rmsNorm(x: Tensor, w: Tensor | null, eps: number, onePlus = false): Tensor {
    const t = this.floatArg(x, "rmsNorm");
    const n = normAxisLength(t.shape, "rmsNorm");
    const wt = this.normWeight(w, n, "rmsNorm");
    const out = this.out(t.shape);
    const rows = n ? t.size / n : 0;
    this.graph.record(wt ? [t, wt] : [t], [out], (p) => {
      if (out.size === 0) return;
      encode.rmsNorm(p, out.address(), t.address(), wt ? wt.address() : 0, wt ? DT[wt.dtype] : 0, rows, n, eps, onePlus);
    });
    return out;
  }

  layerNorm(x: Tensor, w: Tensor | null, b: Tensor | null, eps: number): Tensor {
    const t = this.floatArg(x, "layerNorm");
    const n = normAxisLength(t.shape, "layerNorm");
    const wt = this.normWeight(w, n, "layerNorm");
    const bt = this.normWeight(b, n, "layerNorm bias");
    const out = this.out(t.shape);
    const rows = n ? t.size / n : 0;
    const inputs = [t];
    if (wt) inputs.push(wt);
    if (bt) inputs.push(bt);
    this.graph.record(inputs, [out], (p) => {
      if (out.size === 0) return;
      const wa = wt ? wt.address() : 0;
      const ba = bt ? bt.address() : 0;
      encode.layerNorm(p, out.address(), t.address(), wa, wt ? DT[wt.dtype] : 0, ba, bt ? DT[bt.dtype] : 0, rows, n, eps);
    });
    return out;
  }

  rope(x: Tensor, positions: Int32Array, opts: RopeOptions): Tensor {
    const t = this.floatArg(x, "rope");
    checkRope(t, positions, opts);
    const [T, H, D] = t.shape as [number, number, number];
    const table = this.ropeTables.table(positions, this.ropeTables.invFreq(opts), opts.scale, opts.mscale ?? 1);
    const out = this.out(t.shape);
    const dims = opts.dims;
    const traditional = opts.traditional;
    this.graph.record([t, table], [out], (p) => {
      if (out.size === 0) return;
      encode.rope(p, out.address(), t.address(), table.address(), T, H, D, dims, traditional);
    });
    return out;
  }

  // ---------------------------------------------------------------- attention

  createKvPool(numBlocks: number, blockSize: number, kvHeads: number, headDim: number, format: DType | KvFormat): KvPool {
    checkKvPool(numBlocks, blockSize, kvHeads, headDim, format);
    const f = kvPoolFormat(format);
    const lead = [numBlocks, blockSize, kvHeads];
    const side = (e: KvElement) => {
      if (e.kind === "float") return { data: this.allocPersistent([...lead, headDim], e.dtype) as NTensor };
      const groups = kvElementGroups(e, headDim);
      return {
        data: this.allocPersistent([...lead, (headDim * kvElementBits(e)) / 8], "u8") as NTensor,
        scales: this.allocPersistent([...lead, groups], "f16") as NTensor,
        biases: e.kind === "affine" ? (this.allocPersistent([...lead, groups], "f16") as NTensor) : undefined,
      };
    };
    const k = side(f.k);
    const v = side(f.v);
    const parts = [k.data, k.scales, k.biases, v.data, v.scales, v.biases].filter((t): t is NTensor => t !== undefined);
    const pool: NKvPool = {
      k: k.data,
      v: v.data,
      kScales: k.scales,
      kBiases: k.biases,
      vScales: v.scales,
      vBiases: v.biases,
      format: f,
      parts,
      plain: plainKvDtype(f) !== null,
      numBlocks,
      blockSize,
      kvHeads,
      headDim,
      lastWrite: null,
      readers: [],
    };
    return pool;
  }

  populateKvPool(p: KvPool, firstBlock = 0, endBlock = p.numBlocks): void {
    const first = Math.max(0, firstBlock), end = Math.min(p.numBlocks, endBlock);
    if (end <= first) return;
    // Every part is [blocks * ..., ...]: a block is the same share of each.
    for (const t of this.pool(p, "populateKvPool").parts) {
      const per = t.nbytes / p.numBlocks;
      nativePopulate(t.addr + first * per, (end - first) * per);
    }
  }

  /** The KvPage records of a pool's two sides. */
  private pages(pool: NKvPool): [encode.KvPage, encode.KvPage] {
    const p = pool as NKvPool & { kScales?: NTensor; kBiases?: NTensor; vScales?: NTensor; vBiases?: NTensor };
    return [kvPage(pool.format.k, pool.k, p.kScales, p.kBiases), kvPage(pool.format.v, pool.v, p.vScales, p.vBiases)];
  }

  private pool(p: KvPool, what: string): NKvPool {
    const pool = p as NKvPool;
    if (!(pool.k instanceof NTensor) || !Array.isArray(pool.readers) || !Array.isArray(pool.parts)) {
      invalid(`${what}: not a KV pool of the native backend`);
    }
    for (const t of pool.parts) this.arg(t, what);
    return pool;
  }

  kvWrite(p: KvPool, k: Tensor, v: Tensor, slots: Int32Array): void {
    const pool = this.pool(p, "kvWrite");
    const kt = this.floatArg(k, "kvWrite");
    const vt = this.floatArg(v, "kvWrite");
    const T = checkKvWrite(pool, kt, vt, slots);
    if (T === 0) return;
    const row = pool.kvHeads * pool.headDim;
    const numSlots = pool.numBlocks * pool.blockSize;
    this.graph.write(
      pool,
      [kt, vt],
      (w, host) => {
        const { k, v } = pool;
        if (pool.plain) {
          encode.kvWrite(w, k.address(), v.address(), DT[k.dtype], kt.address(), vt.address(), host[0]!, T, row, numSlots);
        } else {
          const [kp, vp] = this.pages(pool);
          encode.kvWritePage(w, kp, vp, kt.address(), vt.address(), host[0]!, T, pool.kvHeads, pool.headDim, numSlots);
        }
      },
      [slots.slice()],
    );
  }

  copyBlock(p: KvPool, src: number, dst: number): void {
    const pool = this.pool(p, "copyBlock");
    checkCopyBlock(pool, src, dst);
    if (src === dst) return;
    this.graph.write(pool, [], (w) => {
      for (const t of pool.parts) {
        const bytes = t.nbytes / pool.numBlocks;
        encode.memcpy(w, t.address() + dst * bytes, t.address() + src * bytes, bytes);
      }
    });
  }

  readKvBlock(p: KvPool, block: number, into?: Uint8Array): Uint8Array {
    const pool = this.pool(p, "readKvBlock");
    checkKvBlockIo("readKvBlock", pool, block, into);
    this.graph.eval([]);
    const out = into ?? new Uint8Array(kvBlockBytes(pool));
    let at = 0;
    for (const t of pool.parts) {
      const bytes = t.nbytes / pool.numBlocks;
      out.set(bytesAt(t.address() + block * bytes, bytes), at);
      at += bytes;
    }
    return out;
  }

  writeKvBlock(p: KvPool, block: number, bytes: Uint8Array): void {
    const pool = this.pool(p, "writeKvBlock");
    checkKvBlockIo("writeKvBlock", pool, block, bytes);
    this.graph.eval([]);
    if (pool.readers.every((r) => r.done)) {
      // Nothing recorded reads the pool still: the bytes go straight in, without a program per block.
      let at = 0;
      for (const t of pool.parts) {
        const n = t.nbytes / pool.numBlocks;
        bytesAt(t.address() + block * n, n).set(bytes.subarray(at, at + n));
        at += n;
      }
      return;
    }
    // The node keeps its own copy (whole i32 words) until the program has run.
    const host = new Int32Array(Math.ceil(bytes.byteLength / 4));
    new Uint8Array(host.buffer).set(bytes);
    this.graph.write(
      pool,
      [],
      (w, addrs) => {
        let at = 0;
        for (const t of pool.parts) {
          const n = t.nbytes / pool.numBlocks;
          encode.memcpy(w, t.address() + block * n, addrs[0]! + at, n);
          at += n;
        }
      },
      [host],
    );
  }

  // ---------------------------------------------------------------- linear attention

  createStatePool(numSlots: number, spec: StateSpec): StatePool {
    const layout = statePoolLayout(numSlots, spec);
    const pool: NStatePool = {
      ...layout.spec,
      conv: this.allocPersistent(layout.conv, "f32") as NTensor,
      delta: this.allocPersistent(layout.delta, "f32") as NTensor,
      lastWrite: null,
      readers: [],
    };
    return pool;
  }

  private statePool(p: StatePool, what: string): NStatePool {
    const pool = p as NStatePool;
    if (!(pool.conv instanceof NTensor) || !Array.isArray(pool.readers)) invalid(`${what}: not a state pool of the native backend`);
    this.arg(pool.conv, what);
    this.arg(pool.delta, what);
    return pool;
  }

  causalConv1d(x: Tensor, w: Tensor, p: StatePool, batch: RecurrentBatch): Tensor {
    const pool = this.statePool(p, "causalConv1d");
    const xt = this.floatArg(x, "causalConv1d");
    const wt = this.floatArg(w, "causalConv1d");
    checkCausalConv(xt, wt, pool);
    const T = xt.shape[0]!;
    const numSeqs = checkRecurrentBatch("causalConv1d", pool, batch, T);
    const out = this.out(xt.shape);
    this.graph.update(
      pool,
      [xt, wt],
      [out],
      (e, host) => {
        const C = pool.convDim;
        encode.causalConv1d(e, out.address(), xt.address(), wt.address(), pool.conv.address(), host[0]!, host[1]!, host[2]!, numSeqs, C, pool.kernel, pool.numSlots);
      },
      [batch.seqStart.slice(), batch.slots.slice(), batch.fresh.slice()],
    );
    return out;
  }

  gatedDelta(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, p: StatePool, batch: RecurrentBatch, chunk = 64): Tensor {
    const pool = this.statePool(p, "gatedDelta");
    const [qt, kt, vt, gt, bt] = [q, k, v, g, beta].map((t) => this.floatArg(t, "gatedDelta")) as [NTensor, NTensor, NTensor, NTensor, NTensor];
    const T = checkGatedDelta(qt, kt, vt, gt, bt, pool);
    const numSeqs = checkRecurrentBatch("gatedDelta", pool, batch, T);
    if (!Number.isInteger(chunk) || chunk < 0) invalid(`gatedDelta: chunk ${chunk}`);
    const out = this.out([T, pool.valueHeads, pool.valueDim]);
    this.graph.update(
      pool,
      [qt, kt, vt, gt, bt],
      [out],
      (e, host) => {
        encode.gatedDelta(e, out.address(), qt.address(), kt.address(), vt.address(), gt.address(), bt.address(), pool.delta.address(), host[0]!, host[1]!, host[2]!, numSeqs, pool.keyHeads, pool.valueHeads, pool.keyDim, pool.valueDim, pool.numSlots, chunk);
      },
      [batch.seqStart.slice(), batch.slots.slice(), batch.fresh.slice()],
    );
    return out;
  }

  copyStateSlot(p: StatePool, src: number, dst: number): void {
    const pool = this.statePool(p, "copyStateSlot");
    for (const s of [src, dst]) if (!Number.isInteger(s) || s < 0 || s >= pool.numSlots) invalid(`copyStateSlot: slot ${s} outside the pool's ${pool.numSlots}`);
    if (src === dst) return;
    this.graph.write(pool, [], (e) => {
      for (const t of [pool.conv, pool.delta]) {
        const size = t.size / pool.numSlots;
        encode.stateCopy(e, t.address(), size, pool.numSlots, src, dst);
      }
    });
  }

  stateSlotBytes(p: StatePool): number {
    const pool = this.statePool(p, "stateSlotBytes");
    return (pool.conv.nbytes + pool.delta.nbytes) / pool.numSlots;
  }

  readStateSlot(p: StatePool, slot: number, out: Uint8Array): void {
    const pool = this.statePool(p, "readStateSlot");
    const [convBytes, deltaBytes] = this.stateSlotParts(pool, slot, out.byteLength, "readStateSlot");
    // Every recorded state update runs first: the slot is read as of the last step.
    this.graph.eval([]);
    out.set(bytesAt(pool.conv.address() + slot * convBytes, convBytes), 0);
    out.set(bytesAt(pool.delta.address() + slot * deltaBytes, deltaBytes), convBytes);
  }

  writeStateSlot(p: StatePool, slot: number, data: Uint8Array): void {
    const pool = this.statePool(p, "writeStateSlot");
    const [convBytes, deltaBytes] = this.stateSlotParts(pool, slot, data.byteLength, "writeStateSlot");
    // A copy the node owns until it has run, so the caller may reuse its buffer.
    const copy = new Float32Array((convBytes + deltaBytes) / 4);
    new Uint8Array(copy.buffer).set(data);
    this.graph.write(
      pool,
      [],
      (e, host) => {
        encode.memcpy(e, pool.conv.address() + slot * convBytes, host[0]!, convBytes);
        encode.memcpy(e, pool.delta.address() + slot * deltaBytes, host[0]! + convBytes, deltaBytes);
      },
      [copy],
    );
  }

  /** Bytes of one slot's conv and delta state, after checking the slot and the caller's buffer. */
  private stateSlotParts(pool: NStatePool, slot: number, nbytes: number, what: string): [number, number] {
    if (!Number.isInteger(slot) || slot < 0 || slot >= pool.numSlots) invalid(`${what}: slot ${slot} outside the pool's ${pool.numSlots}`);
    const convBytes = pool.conv.nbytes / pool.numSlots;
    const deltaBytes = pool.delta.nbytes / pool.numSlots;
    if (nbytes !== convBytes + deltaBytes) invalid(`${what}: ${nbytes} bytes for a slot of ${convBytes + deltaBytes}`);
    return [convBytes, deltaBytes];
  }

  pagedAttention(q: Tensor, p: KvPool, batch: AttentionBatch, opts: AttentionOptions): Tensor {
    const pool = this.pool(p, "pagedAttention");
    const qt = this.floatArg(q, "pagedAttention");
    checkPagedAttention(qt, pool, batch);
    const [T, H] = qt.shape as [number, number, number];
    const { maxBlocks } = batch;
    const numSeqs = batch.seqLens.length;
    const scale = opts.scale;
    const window = opts.window ?? 0;
    const softcap = opts.softcap ?? 0;
    const out = this.out(qt.shape);
    this.graph.read(
      pool,
      [qt, ...pool.parts],
      [out],
      (w, host) => {
        if (out.size === 0) return;
        const { k, v, blockSize, kvHeads, headDim, numBlocks } = pool;
        if (!pool.plain) {
          const [kp, vp] = this.pages(pool);
          encode.pagedAttentionPage(
            w,
            out.address(),
            qt.address(),
            kp,
            vp,
            blockSize,
            kvHeads,
            headDim,
            numBlocks,
            host[0]!,
            maxBlocks,
            host[1]!,
            host[2]!,
            host[3]!,
            numSeqs,
            T,
            H,
            scale,
            window,
            softcap,
          );
          return;
        }
        encode.pagedAttention(
          w,
          out.address(),
          qt.address(),
          k.address(),
          v.address(),
          DT[k.dtype],
          blockSize,
          kvHeads,
          headDim,
          numBlocks,
          host[0]!,
          maxBlocks,
          host[1]!,
          host[2]!,
          host[3]!,
          numSeqs,
          T,
          H,
          scale,
          window,
          softcap,
        );
      },
      [batch.blockTables.slice(), batch.tokenSeq.slice(), batch.positions.slice(), batch.seqLens.slice()],
    );
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
    const out = this.out(qt.shape);
    this.graph.record([qt, kt, vt], [out], (w) => {
      if (out.size === 0) return;
      encode.sdpa(w, out.address(), qt.address(), kt.address(), vt.address(), B, H, Hkv, L, S, D, scale, causal);
    });
    return out;
  }

  varlenAttention(q: Tensor, k: Tensor, v: Tensor, seqStart: Int32Array, opts: VarlenAttentionOptions): Tensor {
    const [qt, kt, vt] = [q, k, v].map((t) => this.floatArg(t, "varlenAttention")) as [NTensor, NTensor, NTensor];
    const numSeqs = checkVarlenAttention(qt, kt, vt, seqStart, opts);
    const [T, H, D] = qt.shape as [number, number, number];
    const out = this.out(qt.shape);
    this.graph.record(
      [qt, kt, vt],
      [out],
      (w, host) => {
        if (out.size === 0) return;
        encode.varlenAttention(w, out.address(), qt.address(), kt.address(), vt.address(), host[0]!, numSeqs, T, H, kt.shape[1]!, D, opts.scale, opts.causal, opts.window ?? 0);
      },
      [seqStart.slice()],
    );
    return out;
  }
}
