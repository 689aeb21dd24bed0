// The mlx Backend: every op is one or a few mlx-c calls that record into MLX's lazy graph; eval() is one mlx_eval
// over the requested results and the KV pools written since. Activations are in one compute dtype per instance:
// f32 (as on the native backend, what the reference tests use) or the model's own dtype, as mlx-lm computes, so
// that a bf16 weight meets a bf16 activation and is never widened on a step (withComputeDtype gives the instance
// for a model); weights keep their stored dtype or quantized format. Handles made inside a
// scope are freed when it ends: MLX counts references, so a lazy result that leaves the scope keeps the graph it
// needs alive and the rest goes at once.
import { read, toArrayBuffer } from "bun:ffi";
import {
  type AttentionBatch,
  type AttentionOptions,
  type Backend,
  DTYPE_BYTES,
  type DType,
  type KvPool,
  kvBlockBytes,
  type QuantMode,
  type QuantizedWeight,
  type RecurrentBatch,
  type RopeOptions,
  type RowDraw,
  type StatePool,
  type StateSpec,
  type Tensor,
  type TernaryWeight,
  type Weight,
  isQuantized,
  type VarlenAttentionOptions,
} from "../backend.ts";
import * as args from "../args.ts";
import type { ComputeDtypeMode } from "../choice.ts";
import { type KvElement, type KvFormat } from "../../quant/kv_codec.ts";
import { fmt, invalid } from "../args.ts";
import { RmlxError } from "../../errors.ts";
import { composedVarlenAttention } from "../varlen.ts";
import { drawRows } from "./draw.ts";
import { CompiledFunctions } from "./compiled.ts";
import { Graph, LastRows, LinearAttention, type PoolRows, type StateOp } from "./linear_attn.ts";
import { MLX_DTYPE, NONE, cstr, handles, ints, loadMlx, optInt, outSlot, readSlot, spareHandle, takeSpares, type MlxLib, type MlxSymbols } from "./lib.ts";
import { MTensor } from "./tensor.ts";

const TO_MLX: Record<DType, number> = {
  f32: MLX_DTYPE.f32,
  f16: MLX_DTYPE.f16,
  bf16: MLX_DTYPE.bf16,
  u32: MLX_DTYPE.u32,
  u8: MLX_DTYPE.u8,
  i32: MLX_DTYPE.i32,
};
const FROM_MLX = new Map<number, DType>([
  [MLX_DTYPE.f32, "f32"],
  [MLX_DTYPE.f16, "f16"],
  [MLX_DTYPE.bf16, "bf16"],
  [MLX_DTYPE.u32, "u32"],
  [MLX_DTYPE.u8, "u8"],
  [MLX_DTYPE.bool, "u8"],
  [MLX_DTYPE.i32, "i32"],
]);
const EMPTY = new Uint8Array(8);
const VERIFY = process.env.RMLX_MLX_VERIFY === "1";
const MAX_MAPPING = 2 ** 31 - 1;
/** i32 inputs up to this many elements keep a host copy for range checks (token ids, expert indices). */
const HOST_IDS_MAX = 1 << 16;

const MODE_NAMES: Record<QuantMode, Uint8Array> = {
  affine: cstr("affine"),
  mxfp4: cstr("mxfp4"),
  mxfp8: cstr("mxfp8"),
  nvfp4: cstr("nvfp4"),
};
const MASK_NONE = cstr("");
const TRANSPOSE_2D = Int32Array.of(1, 0);
/** Unit strides of a 2-d slice. */
const ONES2 = Int32Array.of(1, 1);
const MASK_CAUSAL = cstr("causal");
const MASK_ARRAY = cstr("array");

/** The formats a side of an mlx pool can take: MLX's quantize has no FP8-with-f16-scale or rotated codes. */
type MKvElement = Extract<KvElement, { kind: "float" } | { kind: "affine" }>;

/** One side (keys or values) of a pool: float rows, or affine codes (u8) with their f16 scales and biases. */
interface MKvSide {
  readonly e: MKvElement;
  readonly data: MTensor;
  readonly scales?: MTensor;
  readonly biases?: MTensor;
}

interface MKvPool extends KvPool {
  readonly k: MTensor;
  readonly v: MTensor;
  readonly format: KvFormat;
  readonly sides: readonly [MKvSide, MKvSide];
  /** Every tensor of the pool, in the order readKvBlock lays them out. */
  readonly parts: readonly MTensor[];
  readonly mlxPool: true;
}

/** A ternary weight's codes as MLX multiplies them (see ternaryForm). */
type TernaryForm = { w: MTensor; scales: MTensor; biases: MTensor; groupSize: number } | { t: MTensor };

/**
 * Where a paged-attention step's rows go: B sequences padded to Lq queries and S keys; rowIdx [B * kvHeads * S] the
 * pool row (slot * kvHeads + head) of each key of each KV head, qIdx [B * Lq] the step token of each query row,
 * outIdx [T] the row of each token, mask [B, Lq, S].
 */
interface PagedGather {
  readonly B: number;
  readonly Lq: number;
  readonly S: number;
  /** i32 [B, kvHeads, S]: the pool row (slot * kvHeads + head) of each key (gatherIndex). */
  readonly idx: number;
  readonly qIdx: Int32Array;
  readonly outIdx: Int32Array;
  /** bool [B, 1, Lq, S]: which keys each query row sees. */
  readonly mask: number;
}

/**
 * Bytes of f32 scores one product of packed attention may hold: a prefill chunk over a long context attends in
 * runs of query positions of about this many scores (the full [seqs, heads, Lq, S] matrix can reach gigabytes).
 */
const SCORE_BYTES = 64 << 20;

/** The largest scoped result whose handle is kept for reuse, and the most bytes kept that way between evals. */
const SPARE_RESULT_BYTES = 1 << 20;
const SPARE_BYTES = 32 << 20;

/** The group sizes mx.quantize takes. */
const MLX_QUANT_GROUPS = [32, 64, 128];

interface MStatePool extends StatePool {
  readonly conv: MTensor;
  readonly delta: MTensor;
  /** The rows the last ops wrote, which steps read instead of the pool (see LastRows). */
  readonly convRows: LastRows;
  readonly deltaRows: LastRows;
  readonly mlxState: true;
}

/** Bytes of step arrays (StepArrays) kept between steps. */
const STEP_ARRAY_BYTES = 64 * 2 ** 20;

/** Whether two lists of the same number of host tables hold the same values. */
function sameTables(a: readonly Int32Array[], b: readonly Int32Array[]): boolean {
  for (let t = 0; t < a.length; t++) {
    const x = a[t]!;
    const y = b[t]!;
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  }
  return true;
}

/**
 * Arrays built from a step's host tables (rope's positions, attention's gather indices and masks), kept while the
 * tables stay the same: every layer of a step asks for them again, and building one can be O(context) host work.
 * Compared by value, not by object, so a caller that reuses its tables is safe.
 */
class StepArrays {
  private readonly entries: { key: string; tables: Int32Array[]; h: number; bytes: number }[] = [];
  private bytes = 0;

  constructor(private readonly free: (h: number) => void) {}

  /** The array for these tables, made by make() (its handle and size) when none is kept. */
  get(key: string, tables: readonly Int32Array[], make: () => { h: number; bytes: number }): number {
    // Every layer of a step asks for the same arrays in turn: searched from the newest.
    for (let at = this.entries.length - 1; at >= 0; at--) {
      const e = this.entries[at]!;
      if (e.key !== key || !sameTables(e.tables, tables)) continue;
      // Most recent last: an array just handed out is never the next one let go.
      if (at !== this.entries.length - 1) {
        this.entries.splice(at, 1);
        this.entries.push(e);
      }
      return e.h;
    }
    const made = make();
    this.entries.push({ key, tables: tables.map((t) => t.slice()), ...made });
    this.bytes += made.bytes;
    // A step's spaces and geometries (a windowed space, Gemma's two head sizes, a draft model's) each keep theirs,
    // within a bound on what stays held between steps; the two newest (one attention call's) always stay.
    while (this.entries.length > 2 && (this.entries.length > 8 || this.bytes > STEP_ARRAY_BYTES)) {
      const old = this.entries.shift()!;
      this.bytes -= old.bytes;
      this.free(old.h);
    }
    return made.h;
  }
}

/** A quantized weight as the products take it (quantArgs). */
interface QuantArgs {
  readonly wt: MTensor;
  readonly sc: MTensor;
  readonly bi: MTensor | null;
  /** Inputs and outputs of the product. */
  readonly K: number;
  readonly N: number;
  readonly optBits: bigint;
  readonly optGroup: bigint;
  readonly modeName: Uint8Array;
  /** The dtype of MLX's product of an x in the compute dtype (qmmDtype). */
  readonly outDtype: DType;
}

/**
 * What paged attention derives from a step's batch alone: queries padded to Lq a sequence and keys to S, each
 * token's rank in its sequence, the padded row of each token (qIdx, outIdx), and whether the step is one
 * sequence's last tokens in order (queries and outputs in place, MLX's own causal mask when there is no window).
 */
interface AttentionPlan {
  /** Copies of the batch's tokenSeq, positions, seqLens and blockTables it was made from. */
  readonly tables: readonly Int32Array[];
  readonly bs: number;
  readonly maxBlocks: number;
  readonly Lq: number;
  readonly S: number;
  readonly rank: Int32Array;
  readonly qIdx: Int32Array;
  readonly outIdx: Int32Array;
  readonly inPlace: boolean;
}

/** Handles made inside one op that only its result needs: freed once the result is recorded. */
class Temps {
  readonly hs: number[] = [];
  add(h: number): number {
    this.hs.push(h);
    return h;
  }
}

export class MlxBackend implements Backend {
  readonly name = "mlx";
  readonly device: string;
  readonly lib: MlxLib;

  private readonly S: MlxSymbols;
  private readonly stream: number;
  private readonly compiled: CompiledFunctions;
  private scopes: MTensor[][] = [];
  private readonly dirtyPools = new Set<MKvPool>();
  private readonly dirtyStates = new Set<MStatePool>();
  private readonly unscoped = new FinalizationRegistry<number>((h) => {
    this.S.mlx_array_free(h);
  });
  private readonly freqArrays = new WeakMap<Float32Array, number>();
  private readonly ternaryForms = new WeakMap<TernaryWeight, TernaryForm>();
  private readonly mappings = new WeakMap<ArrayBufferLike, number>();
  private readonly mappingRelease = new FinalizationRegistry<number>((h) => {
    this.S.mlx_array_free(h);
  });
  private readonly invFreqs = new Map<string, Float32Array>();
  private readonly normCache = new WeakMap<MTensor, { plain?: number; plus?: number }>();
  private pendingError: string | null = null;
  private evalMs = 0;
  /** Bytes of scoped results given to the spare handles since the last eval (releaseScoped). */
  private spareBytes = 0;
  private readonly quantChecked = new WeakMap<QuantizedWeight, QuantArgs>();
  private readonly transposes = new WeakMap<MTensor, { h: number }>();
  /** The attention plans of the latest steps, newest last. */
  private readonly plans: AttentionPlan[] = [];
  /** Rope's positions, attention's gather indices and masks of the latest steps. */
  private readonly stepArrays = new StepArrays((h) => this.free(h));

  /** The dtype every activation is computed in (inputs of another float dtype are cast to it first). */
  readonly computeDtype: "f32" | "f16" | "bf16";
  private readonly adt: number;
  private readonly siblings: Map<string, MlxBackend>;
  /** Scalars in the compute dtype, made once: a scalar op costs one call instead of three. */
  private readonly scalars = new Map<number, number>();

  constructor(libPath?: string, computeDtype: "f32" | "f16" | "bf16" = "f32", siblings?: Map<string, MlxBackend>) {
    this.computeDtype = computeDtype;
    this.adt = TO_MLX[computeDtype];
    this.siblings = siblings ?? new Map([[computeDtype, this]]);
    this.lib = loadMlx(libPath);
    this.S = this.lib.sym;
    this.stream = Number(this.lib.metal ? this.S.mlx_default_gpu_stream_new() : this.S.mlx_default_cpu_stream_new());
    this.compiled = new CompiledFunctions(this.S, () => this.lib.takeError());
    this.device = `${this.lib.metal ? "Apple GPU (Metal)" : "CPU"} through MLX ${this.lib.version} (${this.lib.path})`;
  }

  forModel(modelDtype: DType, mode: ComputeDtypeMode): MlxBackend | undefined {
    const own = mode === "model" || (mode === "auto" && this.lib.metal);
    const dt = own ? modelDtype : "f32";
    return dt === this.computeDtype ? undefined : this.withComputeDtype(dt);
  }

  /** The instance that computes activations in dtype (one per dtype, sharing the library and its caches). */
  withComputeDtype(dtype: DType): MlxBackend {
    if (dtype !== "f32" && dtype !== "f16" && dtype !== "bf16") invalid(`withComputeDtype: ${dtype} is not a float dtype`);
    let b = this.siblings.get(dtype);
    if (!b) {
      b = new MlxBackend(this.lib.path, dtype, this.siblings);
      this.siblings.set(dtype, b);
    }
    return b;
  }

  /**
   * Milliseconds spent inside mlx_eval and mlx_async_eval (computing, or waiting for the device), for the host
   * share of a step.
   */
  get computeMs(): number {
    return this.evalMs;
  }

  // ---------------------------------------------------------------- handles

  private fail(what: string, code: "invalid_argument" | "native" = "invalid_argument"): never {
    const msg = this.lib.takeError().replace(/\s+/g, " ").trim() || "mlx-c reported an error";
    throw new RmlxError(code, `${what}: ${msg}`);
  }

  /** The handle an mlx-c call wrote to the out-slot, or an RmlxError with MLX's message. */
  private res(status: number, what: string): number {
    if (status !== 0) this.fail(what);
    return readSlot();
  }

  private free(h: number): void {
    if (h) this.S.mlx_array_free(h);
  }

  /** Frees the handles kept for reuse, and with them the last arrays they hold. */
  private freeSpares(): void {
    for (const h of takeSpares()) this.S.mlx_array_free(h);
    this.spareBytes = 0;
  }

  /** Temps go to the spare handles: the next calls reuse them, and an eval frees what is left. */
  private freeAll(t: Temps): void {
    for (const h of t.hs) if (h) spareHandle(h);
    t.hs.length = 0;
  }

  private shapeOf(h: number): number[] {
    const nd = Number(this.S.mlx_array_ndim(h));
    if (nd === 0) return [];
    const p = this.S.mlx_array_shape(h);
    const out = new Array<number>(nd);
    for (let i = 0; i < nd; i++) out[i] = read.i32(p!, 4 * i);
    return out;
  }

  /**
   * Wraps a fresh handle as a tensor owned by the current scope (or by the garbage collector outside any). Ops that
   * know their result's shape and dtype pass them, which saves three mlx-c calls a result (RMLX_MLX_VERIFY=1
   * checks them against MLX's, for the tests).
   */
  private wrap(h: number, shape?: readonly number[], dtype?: DType): MTensor {
    let dt = dtype;
    if (dt === undefined || VERIFY) {
      const got = FROM_MLX.get(this.S.mlx_array_dtype(h));
      if (got === undefined) {
        this.free(h);
        throw new RmlxError("internal", `mlx backend: unexpected dtype ${this.S.mlx_array_dtype(h)}`);
      }
      if (dt !== undefined && dt !== got) throw new RmlxError("internal", `mlx backend: result is ${got}, expected ${dt}`);
      dt = got;
    }
    let sh = shape;
    if (sh === undefined || VERIFY) {
      const got = this.shapeOf(h);
      if (sh !== undefined && fmt(sh) !== fmt(got)) throw new RmlxError("internal", `mlx backend: result is ${fmt(got)}, expected ${fmt(sh)}`);
      sh = got;
    }
    const t = new MTensor(h, sh, dt);
    const top = this.scopes[this.scopes.length - 1];
    if (top) {
      t.scoped = true;
      top.push(t);
    } else {
      this.unscoped.register(t, h, t);
    }
    return t;
  }

  private arg(x: Tensor, what: string): MTensor {
    if (!(x instanceof MTensor)) invalid(`${what}: not a tensor of the mlx backend`);
    if (!x.h) invalid(`${what}: tensor ${fmt(x.shape)} is gone (used after its scope ended or disposed)`);
    if (x.error) invalid(x.error);
    return x;
  }

  /** x's handle in the compute dtype (a new handle the caller frees when a cast was needed). */
  private f32(x: MTensor, tmp: Temps): number {
    if (x.dtype === this.computeDtype) return x.h;
    return tmp.add(this.res(this.S.mlx_astype(outSlot(), x.h, this.adt, this.stream), "astype"));
  }

  /**
   * A scalar in the compute dtype, kept for the life of the backend (a strong f32 scalar would promote a bf16
   * stream back to f32, which MLX's weak Python scalars never do).
   */
  private scalar(v: number): number {
    let h = this.scalars.get(v);
    if (h === undefined) {
      const f = Number(this.S.mlx_array_new_float32(v));
      if (this.adt === MLX_DTYPE.f32) h = f;
      else {
        h = this.res(this.S.mlx_astype(outSlot(), f, this.adt, this.stream), "scalar");
        this.free(f);
        if (this.S.mlx_array_eval(h) !== 0) this.fail("scalar", "native");
      }
      if (this.scalars.size < 1024) this.scalars.set(v, h);
      else this.unscoped.register({}, h);
    }
    return h;
  }

  /**
   * Runs build with a temp list and wraps the handle it returns (taken out of the temps if it is one; it must
   * never be an input's own handle), freeing the other temps whatever happens.
   */
  private op(build: (tmp: Temps) => number, shape?: readonly number[], dtype?: DType): MTensor {
    const tmp = new Temps();
    try {
      const h = build(tmp);
      const i = tmp.hs.lastIndexOf(h);
      if (i >= 0) tmp.hs.splice(i, 1);
      return this.wrap(h, shape, dtype);
    } finally {
      this.freeAll(tmp);
    }
  }

  private raw = {
    reshape: (h: number, shape: readonly number[], tmp: Temps) =>
      tmp.add(this.res(this.S.mlx_reshape(outSlot(), h, ints(shape), shape.length, this.stream), "reshape")),
    transpose: (h: number, axes: readonly number[], tmp: Temps) =>
      tmp.add(this.res(this.S.mlx_transpose_axes(outSlot(), h, ints(axes), axes.length, this.stream), "transpose")),
    take: (h: number, idx: number, axis: number, tmp: Temps) =>
      tmp.add(this.res(this.S.mlx_take_axis(outSlot(), h, idx, axis, this.stream), "take")),
    astype: (h: number, dt: number, tmp: Temps) => tmp.add(this.res(this.S.mlx_astype(outSlot(), h, dt, this.stream), "astype")),
    bin: (f: "mlx_add" | "mlx_subtract" | "mlx_multiply" | "mlx_divide" | "mlx_matmul" | "mlx_power", a: number, b: number, tmp: Temps) =>
      tmp.add(this.res(this.S[f](outSlot(), a, b, this.stream), f.slice(4))),
    un: (f: "mlx_sigmoid" | "mlx_tanh" | "mlx_erf", a: number, tmp: Temps) => tmp.add(this.res(this.S[f](outSlot(), a, this.stream), f.slice(4))),
    data: (data: ArrayBufferView, shape: readonly number[], dt: number, tmp: Temps) =>
      tmp.add(Number(this.S.mlx_array_new_data(data.byteLength ? data : EMPTY, ints(shape), shape.length, dt))),
  };

  // ---------------------------------------------------------------- creation and read-back

  fromArray(data: Float32Array | Int32Array | Uint32Array | Uint16Array | Uint8Array, shape: readonly number[], dtype: DType): Tensor {
    args.checkShape(shape, "fromArray");
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.byteLength !== n * DTYPE_BYTES[dtype]) invalid(`fromArray: ${data.byteLength} bytes for ${dtype} ${fmt(shape)} (${n * DTYPE_BYTES[dtype]} bytes)`);
    const h = Number(this.S.mlx_array_new_data(data.byteLength ? data : EMPTY, ints(shape), shape.length, TO_MLX[dtype]));
    if (!h) this.fail("fromArray");
    const t = this.wrap(h);
    if (dtype === "i32" && n <= HOST_IDS_MAX) t.host = new Int32Array(data.buffer, data.byteOffset, n).slice();
    return t;
  }

  /**
   * The whole buffer under a weight (the mmapped file or window) as one u8 array, made once: its start is page
   * aligned, so Metal's allocator can use the pages in place, and each tensor is then a view into it.
   */
  private mapping(buf: ArrayBufferLike): number {
    let h = this.mappings.get(buf);
    if (h === undefined) {
      // The destructor is mlx_array_free on a null handle, a no-op: the bytes belong to the mapping.
      h = Number(this.S.mlx_array_new_data_managed_payload(new Uint8Array(buf), ints([buf.byteLength]), 1, MLX_DTYPE.u8, null, this.lib.noopDtor));
      if (!h) this.fail("fromBytes");
      this.mappings.set(buf, h);
      this.mappingRelease.register(buf, h);
    }
    return h;
  }

  fromBytes(bytes: Uint8Array, shape: readonly number[], dtype: DType): Tensor {
    args.checkShape(shape, "fromBytes");
    const n = shape.reduce((a, b) => a * b, 1);
    const item = DTYPE_BYTES[dtype];
    if (bytes.byteLength !== n * item) invalid(`fromBytes: ${bytes.byteLength} bytes for ${dtype} ${fmt(shape)} (${n * item} bytes)`);
    let h: number;
    // MLX shapes and slice bounds are int32: larger mappings fall back to a copy per tensor.
    if (bytes.byteLength > 0 && bytes.byteOffset % item === 0 && bytes.buffer.byteLength <= MAX_MAPPING) {
      const tmp = new Temps();
      try {
        const base = this.mapping(bytes.buffer);
        const lo = Int32Array.of(bytes.byteOffset);
        const hi = Int32Array.of(bytes.byteOffset + bytes.byteLength);
        const part = tmp.add(this.res(this.S.mlx_slice(outSlot(), base, lo, 1, hi, 1, Int32Array.of(1), 1, this.stream), "fromBytes"));
        const typed = tmp.add(this.res(this.S.mlx_view(outSlot(), part, TO_MLX[dtype], this.stream), "fromBytes"));
        h = this.res(this.S.mlx_reshape(outSlot(), typed, ints(shape), shape.length, this.stream), "fromBytes");
        if (this.S.mlx_array_eval(h) !== 0) this.fail("fromBytes", "native");
      } finally {
        this.freeAll(tmp);
      }
    } else {
      h = Number(this.S.mlx_array_new_data(bytes.byteLength ? bytes : EMPTY, ints(shape), shape.length, TO_MLX[dtype]));
      if (!h) this.fail("fromBytes");
    }
    const t = new MTensor(h, [...shape], dtype);
    t.hold = bytes;
    t.persistent = true;
    return t;
  }

  zeros(shape: readonly number[], dtype: DType): Tensor {
    args.checkShape(shape, "zeros");
    return this.wrap(this.res(this.S.mlx_zeros(outSlot(), ints(shape), shape.length, TO_MLX[dtype], this.stream), "zeros"));
  }

  allocPersistent(shape: readonly number[], dtype: DType): Tensor {
    args.checkShape(shape, "allocPersistent");
    const h = this.res(this.S.mlx_zeros(outSlot(), ints(shape), shape.length, TO_MLX[dtype], this.stream), "allocPersistent");
    const t = new MTensor(h, [...shape], dtype);
    t.persistent = true;
    return t;
  }

  dispose(x: Tensor): void {
    if (!(x instanceof MTensor) || !x.h) return;
    if (!x.persistent && x.scoped) return;
    this.unscoped.unregister(x);
    this.dropTranspose(x);
    this.free(x.h);
    x.h = 0;
    x.hold = null;
  }

  eval(...tensors: Tensor[]): void {
    this.evalHandles(tensors.map((x) => this.arg(x, "eval").h));
  }

  evalAsync(...tensors: Tensor[]): void {
    this.evalHandles(tensors.map((x) => this.arg(x, "evalAsync").h), true);
  }

  /**
   * One mlx_eval (mlx_async_eval when `async`, which only schedules the work) of the given handles and of every
   * pool written since the last eval: one per step.
   */
  private evalHandles(hs: number[], async = false): void {
    if (this.pendingError) {
      const e = this.pendingError;
      this.pendingError = null;
      invalid(e);
    }
    // A pool disposed since its write (a cache dropped after a failed step) has nothing left to compute.
    for (const p of this.dirtyPools) for (const t of p.parts) if (t.h) hs.push(t.h);
    for (const p of this.dirtyStates) if (p.conv.h && p.delta.h) hs.push(p.conv.h, p.delta.h);
    if (hs.length === 0) return;
    // A spare handle may still hold a view of a pool this eval writes, which would make MLX copy the pool instead
    // of updating it in place. Evals that write none (a pipelined step's ids read back while the next computes)
    // leave the spares to the next step's recording.
    if (this.dirtyPools.size > 0 || this.dirtyStates.size > 0) this.freeSpares();
    const vec = Number(this.S.mlx_vector_array_new_data(handles(hs), hs.length));
    try {
      const t0 = performance.now();
      const st = async ? this.S.mlx_async_eval(vec) : this.S.mlx_eval(vec);
      // An async eval counts too: MLX caps the work in flight, so scheduling a step can wait for the device.
      this.evalMs += performance.now() - t0;
      if (st !== 0) this.fail(async ? "evalAsync" : "eval", "native");
      this.dirtyPools.clear();
      this.dirtyStates.clear();
    } finally {
      this.S.mlx_vector_array_free(vec);
    }
  }

  /** Evaluates a contiguous copy of x in the given dtype and copies its bytes out. */
  private readBack(x: MTensor, dt: number, what: string): ArrayBuffer {
    const tmp = new Temps();
    try {
      return this.bytesOfHandle(x.dtype === FROM_MLX.get(dt) ? x.h : this.raw.astype(x.h, dt, tmp), what);
    } finally {
      this.freeAll(tmp);
    }
  }

  /** Evaluates a contiguous copy of an array handle and copies its bytes out. */
  private bytesOfHandle(c: number, what: string): ArrayBuffer {
    const tmp = new Temps();
    try {
      const h = tmp.add(this.res(this.S.mlx_contiguous(outSlot(), c, false, this.stream), what));
      this.evalHandles([h]);
      const n = Number(this.S.mlx_array_nbytes(h));
      if (n === 0) return new ArrayBuffer(0);
      const p = this.S.mlx_array_data_uint8(h);
      if (!p) this.fail(what, "native");
      return toArrayBuffer(p, 0, n).slice(0);
    } finally {
      this.freeAll(tmp);
    }
  }

  toFloat32(x: Tensor, out?: Float32Array): Float32Array {
    const t = this.arg(x, "toFloat32");
    const values = new Float32Array(this.readBack(t, MLX_DTYPE.f32, "toFloat32"));
    if (!out || out.length < values.length) return values;
    const view = out.subarray(0, values.length);
    view.set(values);
    return view;
  }

  toInt32(x: Tensor): Int32Array {
    const t = this.arg(x, "toInt32");
    if (t.dtype !== "i32" && t.dtype !== "u32" && t.dtype !== "u8") invalid(`toInt32: tensor is ${t.dtype}`);
    return new Int32Array(this.readBack(t, MLX_DTYPE.i32, "toInt32"));
  }

  scope<T>(fn: () => T): T {
    const mine: MTensor[] = [];
    this.scopes.push(mine);
    let result: T;
    try {
      result = fn();
    } catch (err) {
      this.scopes.pop();
      for (const t of mine) this.releaseScoped(t);
      throw err;
    }
    this.scopes.pop();
    const keep = new Set(args.collectTensors(result, MTensor));
    const outer = this.scopes[this.scopes.length - 1];
    for (const t of mine) {
      if (!keep.has(t)) this.releaseScoped(t);
      else if (outer) outer.push(t);
      else {
        t.scoped = false;
        this.unscoped.register(t, t.h, t);
      }
    }
    return result;
  }

  /**
   * A scoped result whose scope ended: small ones go to the spare handles (their arrays live on until a later
   * call reuses the handle or the next eval frees it), large ones are freed now so that no buffer of size waits.
   */
  private releaseScoped(t: MTensor): void {
    const bytes = t.size * DTYPE_BYTES[t.dtype];
    if (t.h && bytes <= SPARE_RESULT_BYTES && this.spareBytes + bytes <= SPARE_BYTES) {
      this.spareBytes += bytes;
      spareHandle(t.h);
    } else this.free(t.h);
    t.h = 0;
  }

  // ---------------------------------------------------------------- shape

  reshape(x: Tensor, shape: readonly number[]): Tensor {
    const t = this.arg(x, "reshape");
    const s = [...shape];
    const infer = s.indexOf(-1);
    const known = s.reduce((a, d, i) => (i === infer ? a : a * d), 1);
    if (infer >= 0) {
      if (known === 0 || t.size % known !== 0) invalid(`reshape: cannot reshape ${fmt(t.shape)} to ${fmt(shape)}`);
      s[infer] = t.size / known;
    }
    args.checkShape(s, "reshape");
    if (s.reduce((a, b) => a * b, 1) !== t.size) invalid(`reshape: cannot reshape ${fmt(t.shape)} (${t.size} elements) to ${fmt(shape)}`);
    return this.wrap(this.res(this.S.mlx_reshape(outSlot(), t.h, ints(s), s.length, this.stream), "reshape"), s, t.dtype);
  }

  transpose(x: Tensor, axes: readonly number[]): Tensor {
    const t = this.arg(x, "transpose");
    const norm = args.transposeAxes(t.shape, axes);
    return this.wrap(this.res(this.S.mlx_transpose_axes(outSlot(), t.h, ints(norm), norm.length, this.stream), "transpose"), norm.map((a) => t.shape[a]!), t.dtype);
  }

  slice(x: Tensor, axis: number, start: number, end: number): Tensor {
    const t = this.arg(x, "slice");
    const nd = t.shape.length;
    const a = args.sliceAxis(t.shape, axis, start, end);
    const lo = t.shape.map(() => 0);
    const hi = [...t.shape];
    lo[a] = args.clampBound(start, t.shape[a]!);
    hi[a] = Math.max(lo[a]!, args.clampBound(end, t.shape[a]!));
    const st = t.shape.map(() => 1);
    return this.wrap(this.res(this.S.mlx_slice(outSlot(), t.h, ints(lo), nd, ints(hi), nd, ints(st), nd, this.stream), "slice"));
  }

  concatenate(xs: readonly Tensor[], axis: number): Tensor {
    const ts = xs.map((x) => this.arg(x, "concatenate"));
    const a = args.concatAxis(ts, axis);
    const vec = Number(this.S.mlx_vector_array_new_data(handles(ts.map((t) => t.h)), ts.length));
    try {
      return this.wrap(this.res(this.S.mlx_concatenate_axis(outSlot(), vec, a, this.stream), "concatenate"));
    } finally {
      this.S.mlx_vector_array_free(vec);
    }
  }

  astype(x: Tensor, dtype: DType): Tensor {
    const t = this.arg(x, "astype");
    return this.wrap(this.res(this.S.mlx_astype(outSlot(), t.h, TO_MLX[dtype], this.stream), "astype"));
  }

  // ---------------------------------------------------------------- products

  matmul(a: Tensor, b: Tensor): Tensor {
    const x = this.arg(a, "matmul");
    const y = this.arg(b, "matmul");
    if (x.shape.length < 2 || y.shape.length < 2) invalid(`matmul: operands ${fmt(x.shape)} and ${fmt(y.shape)} need rank >= 2`);
    if (x.shape[x.shape.length - 1] !== y.shape[y.shape.length - 2])
      invalid(`matmul: ${fmt(x.shape)} @ ${fmt(y.shape)}: inner dims ${x.shape[x.shape.length - 1]} and ${y.shape[y.shape.length - 2]} differ`);
    return this.op((tmp) => this.res(this.S.mlx_matmul(outSlot(), this.f32(x, tmp), this.f32(y, tmp), this.stream), "matmul"));
  }

  linear(x: Tensor, w: Weight, bias?: Tensor): Tensor {
    if (isQuantized(w)) {
      const y = this.quantizedMatmul(x, w);
      return bias ? this.add(y, bias) : y;
    }
    const xt = this.arg(x, "linear");
    const wt = this.arg(w, "linear weight");
    const bt = bias ? this.arg(bias, "linear bias") : null;
    args.checkLinear(xt, wt, bt);
    // MLX promotes a pair of float dtypes to their common one, f32 for two different ones.
    const dtype = wt.dtype === this.computeDtype ? wt.dtype : "f32";
    return this.op((tmp) => {
      // A scope's own tensor would keep its transpose, and with it its data, until it is collected.
      const wT = wt.scoped ? this.raw.transpose(wt.h, [1, 0], tmp) : this.transposed(wt);
      const y = this.raw.bin("mlx_matmul", this.f32(xt, tmp), wT, tmp);
      return bt ? this.res(this.S.mlx_add(outSlot(), y, this.f32(bt, tmp), this.stream), "linear") : y;
    }, [...xt.shape.slice(0, -1), wt.shape[0]!], dtype);
  }

  /** A weight's transpose (a view of its data), made at its first product and kept until dispose or collection. */
  private transposed(w: MTensor): number {
    const e = this.transposes.get(w);
    if (e) return e.h;
    const h = this.res(this.S.mlx_transpose_axes(outSlot(), w.h, TRANSPOSE_2D, 2, this.stream), "linear");
    const entry = { h };
    this.transposes.set(w, entry);
    this.unscoped.register(entry, h, entry);
    return h;
  }

  private dropTranspose(w: MTensor): void {
    const e = this.transposes.get(w);
    if (!e) return;
    this.transposes.delete(w);
    this.unscoped.unregister(e);
    this.free(e.h);
  }

  /**
   * A quantized weight's tensors, checked, with its sizes and mlx-c arguments: checked once per weight (its fields
   * are readonly) and kept while its tensors live, instead of for every product of every layer and step.
   */
  private quantArgs(w: QuantizedWeight, what: string): QuantArgs {
    const c = this.quantChecked.get(w);
    const live = (t: MTensor | null) => !t || (t.h !== 0 && t.error === null);
    if (c && live(c.wt) && live(c.sc) && live(c.bi)) return c;
    const wt = this.arg(w.w, `${what} weight`);
    const sc = this.arg(w.scales, `${what} scales`);
    const bi = w.biases ? this.arg(w.biases, `${what} biases`) : null;
    const K = args.checkQuantized(what, w, wt, sc, bi);
    const q: QuantArgs = {
      wt,
      sc,
      bi,
      K,
      N: wt.shape[wt.shape.length - 2]!,
      optBits: optInt(w.bits),
      optGroup: optInt(w.groupSize),
      modeName: MODE_NAMES[w.mode],
      outDtype: this.qmmDtype(w.mode, sc, bi),
    };
    this.quantChecked.set(w, q);
    return q;
  }

  /** The factor nvfp4's global scale contributes (MLX's quantized matmuls take none): global / (448 * 6). */
  private globalFactor(w: QuantizedWeight): number {
    return w.mode === "nvfp4" && w.globalScale !== undefined ? w.globalScale / (448 * 6) : 1;
  }

  quantizedMatmul(x: Tensor, w: QuantizedWeight): Tensor {
    const q = this.quantArgs(w, "quantizedMatmul");
    const xt = this.arg(x, "quantizedMatmul");
    args.checkQuantizedMatmul(xt, q.wt, q.K);
    // MLX's CPU kernel divides by the row count: an empty x (a step that wants no logits rows) is answered here.
    if (xt.size === 0) return this.zeros([...xt.shape.slice(0, -1), q.N], this.computeDtype);
    const g = this.globalFactor(w);
    return this.op((tmp) => {
      const y = tmp.add(
        this.res(
          this.S.mlx_quantized_matmul(outSlot(), this.f32(xt, tmp), q.wt.h, q.sc.h, q.bi ? q.bi.h : null, true, q.optGroup, q.optBits, q.modeName, this.stream),
          "quantizedMatmul",
        ),
      );
      const y32 = this.inCompute(y, q.outDtype, tmp);
      if (g === 1) return y32;
      return this.res(this.S.mlx_multiply(outSlot(), y32, this.scalar(g), this.stream), "quantizedMatmul");
    }, [...xt.shape.slice(0, -1), q.N], this.computeDtype);
  }

  /**
   * The dtype of MLX's quantized products of an x in the compute dtype: affine promotes x with the scales and
   * biases (equal float dtypes stay, any other pair is f32), the fp modes keep x's.
   */
  private qmmDtype(mode: QuantMode, sc: MTensor, bi: MTensor | null): DType {
    if (mode !== "affine") return this.computeDtype;
    const promote = (a: DType, b: DType): DType => (a === b ? a : "f32");
    return promote(this.computeDtype, bi ? promote(sc.dtype, bi.dtype) : sc.dtype);
  }

  /** A result handle of a known dtype in the compute dtype. */
  private inCompute(h: number, dtype: DType, tmp: Temps): number {
    return dtype === this.computeDtype ? h : this.raw.astype(h, this.adt, tmp);
  }

  /** An op's result handle in the compute dtype (kernels that follow the weights' dtype return bf16 for bf16 scales). */
  private f32AfterOp(h: number, tmp: Temps): number {
    if (this.S.mlx_array_dtype(h) === this.adt) return h;
    return this.raw.astype(h, this.adt, tmp);
  }

  gatherMatmul(x: Tensor, w: Weight, indices: Tensor): Tensor {
    const xt = this.arg(x, "gatherMatmul");
    const it = this.arg(indices, "gatherMatmul indices");
    const perPair = args.checkGather(xt, it) === 1;
    const [T, topk] = it.shape as [number, number];
    const K = xt.shape[xt.shape.length - 1]!;
    const lhs = perPair ? [T, topk, 1, K] : [T, 1, 1, K];
    return this.op((tmp) => {
      const xr = this.raw.reshape(this.f32(xt, tmp), lhs, tmp);
      const idx = it.dtype === "u32" ? it.h : this.raw.astype(it.h, MLX_DTYPE.u32, tmp);
      let y: number;
      let N: number;
      if (isQuantized(w)) {
        const q = this.quantArgs(w, "gatherMatmul");
        N = args.checkExperts(xt, q.wt, K, q.K);
        y = tmp.add(
          this.res(
            this.S.mlx_gather_qmm(outSlot(), xr, q.wt.h, q.sc.h, q.bi ? q.bi.h : null, null, idx, true, q.optGroup, q.optBits, q.modeName, false, this.stream),
            "gatherMatmul",
          ),
        );
        const g = this.globalFactor(w);
        y = this.inCompute(y, q.outDtype, tmp);
        if (g !== 1) y = this.raw.bin("mlx_multiply", y, this.scalar(g), tmp);
      } else {
        const wt = this.arg(w, "gatherMatmul weight");
        N = args.checkExperts(xt, wt, K);
        // MLX's CPU gather_mm takes f32 only: there a 16-bit compute dtype multiplies in f32 and casts back.
        const wide = !this.lib.metal && this.adt !== MLX_DTYPE.f32;
        const wT = this.raw.transpose(wide ? this.raw.astype(wt.h, MLX_DTYPE.f32, tmp) : this.f32(wt, tmp), [0, 2, 1], tmp);
        const xw = wide ? this.raw.astype(xr, MLX_DTYPE.f32, tmp) : xr;
        y = tmp.add(this.res(this.S.mlx_gather_mm(outSlot(), xw, wT, null, idx, false, this.stream), "gatherMatmul"));
        if (wide) y = this.raw.astype(y, this.adt, tmp);
      }
      return this.res(this.S.mlx_reshape(outSlot(), y, ints([T, topk, N]), 3, this.stream), "gatherMatmul");
    });
  }

  take(table: Weight, ids: Tensor): Tensor {
    const it = this.arg(ids, "take ids");
    args.checkTakeIds(it);
    if (isQuantized(table)) {
      const q = this.quantArgs(table, "take");
      args.checkTable(q.wt, true);
      const out = this.op((tmp) => {
        const flat = this.raw.reshape(it.h, [it.size], tmp);
        const w = this.raw.take(q.wt.h, flat, 0, tmp);
        const s = this.raw.take(q.sc.h, flat, 0, tmp);
        const b = q.bi ? this.raw.take(q.bi.h, flat, 0, tmp) : 0;
        const d = this.dequantRaw(table, w, s, b, tmp);
        return this.res(this.S.mlx_reshape(outSlot(), d, ints([...it.shape, q.K]), it.shape.length + 1, this.stream), "take");
      });
      this.checkIds(out, it, q.N);
      return out;
    }
    const wt = this.arg(table, "take table");
    args.checkTable(wt, false);
    const out = this.op((tmp) => {
      const r = this.raw.take(wt.h, it.h, 0, tmp);
      if (wt.dtype === this.computeDtype) return r;
      return this.res(this.S.mlx_astype(outSlot(), r, this.adt, this.stream), "take");
    });
    this.checkIds(out, it, wt.shape[0]!);
    return out;
  }

  /** MLX reads out-of-range ids unchecked: ids known on the host are checked, and a bad one poisons the result. */
  private checkIds(out: MTensor, ids: MTensor, rows: number): void {
    if (!ids.host) return;
    for (const id of ids.host)
      if (!(id >= 0 && id < rows)) {
        out.error = `take: id ${id} outside a table of ${rows} rows`;
        return;
      }
  }

  /**
   * mx.dequantize to the compute dtype (the nvfp4 global scale as MLX applies it). Returns a temp handle. In f32,
   * affine scales and biases are widened first: MLX computes scale * q + bias in their dtype, the native backend
   * and the references in f32; in the model's dtype it is computed as mlx-lm does.
   */
  private dequantRaw(w: QuantizedWeight, wq: number, sc: number, bi: number, tmp: Temps): number {
    if (w.mode === "affine" && this.adt === MLX_DTYPE.f32) {
      if (this.S.mlx_array_dtype(sc) !== MLX_DTYPE.f32) sc = this.raw.astype(sc, MLX_DTYPE.f32, tmp);
      if (bi && this.S.mlx_array_dtype(bi) !== MLX_DTYPE.f32) bi = this.raw.astype(bi, MLX_DTYPE.f32, tmp);
    }
    const gs = w.mode === "nvfp4" && w.globalScale !== undefined ? this.raw.data(Float32Array.of(w.globalScale), [], MLX_DTYPE.f32, tmp) : null;
    const d = tmp.add(
      this.res(
        this.S.mlx_dequantize(outSlot(), wq, sc, bi || null, optInt(w.groupSize), optInt(w.bits), MODE_NAMES[w.mode], gs, optInt(this.adt), this.stream),
        "dequantize",
      ),
    );
    return this.f32AfterOp(d, tmp);
  }

  quantize(w: Tensor, mode: QuantMode, bits: number, groupSize: number): QuantizedWeight {
    const t = this.arg(w, "quantize");
    const vec = Number(this.S.mlx_vector_array_new());
    const slot = new BigUint64Array([BigInt(vec)]);
    try {
      if (this.S.mlx_quantize(slot, t.h, optInt(groupSize), optInt(bits), MODE_NAMES[mode], null, this.stream) !== 0) this.fail("quantize");
      const v = Number(slot[0]);
      const n = Number(this.S.mlx_vector_array_size(v));
      const parts: MTensor[] = [];
      for (let i = 0; i < n; i++) parts.push(this.wrap(this.res(this.S.mlx_vector_array_get(outSlot(), v, i), "quantize")));
      return { w: parts[0]!, scales: parts[1]!, ...(parts[2] ? { biases: parts[2] } : {}), mode, bits, groupSize };
    } finally {
      this.S.mlx_vector_array_free(Number(slot[0]) || vec);
    }
  }

  dequantize(w: QuantizedWeight): Tensor {
    const q = this.quantArgs(w, "dequantize");
    return this.op((tmp) => {
      return this.dequantRaw(w, q.wt.h, q.sc.h, q.bi ? q.bi.h : 0, tmp);
    });
  }

  // ---------------------------------------------------------------- elementwise and reductions

  private binary(f: "mlx_add" | "mlx_subtract" | "mlx_multiply", a: Tensor, b: Tensor, what: string): Tensor {
    const x = this.arg(a, what);
    const y = this.arg(b, what);
    const shape = args.broadcastShapes(x.shape, y.shape, what);
    return this.op((tmp) => this.res(this.S[f](outSlot(), this.f32(x, tmp), this.f32(y, tmp), this.stream), what), shape, this.computeDtype);
  }

  add(a: Tensor, b: Tensor): Tensor {
    return this.binary("mlx_add", a, b, "add");
  }

  sub(a: Tensor, b: Tensor): Tensor {
    return this.binary("mlx_subtract", a, b, "sub");
  }

  mul(a: Tensor, b: Tensor): Tensor {
    return this.binary("mlx_multiply", a, b, "mul");
  }

  scale(x: Tensor, s: number): Tensor {
    const t = this.arg(x, "scale");
    return this.op((tmp) => this.res(this.S.mlx_multiply(outSlot(), this.f32(t, tmp), this.scalar(s), this.stream), "scale"), t.shape, this.computeDtype);
  }

  sigmoid(x: Tensor): Tensor {
    const t = this.arg(x, "sigmoid");
    return this.op((tmp) => this.res(this.S.mlx_sigmoid(outSlot(), this.f32(t, tmp), this.stream), "sigmoid"), t.shape, this.computeDtype);
  }

  private siluRaw(h: number, tmp: Temps): number {
    return this.raw.bin("mlx_multiply", h, this.raw.un("mlx_sigmoid", h, tmp), tmp);
  }

  /**
   * 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as gelu_pytorch_tanh, composed as mlx-lm's gelu_approx (x^3
   * a power: in bf16 x * x * x rounds differently).
   */
  private geluRaw(h: number, tmp: Temps): number {
    const x3 = this.raw.bin("mlx_power", h, this.scalar(3), tmp);
    const inner = this.raw.bin("mlx_add", h, this.raw.bin("mlx_multiply", this.scalar(0.044715), x3, tmp), tmp);
    const th = this.raw.un("mlx_tanh", this.raw.bin("mlx_multiply", this.scalar(Math.sqrt(2 / Math.PI)), inner, tmp), tmp);
    const half = this.raw.bin("mlx_multiply", this.scalar(0.5), h, tmp);
    return this.raw.bin("mlx_multiply", half, this.raw.bin("mlx_add", this.scalar(1), th, tmp), tmp);
  }

  silu(x: Tensor): Tensor {
    const t = this.arg(x, "silu");
    return this.op((tmp) => this.siluRaw(this.f32(t, tmp), tmp), t.shape, this.computeDtype);
  }

  gelu(x: Tensor): Tensor {
    const t = this.arg(x, "gelu");
    return this.op((tmp) => {
      const h = this.f32(t, tmp);
      const e = this.raw.un("mlx_erf", this.raw.bin("mlx_multiply", h, this.scalar(Math.SQRT1_2), tmp), tmp);
      const half = this.raw.bin("mlx_multiply", h, this.scalar(0.5), tmp);
      return this.raw.bin("mlx_add", half, this.raw.bin("mlx_multiply", half, e, tmp), tmp);
    });
  }

  geluTanh(x: Tensor): Tensor {
    const t = this.arg(x, "geluTanh");
    return this.op((tmp) => this.geluRaw(this.f32(t, tmp), tmp));
  }

  softcap(x: Tensor, cap: number): Tensor {
    args.checkSoftcap(cap);
    const t = this.arg(x, "softcap");
    return this.op((tmp) => {
      const th = this.raw.un("mlx_tanh", this.raw.bin("mlx_multiply", this.f32(t, tmp), this.scalar(1 / cap), tmp), tmp);
      return this.res(this.S.mlx_multiply(outSlot(), th, this.scalar(cap), this.stream), "softcap");
    });
  }

  private gluOp(kind: "swiglu" | "geglu", gate: Tensor, up: Tensor): Tensor {
    const g = this.arg(gate, kind);
    const u = this.arg(up, kind);
    const same = g.shape.length === u.shape.length && g.shape.every((d, i) => d === u.shape[i]);
    if (!same) return this.mul(kind === "swiglu" ? this.silu(g) : this.geluTanh(g), u);
    return this.op((tmp) => {
      const ins = [this.f32(g, tmp), this.f32(u, tmp)];
      const body = (hs: readonly number[]) => {
        const t = new Temps();
        const act = kind === "swiglu" ? this.siluRaw(hs[0]!, t) : this.geluRaw(hs[0]!, t);
        return { out: this.res(this.S.mlx_multiply(outSlot(), act, hs[1]!, this.stream), kind), temps: t.hs };
      };
      // mlx-lm's compiled activation: one fused kernel; the plain ops where MLX cannot compile here.
      const fused = this.compiled.apply(kind, 2, body, ins);
      if (fused) return fused;
      const { out, temps } = body(ins);
      for (const h of temps) tmp.add(h);
      return out;
    }, g.shape, this.computeDtype);
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    return this.gluOp("swiglu", gate, up);
  }

  geglu(gate: Tensor, up: Tensor): Tensor {
    return this.gluOp("geglu", gate, up);
  }

  softmax(x: Tensor, axis = -1): Tensor {
    const t = this.arg(x, "softmax");
    const a = args.normAxis(axis, t.shape.length, "softmax");
    return this.op((tmp) => this.res(this.S.mlx_softmax_axis(outSlot(), this.f32(t, tmp), a, true, this.stream), "softmax"), t.shape, this.computeDtype);
  }

  argmax(x: Tensor): Tensor {
    const t = this.arg(x, "argmax");
    args.checkArgmax(t.shape);
    return this.op((tmp) => {
      const i = tmp.add(this.res(this.S.mlx_argmax_axis(outSlot(), t.h, -1, false, this.stream), "argmax"));
      return this.res(this.S.mlx_astype(outSlot(), i, MLX_DTYPE.i32, this.stream), "argmax");
    });
  }

  drawPays(temperature: number): boolean {
    return temperature === 0 || this.lib.metal;
  }

  drawRows(logits: Tensor, draws: readonly RowDraw[]): Tensor {
    const t = this.arg(logits, "drawRows");
    if (t.shape.length !== 2 || t.shape[0] !== draws.length || t.shape[1]! < 1) {
      invalid(`drawRows: logits ${fmt(t.shape)} for ${draws.length} draws`);
    }
    const G = new Graph(this.S, this.stream, (st, what) => this.res(st, what), "drawRows");
    try {
      return this.wrap(G.keep(drawRows(G, G.f32(t.h), t.shape[1]!, draws)), [draws.length], "i32");
    } finally {
      G.free();
    }
  }

  topk(x: Tensor, k: number): { values: Tensor; indices: Tensor } {
    const t = this.arg(x, "topk");
    args.checkTopk(t.shape, k);
    const nd = t.shape.length;
    // A stable sort of the negated scores: descending, ties in index order as on the native backend.
    const tmp = new Temps();
    try {
      const xf = this.f32(t, tmp);
      const neg = this.raw.bin("mlx_multiply", xf, this.scalar(-1), tmp);
      const order = tmp.add(this.res(this.S.mlx_argsort_axis(outSlot(), neg, -1, this.stream), "topk"));
      const lo = t.shape.map(() => 0);
      const hi = [...t.shape];
      hi[nd - 1] = k;
      const top = tmp.add(this.res(this.S.mlx_slice(outSlot(), order, ints(lo), nd, ints(hi), nd, ints(lo.map(() => 1)), nd, this.stream), "topk"));
      const values = this.wrap(this.res(this.S.mlx_take_along_axis(outSlot(), xf, top, -1, this.stream), "topk"));
      const indices = this.wrap(this.res(this.S.mlx_astype(outSlot(), top, MLX_DTYPE.i32, this.stream), "topk"));
      return { values, indices };
    } finally {
      this.freeAll(tmp);
    }
  }

  sum(x: Tensor, axis: number): Tensor {
    const t = this.arg(x, "sum");
    const a = args.normAxis(axis, t.shape.length, "sum");
    return this.op((tmp) => this.res(this.S.mlx_sum_axis(outSlot(), this.f32(t, tmp), a, false, this.stream), "sum"));
  }

  // ---------------------------------------------------------------- normalisation and position

  private normWeight(w: Tensor | null, n: number, what: string): MTensor | null {
    if (!w) return null;
    const t = this.arg(w, `${what} weight`);
    args.checkNormWeight(t, n, what);
    return t;
  }

  /**
   * A norm weight as the fast norms take it: [n] in the compute dtype, plus one where asked. Made once per
   * persistent weight (the model's norms), so that a step spends no calls on it; per call for other tensors.
   */
  private normWeightHandle(w: MTensor, n: number, onePlus: boolean, tmp: Temps): number {
    const build = (into: Temps) => {
      const h = this.raw.reshape(this.f32(w, into), [n], into);
      return onePlus ? this.raw.bin("mlx_add", h, this.scalar(1), into) : h;
    };
    if (!w.persistent) return build(tmp);
    const key = onePlus ? "plus" : "plain";
    const entry = this.normCache.get(w) ?? {};
    let h = entry[key];
    if (h === undefined) {
      const own = new Temps();
      h = build(own);
      own.hs.splice(own.hs.lastIndexOf(h), 1);
      this.freeAll(own);
      if (this.S.mlx_array_eval(h) !== 0) this.fail("rmsNorm", "native");
      entry[key] = h;
      this.normCache.set(w, entry);
      this.unscoped.register(entry, h);
    }
    return h;
  }

  rmsNorm(x: Tensor, w: Tensor | null, eps: number, onePlus = false): Tensor {
    const t = this.arg(x, "rmsNorm");
    const n = args.normAxisLength(t.shape, "rmsNorm");
    const wt = this.normWeight(w, n, "rmsNorm");
    return this.op((tmp) => {
      const wh = wt ? this.normWeightHandle(wt, n, onePlus, tmp) : null;
      return this.res(this.S.mlx_fast_rms_norm(outSlot(), this.f32(t, tmp), wh, eps, this.stream), "rmsNorm");
    }, t.shape, this.computeDtype);
  }

  layerNorm(x: Tensor, w: Tensor | null, b: Tensor | null, eps: number): Tensor {
    const t = this.arg(x, "layerNorm");
    const n = args.normAxisLength(t.shape, "layerNorm");
    const wt = this.normWeight(w, n, "layerNorm");
    const bt = this.normWeight(b, n, "layerNorm bias");
    return this.op((tmp) => {
      const wh = wt ? this.raw.reshape(this.f32(wt, tmp), [n], tmp) : null;
      const bh = bt ? this.raw.reshape(this.f32(bt, tmp), [n], tmp) : null;
      return this.res(this.S.mlx_fast_layer_norm(outSlot(), this.f32(t, tmp), wh, bh, eps, this.stream), "layerNorm");
    });
  }

  /** The step's positions as an int32 array, shared by every rope call of the step (q and k of all layers). */
  private offsetsFor(positions: Int32Array): number {
    return this.stepArrays.get("offsets", [positions], () => this.constant(positions, [positions.length], MLX_DTYPE.i32, "rope"));
  }

  /**
   * MLX's rope takes periods and inverts them in f32. Each period is chosen so that its f32 reciprocal is exactly
   * the wanted f32 inverse frequency: angles then equal position * inv_freq rounded once, as in transformers,
   * instead of MLX's exp-based default frequencies, which drift by a few ulps (visible at long positions).
   */
  private freqsFor(inv: Float32Array): number {
    let h = this.freqArrays.get(inv);
    if (h === undefined) {
      const periods = new Float32Array(inv.length);
      const bits = new Uint32Array(periods.buffer);
      for (let i = 0; i < inv.length; i++) {
        periods[i] = 1 / inv[i]!;
        const first = bits[i]!;
        for (const d of [0, 1, -1, 2, -2]) {
          bits[i] = first + d;
          if (Math.fround(1 / periods[i]!) === inv[i]) break;
          bits[i] = first;
        }
      }
      h = Number(this.S.mlx_array_new_data(periods, ints([periods.length]), 1, MLX_DTYPE.f32));
      this.freqArrays.set(inv, h);
    }
    return h;
  }

  /** f32 inverse frequencies 1 / base^(2i/dims), one array per (base, dims). */
  private baseFreqs(base: number, dims: number): Float32Array {
    const key = `${base}/${dims}`;
    let f = this.invFreqs.get(key);
    if (!f) {
      f = new Float32Array(dims / 2);
      for (let i = 0; i < f.length; i++) f[i] = 1 / Math.pow(base, (2 * i) / dims);
      this.invFreqs.set(key, f);
    }
    return f;
  }

  rope(x: Tensor, positions: Int32Array, opts: RopeOptions): Tensor {
    const t = this.arg(x, "rope");
    args.checkRope(t, positions, opts);
    const [T, H, D] = t.shape as [number, number, number];
    const mscale = opts.mscale ?? 1;
    return this.op((tmp) => {
      let h = this.f32(t, tmp);
      if (mscale !== 1) {
        // Rotation is linear, so scaling the rotated dims first scales their cos and sin.
        const m = new Float32Array(D).fill(1).fill(mscale, 0, opts.dims);
        h = this.raw.bin("mlx_multiply", h, this.raw.astype(this.raw.data(m, [D], MLX_DTYPE.f32, tmp), this.adt, tmp), tmp);
      }
      // One position per token: each token is its own batch entry of a length-1 sequence, offset by its position.
      const x4 = this.raw.reshape(h, [T, H, 1, D], tmp);
      const freqs = this.freqsFor(opts.freqs ?? this.baseFreqs(opts.base, opts.dims));
      const r = tmp.add(
        this.res(
          this.S.mlx_fast_rope_dynamic(outSlot(), x4, opts.dims, opts.traditional, NONE, opts.scale, this.offsetsFor(positions), freqs, this.stream),
          "rope",
        ),
      );
      return this.res(this.S.mlx_reshape(outSlot(), r, ints([T, H, D]), 3, this.stream), "rope");
    }, t.shape, this.computeDtype);
  }

  // ---------------------------------------------------------------- attention

  createKvPool(numBlocks: number, blockSize: number, kvHeads: number, headDim: number, format: DType | KvFormat): KvPool {
    args.checkKvPool(numBlocks, blockSize, kvHeads, headDim, format);
    const f = args.kvPoolFormat(format);
    // Rows of (slot, head) in slot order, as [numBlocks * blockSize * kvHeads, row]: the layout a block table's
    // gather takes rows from without a reshape per layer and step (the bytes are those of [blocks, slots, heads, row]).
    const alloc = (last: number, dt: DType) => this.allocPersistent([numBlocks * blockSize * kvHeads, last], dt) as MTensor;
    const side = (e: KvElement): MKvSide => {
      if (e.kind === "float") return { e, data: alloc(headDim, e.dtype) };
      if (e.kind !== "affine") {
        const name = e.kind === "fp8" ? "fp8" : `turbo${e.bits}`;
        throw new RmlxError(
          "unsupported",
          `the mlx backend cannot store ${name} KV pages: it stores f32, f16, bf16 and MLX's affine codes (q8, q4, k8v4, groups of 32 or 64); use --backend native for ${name}`,
        );
      }
      if (!MLX_QUANT_GROUPS.includes(e.group)) {
        throw new RmlxError("unsupported", `the mlx backend quantizes KV pages in groups of ${MLX_QUANT_GROUPS.join(", ")} (mx.quantize), not ${e.group}`);
      }
      const groups = headDim / e.group;
      return { e, data: alloc((headDim * e.bits) / 8, "u8"), scales: alloc(groups, "f16"), biases: alloc(groups, "f16") };
    };
    const k = side(f.k);
    const v = side(f.v);
    const parts = [k, v].flatMap((x) => [x.data, x.scales, x.biases].filter((t): t is MTensor => t !== undefined));
    const pool: MKvPool = {
      k: k.data,
      v: v.data,
      ...(k.scales ? { kScales: k.scales, kBiases: k.biases } : {}),
      ...(v.scales ? { vScales: v.scales, vBiases: v.biases } : {}),
      format: f,
      sides: [k, v],
      parts,
      numBlocks,
      blockSize,
      kvHeads,
      headDim,
      mlxPool: true,
    };
    return pool;
  }

  private pool(p: KvPool, what: string): MKvPool {
    const pool = p as MKvPool;
    if (pool.mlxPool !== true) invalid(`${what}: not a KV pool of the mlx backend`);
    for (const t of pool.parts) this.arg(t, what);
    return pool;
  }

  /** Replaces a pool tensor's handle by an updated copy (MLX reuses the buffer when the old one has no other user). */
  private swap(t: MTensor, h: number): void {
    this.free(t.h);
    t.h = h;
  }

  /** Scatters rows upd [T, 1, kvHeads, last] into a pool tensor [slots * kvHeads, last] at the slots in idxVec. */
  private scatterSlots(dst: MTensor, kvHeads: number, upd: number, idxVec: number, tmp: Temps): void {
    const [rows, last] = dst.shape as [number, number];
    const flat = this.raw.reshape(dst.h, [rows / kvHeads, kvHeads, last], tmp);
    const written = tmp.add(this.res(this.S.mlx_scatter(outSlot(), flat, idxVec, upd, Int32Array.of(0), 1, this.stream), "kvWrite"));
    this.swap(dst, this.res(this.S.mlx_reshape(outSlot(), written, ints(dst.shape), dst.shape.length, this.stream), "kvWrite"));
  }

  /**
   * mx.quantize (affine) of rows x [R, D] f32: codes as bytes [R, D * bits / 8] (MLX's uint32 words viewed as
   * little-endian bytes: the first value of each byte in its low bits, as the native layout has them), scales and
   * biases [R, D / group] rounded to f16. MLX takes the codes against the f32 scale and bias, before that rounding.
   */
  private quantizeRows(x: number, e: Extract<KvElement, { kind: "affine" }>, tmp: Temps): { codes: number; scales: number; biases: number } {
    const vec = Number(this.S.mlx_vector_array_new());
    const slot = new BigUint64Array([BigInt(vec)]);
    try {
      if (this.S.mlx_quantize(slot, x, optInt(e.group), optInt(e.bits), MODE_NAMES.affine, null, this.stream) !== 0) this.fail("kvWrite");
      const v = Number(slot[0]);
      const part = (i: number) => tmp.add(this.res(this.S.mlx_vector_array_get(outSlot(), v, i), "kvWrite"));
      const [w, sc, bi] = [part(0), part(1), part(2)];
      return {
        codes: tmp.add(this.res(this.S.mlx_view(outSlot(), w, MLX_DTYPE.u8, this.stream), "kvWrite")),
        scales: this.raw.astype(sc, MLX_DTYPE.f16, tmp),
        biases: this.raw.astype(bi, MLX_DTYPE.f16, tmp),
      };
    } finally {
      this.S.mlx_vector_array_free(Number(slot[0]) || vec);
    }
  }

  kvWrite(p: KvPool, k: Tensor, v: Tensor, slots: Int32Array): void {
    const pool = this.pool(p, "kvWrite");
    const kt = this.arg(k, "kvWrite");
    const vt = this.arg(v, "kvWrite");
    const { kvHeads, headDim, numBlocks, blockSize } = pool;
    const T = args.checkKvWrite(pool, kt, vt, slots);
    const total = numBlocks * blockSize;
    // Like any lazy op, a bad write surfaces at the next eval (and is dropped, leaving the pool as it was).
    for (const s of slots)
      if (!(s >= 0 && s < total)) {
        this.pendingError ??= `kvWrite: slot ${s} outside the pool's ${total} slots`;
        return;
      }
    if (T === 0) return;
    const tmp = new Temps();
    try {
      // Slots in a row (a decode token; a prompt chunk's block) are rows in a row: slice updates, no index array.
      const first = slots[0]!;
      let run = true;
      for (let i = 1; run && i < T; i++) run = slots[i] === first + i;
      const idxVec = run ? 0 : Number(this.S.mlx_vector_array_new_data(handles([this.raw.data(slots.slice(), [T], MLX_DTYPE.i32, tmp)]), 1));
      // Writes rows [T * kvHeads, last] (or [T, kvHeads, last]) of one pool tensor at the step's slots.
      const put = (dst: MTensor, rows: number, last: number) => {
        if (!run) return this.scatterSlots(dst, kvHeads, this.raw.reshape(rows, [T, 1, kvHeads, last], tmp), idxVec, tmp);
        const upd = this.raw.reshape(rows, [T * kvHeads, last], tmp);
        const lo = ints([first * kvHeads, 0]);
        const hi = ints([(first + T) * kvHeads, last]);
        this.swap(dst, this.res(this.S.mlx_slice_update(outSlot(), dst.h, upd, lo, 2, hi, 2, ONES2, 2, this.stream), "kvWrite"));
      };
      try {
        for (const [side, src] of [[pool.sides[0], kt], [pool.sides[1], vt]] as const) {
          if (side.e.kind === "float") {
            put(side.data, src.dtype === side.data.dtype ? src.h : this.raw.astype(src.h, TO_MLX[side.data.dtype], tmp), headDim);
            continue;
          }
          // Quantized from f32 whatever the compute dtype, so that scales and biases are the codec's.
          const x32 = src.dtype === "f32" ? src.h : this.raw.astype(src.h, MLX_DTYPE.f32, tmp);
          const q = this.quantizeRows(this.raw.reshape(x32, [T * kvHeads, headDim], tmp), side.e, tmp);
          const groups = headDim / side.e.group;
          put(side.data, q.codes, (headDim * side.e.bits) / 8);
          put(side.scales!, q.scales, groups);
          put(side.biases!, q.biases, groups);
        }
      } finally {
        if (idxVec) this.S.mlx_vector_array_free(idxVec);
      }
      this.dirtyPools.add(pool);
    } finally {
      this.freeAll(tmp);
    }
  }

  // Linear attention (Gated DeltaNet): the graphs are built in linear_attn.ts; here the pools, checks and handles.
  private linearAttn: LinearAttention | null = null;
  private readonly lastRowsRelease = new FinalizationRegistry<LastRows>((rows) => rows.clear());

  private la(): LinearAttention {
    return (this.linearAttn ??= new LinearAttention(
      this.S,
      this.stream,
      (status, what) => this.res(status, what),
      (h) => this.evalHandles([h]),
    ));
  }

  /** Runs build over a fresh graph, whose temps are freed whatever happens. */
  private withGraph<T>(what: string, build: (G: Graph) => T): T {
    const G = this.la().graph(what);
    try {
      return build(G);
    } finally {
      G.free();
    }
  }

  createStatePool(numSlots: number, spec: StateSpec): StatePool {
    const layout = args.statePoolLayout(numSlots, spec);
    const pool: MStatePool = {
      ...layout.spec,
      conv: this.allocPersistent(layout.conv, "f32") as MTensor,
      delta: this.allocPersistent(layout.delta, "f32") as MTensor,
      convRows: new LastRows(this.S),
      deltaRows: new LastRows(this.S),
      mlxState: true,
    };
    this.lastRowsRelease.register(pool, pool.convRows);
    this.lastRowsRelease.register(pool, pool.deltaRows);
    return pool;
  }

  private statePool(p: StatePool, what: string): MStatePool {
    const pool = p as MStatePool;
    if (pool.mlxState !== true) invalid(`${what}: not a state pool of the mlx backend`);
    this.arg(pool.conv, what);
    this.arg(pool.delta, what);
    return pool;
  }

  private rowsOf(t: MTensor, last: LastRows): PoolRows {
    return { pool: t.h, rowShape: t.shape.slice(1), last };
  }

  /** Points a state tensor at its updated array (a kept result of G), evaluated with the next step. */
  private setState(G: Graph, pool: MStatePool, t: MTensor, h: number): void {
    if (h === t.h) return;
    this.swap(t, G.keep(h));
    this.dirtyStates.add(pool);
  }

  /** An op's result as a tensor, after its state writes are recorded. */
  private finishStateOp(G: Graph, pool: MStatePool, t: MTensor, last: LastRows, r: StateOp): Tensor {
    const out = this.wrap(G.keep(r.out));
    this.setState(G, pool, t, r.pool);
    if (r.written.length) last.replace(G, r.written);
    return out;
  }

  softplus(x: Tensor): Tensor {
    const t = this.arg(x, "softplus");
    return this.withGraph("softplus", (G) => this.wrap(G.keep(this.la().softplus(G, t.h))));
  }

  causalConv1d(x: Tensor, w: Tensor, p: StatePool, batch: RecurrentBatch): Tensor {
    const pool = this.statePool(p, "causalConv1d");
    const xt = this.arg(x, "causalConv1d");
    const wt = this.arg(w, "causalConv1d weight");
    args.checkCausalConv(xt, wt, pool);
    const T = xt.shape[0]!;
    args.checkRecurrentBatch("causalConv1d", pool, batch, T);
    return this.withGraph("causalConv1d", (G) => {
      const r = this.la().causalConv1d(G, xt.h, wt.h, this.rowsOf(pool.conv, pool.convRows), pool, batch, T);
      return this.finishStateOp(G, pool, pool.conv, pool.convRows, r);
    });
  }
  /** A result handle taken out of the temps, evaluated, and kept as long as the tensor that wraps it. */
  private cached(h: number, tmp: Temps): MTensor {
    const i = tmp.hs.lastIndexOf(h);
    if (i >= 0) tmp.hs.splice(i, 1);
    const dt = FROM_MLX.get(this.S.mlx_array_dtype(h))!;
    const t = new MTensor(h, this.shapeOf(h), dt);
    t.persistent = true;
    this.unscoped.register(t, h, t);
    if (this.S.mlx_array_eval(h) !== 0) this.fail("ternaryLinear", "native");
    return t;
  }

  /**
   * The codes of a packed ternary weight in a form MLX multiplies, made on the device at its first use: MLX's
   * affine 2-bit words with scale 1 and bias -1, so that each code t + 1 decodes to exactly t (2.25 bits a weight
   * at group 128), or, where no group size divides in_features, the values t as f32 [out, in].
   */
  private ternaryForm(w: TernaryWeight, packed: MTensor): TernaryForm {
    const have = this.ternaryForms.get(w);
    if (have) return have;
    const [R, K] = packed.shape as [number, number];
    const N = 4 * R;
    const tmp = new Temps();
    try {
      // Shifting each byte by 0, 2, 4 and 6 stacks the four blocks of output rows in order: row i*R + r.
      // (Operands are made before each call that writes the shared out-slot.)
      const shifts = this.raw.data(Uint8Array.of(0, 2, 4, 6), [4, 1, 1], MLX_DTYPE.u8, tmp);
      const bytes = this.raw.reshape(packed.h, [1, R, K], tmp);
      const shifted = tmp.add(this.res(this.S.mlx_right_shift(outSlot(), bytes, shifts, this.stream), "ternaryLinear"));
      const mask = this.raw.data(Uint8Array.of(3), [], MLX_DTYPE.u8, tmp);
      const codes = this.raw.reshape(tmp.add(this.res(this.S.mlx_bitwise_and(outSlot(), shifted, mask, this.stream), "ternaryLinear")), [N, K], tmp);
      const group = [128, 64, 32].find((g) => K % g === 0);
      let form: TernaryForm;
      if (group === undefined) {
        form = { t: this.cached(this.raw.bin("mlx_subtract", this.raw.astype(codes, MLX_DTYPE.f32, tmp), this.scalar(1), tmp), tmp) };
      } else {
        // A 2-bit word holds 16 codes of a row, the first in its lowest bits: times 4^j, summed, places code j.
        const places = this.raw.data(Uint32Array.from({ length: 16 }, (_, j) => 4 ** j), [16], MLX_DTYPE.u32, tmp);
        const wide = this.raw.astype(this.raw.reshape(codes, [N, K / 16, 16], tmp), MLX_DTYPE.u32, tmp);
        const placed = this.raw.bin("mlx_multiply", wide, places, tmp);
        const words = tmp.add(this.res(this.S.mlx_sum_axis(outSlot(), placed, -1, false, this.stream), "ternaryLinear"));
        const groups = (N * K) / group;
        // bf16 1 and -1
        const scales = this.raw.data(new Uint16Array(groups).fill(0x3f80), [N, K / group], MLX_DTYPE.bf16, tmp);
        const biases = this.raw.data(new Uint16Array(groups).fill(0xbf80), [N, K / group], MLX_DTYPE.bf16, tmp);
        form = { w: this.cached(words, tmp), scales: this.cached(scales, tmp), biases: this.cached(biases, tmp), groupSize: group };
      }
      this.ternaryForms.set(w, form);
      return form;
    } finally {
      this.freeAll(tmp);
    }
  }

  ternaryLinear(x: Tensor, w: TernaryWeight): Tensor {
    const xt = this.arg(x, "ternaryLinear");
    const wt = this.arg(w.packed, "ternaryLinear weight");
    if (wt.dtype !== "u8" || wt.shape.length !== 2 || wt.size === 0) invalid(`ternaryLinear: weight ${wt.dtype} ${fmt(wt.shape)} is not packed uint8 [out/4, in]`);
    if (xt.shape[xt.shape.length - 1] !== wt.shape[1]) invalid(`ternaryLinear: x ${fmt(xt.shape)} against weight ${fmt(wt.shape)}`);
    // MLX has no max over an empty axis: no rows in, no rows out.
    if (xt.size === 0) return this.zeros([...xt.shape.slice(0, -1), 4 * wt.shape[0]!], "f32");
    const form = this.ternaryForm(w, wt);
    return this.op((tmp) => {
      const xf = this.f32(xt, tmp);
      const absx = tmp.add(this.res(this.S.mlx_abs(outSlot(), xf, this.stream), "ternaryLinear"));
      const amax = tmp.add(this.res(this.S.mlx_max_axis(outSlot(), absx, -1, true, this.stream), "ternaryLinear"));
      const eps = this.scalar(1e-5);
      const floor = tmp.add(this.res(this.S.mlx_maximum(outSlot(), amax, eps, this.stream), "ternaryLinear"));
      const s = this.raw.bin("mlx_divide", this.scalar(127), floor, tmp);
      // |x * s| rounds to at most 127 (max|x| * s is 127 within two roundings), so no clamp is needed; rint
      // rounds half to even on every MLX device.
      const xs = this.raw.bin("mlx_multiply", xf, s, tmp);
      const xq = tmp.add(this.res(this.S.mlx_round(outSlot(), xs, 0, this.stream), "ternaryLinear"));
      // Integer operands and every partial sum below 2^24 (|xq| <= 127 over in_features terms): exact in f32.
      const dots =
        "t" in form
          ? this.raw.bin("mlx_matmul", xq, this.raw.transpose(form.t.h, [1, 0], tmp), tmp)
          : tmp.add(
              this.res(
                this.S.mlx_quantized_matmul(outSlot(), xq, form.w.h, form.scales.h, form.biases.h, true, optInt(form.groupSize), optInt(2), MODE_NAMES.affine, this.stream),
                "ternaryLinear",
              ),
            );
      const scale = this.scalar(w.scale);
      if (w.divide) return this.raw.bin("mlx_divide", dots, this.raw.bin("mlx_multiply", s, scale, tmp), tmp);
      return this.raw.bin("mlx_multiply", this.raw.bin("mlx_divide", dots, s, tmp), scale, tmp);
    });
  }

  relu2Mul(gate: Tensor, up: Tensor): Tensor {
    const g = this.arg(gate, "relu2Mul");
    const u = this.arg(up, "relu2Mul");
    if (g.shape.length !== u.shape.length || g.shape.some((d, i) => d !== u.shape[i])) invalid(`relu2Mul: gate ${fmt(g.shape)} and up ${fmt(u.shape)} differ`);
    return this.op((tmp) => {
      const gf = this.f32(g, tmp);
      const zero = this.scalar(0);
      const r = tmp.add(this.res(this.S.mlx_maximum(outSlot(), gf, zero, this.stream), "relu2Mul"));
      return this.raw.bin("mlx_multiply", this.raw.bin("mlx_multiply", r, r, tmp), this.f32(u, tmp), tmp);
    });
  }

  gatedDelta(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, p: StatePool, batch: RecurrentBatch, chunk = 64): Tensor {
    const pool = this.statePool(p, "gatedDelta");
    const [qt, kt, vt, gt, bt] = ([[q, "q"], [k, "k"], [v, "v"], [g, "g"], [beta, "beta"]] as const).map(([t, n]) => this.arg(t, `gatedDelta ${n}`));
    const T = args.checkGatedDelta(qt!, kt!, vt!, gt!, bt!, pool);
    args.checkRecurrentBatch("gatedDelta", pool, batch, T);
    if (!Number.isInteger(chunk) || chunk < 0) invalid(`gatedDelta: chunk ${chunk}`);
    return this.withGraph("gatedDelta", (G) => {
      const r = this.la().gatedDelta(G, qt!.h, kt!.h, vt!.h, gt!.h, bt!.h, this.rowsOf(pool.delta, pool.deltaRows), pool, batch, T, chunk);
      return this.finishStateOp(G, pool, pool.delta, pool.deltaRows, r);
    });
  }

  private checkSlot(pool: MStatePool, slot: number, what: string): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= pool.numSlots) invalid(`${what}: slot ${slot} outside the pool's ${pool.numSlots}`);
  }

  copyStateSlot(p: StatePool, src: number, dst: number): void {
    const pool = this.statePool(p, "copyStateSlot");
    for (const s of [src, dst]) this.checkSlot(pool, s, "copyStateSlot");
    if (src === dst) return;
    this.withGraph("copyStateSlot", (G) => {
      for (const [t, last] of this.stateParts(pool)) {
        const rows = G.reshape(this.la().current(G, this.rowsOf(t, last), Int32Array.of(src), null), [1, 1, ...t.shape.slice(1)]);
        this.setState(G, pool, t, G.writeRows(t.h, t.shape.slice(1), Int32Array.of(dst), rows));
        last.set(G, dst, rows);
      }
    });
  }

  stateSlotBytes(p: StatePool): number {
    const pool = this.statePool(p, "stateSlotBytes");
    return ((pool.conv.size + pool.delta.size) / pool.numSlots) * 4;
  }

  /** Bytes of one slot's conv and delta state, after checking the slot and the caller's buffer. */
  private stateSlotParts(pool: MStatePool, slot: number, nbytes: number, what: string): [number, number] {
    this.checkSlot(pool, slot, what);
    const convBytes = (pool.conv.size / pool.numSlots) * 4;
    const deltaBytes = (pool.delta.size / pool.numSlots) * 4;
    if (nbytes !== convBytes + deltaBytes) invalid(`${what}: ${nbytes} bytes for a slot of ${convBytes + deltaBytes}`);
    return [convBytes, deltaBytes];
  }

  readStateSlot(p: StatePool, slot: number, out: Uint8Array): void {
    const pool = this.statePool(p, "readStateSlot");
    const [convBytes] = this.stateSlotParts(pool, slot, out.byteLength, "readStateSlot");
    this.withGraph("readStateSlot", (G) => {
      let at = 0;
      for (const [t, last] of this.stateParts(pool)) {
        const rows = this.la().current(G, this.rowsOf(t, last), Int32Array.of(slot), null);
        out.set(new Uint8Array(this.bytesOfHandle(rows, "readStateSlot")), at);
        at = convBytes;
      }
    });
  }

  writeStateSlot(p: StatePool, slot: number, data: Uint8Array): void {
    const pool = this.statePool(p, "writeStateSlot");
    const [convBytes] = this.stateSlotParts(pool, slot, data.byteLength, "writeStateSlot");
    this.withGraph("writeStateSlot", (G) => {
      const bytes = [data.slice(0, convBytes), data.slice(convBytes)];
      this.stateParts(pool).forEach(([t, last], i) => {
        const rows = G.data(bytes[i]!, [1, 1, ...t.shape.slice(1)], MLX_DTYPE.f32);
        this.setState(G, pool, t, G.writeRows(t.h, t.shape.slice(1), Int32Array.of(slot), rows));
        last.set(G, slot, rows);
      });
    });
  }

  private stateParts(pool: MStatePool): [MTensor, LastRows][] {
    return [
      [pool.conv, pool.convRows],
      [pool.delta, pool.deltaRows],
    ];
  }

  copyBlock(p: KvPool, src: number, dst: number): void {
    const pool = this.pool(p, "copyBlock");
    args.checkCopyBlock(pool, src, dst);
    if (src === dst) return;
    const tmp = new Temps();
    try {
      for (const t of pool.parts) this.putBlock(pool, t, dst, tmp.add(this.blockRows(pool, t, src, "copyBlock")), "copyBlock");
      this.dirtyPools.add(pool);
    } finally {
      this.freeAll(tmp);
    }
  }

  /** The rows of one block of a pool tensor [slots * heads, row] (a new handle). */
  private blockRows(pool: MKvPool, t: MTensor, block: number, what: string): number {
    const n = pool.blockSize * pool.kvHeads;
    return this.res(this.S.mlx_slice(outSlot(), t.h, ints([block * n, 0]), 2, ints([(block + 1) * n, t.shape[1]!]), 2, ONES2, 2, this.stream), what);
  }

  /** Replaces one block's rows of a pool tensor by rows [blockSize * heads, row]. */
  private putBlock(pool: MKvPool, t: MTensor, block: number, rows: number, what: string): void {
    const n = pool.blockSize * pool.kvHeads;
    this.swap(t, this.res(this.S.mlx_slice_update(outSlot(), t.h, rows, ints([block * n, 0]), 2, ints([(block + 1) * n, t.shape[1]!]), 2, ONES2, 2, this.stream), what));
  }

  readKvBlock(p: KvPool, block: number, into?: Uint8Array): Uint8Array {
    const pool = this.pool(p, "readKvBlock");
    args.checkKvBlockIo("readKvBlock", pool, block, into);
    const out = into ?? new Uint8Array(kvBlockBytes(pool));
    const tmp = new Temps();
    try {
      // One evaluation of the block's parts, flattened to bytes and joined in the documented order.
      const bytes = pool.parts.map((t) => {
        const h = tmp.add(this.blockRows(pool, t, block, "readKvBlock"));
        const flat = this.raw.reshape(h, [-1], tmp);
        return t.dtype === "u8" ? flat : tmp.add(this.res(this.S.mlx_view(outSlot(), flat, MLX_DTYPE.u8, this.stream), "readKvBlock"));
      });
      const vec = Number(this.S.mlx_vector_array_new_data(handles(bytes), bytes.length));
      let joined: number;
      try {
        joined = tmp.add(this.res(this.S.mlx_concatenate_axis(outSlot(), vec, 0, this.stream), "readKvBlock"));
      } finally {
        this.S.mlx_vector_array_free(vec);
      }
      out.set(new Uint8Array(this.bytesOfHandle(joined, "readKvBlock")));
    } finally {
      this.freeAll(tmp);
    }
    return out;
  }

  writeKvBlock(p: KvPool, block: number, bytes: Uint8Array): void {
    const pool = this.pool(p, "writeKvBlock");
    args.checkKvBlockIo("writeKvBlock", pool, block, bytes);
    const tmp = new Temps();
    try {
      let at = 0;
      const rows = pool.blockSize * pool.kvHeads;
      for (const t of pool.parts) {
        const shape = [rows, t.shape[1]!];
        const n = rows * shape[1]! * DTYPE_BYTES[t.dtype];
        const src = this.raw.data(bytes.slice(at, at + n), shape, TO_MLX[t.dtype], tmp);
        at += n;
        this.putBlock(pool, t, block, src, "writeKvBlock");
      }
      this.dirtyPools.add(pool);
    } finally {
      this.freeAll(tmp);
    }
  }

  /**
   * Gathers each sequence's keys and values from the pool through its block table into a padded batch
   * [seqs, kvHeads, S, D], its queries into [seqs, heads, Lq, D], and runs one masked attention; the mask carries
   * causality, the sliding window and the padding.
   */
  pagedAttention(q: Tensor, p: KvPool, batch: AttentionBatch, opts: AttentionOptions): Tensor {
    const pool = this.pool(p, "pagedAttention");
    const qt = this.arg(q, "pagedAttention");
    args.checkPagedAttention(qt, pool, batch);
    const [T, H] = qt.shape as [number, number, number];
    const D = pool.headDim;
    const B = batch.seqLens.length;
    const bs = pool.blockSize;
    const kvH = pool.kvHeads;
    const { Lq, S, rank, qIdx, outIdx, inPlace } = this.attentionPlan(batch, T, bs);
    const idx = this.gatherIndex(batch, pool, S);
    const window = opts.window ?? 0;
    const simple = inPlace && window === 0;
    const buildMask = () =>
      this.stepArrays.get(`mask ${B} ${Lq} ${S} ${window}`, [batch.tokenSeq, batch.positions, batch.seqLens], () =>
        this.constant(maskRows(), [B, 1, Lq, S], MLX_DTYPE.bool, "pagedAttention"),
      );
    const maskRows = () => {
      const mask = new Uint8Array(B * Lq * S);
      for (let r = 0; r < B * Lq; r++) mask[r * S] = 1;
      for (let t = 0; t < T; t++) {
        const s = batch.tokenSeq[t]!;
        const row = s * Lq + rank[t]!;
        const pos = batch.positions[t]!;
        const hi = Math.min(pos, batch.seqLens[s]! - 1);
        const lo = window > 0 ? Math.max(0, pos - window + 1) : 0;
        mask[row * S] = 0;
        for (let j = lo; j <= hi; j++) mask[row * S + j] = 1;
      }
      return mask;
    };

    if (pool.sides.some((x) => x.e.kind === "affine")) return this.packedAttention(qt, pool, { B, Lq, S, idx, qIdx, outIdx, mask: buildMask() }, opts);
    const mask = simple ? null : buildMask();
    const softcap = opts.softcap ?? 0;
    return this.op((tmp) => {
      const gather = (src: MTensor) => {
        const r4 = this.raw.take(src.h, idx, 0, tmp);
        return src.dtype === this.computeDtype ? r4 : this.raw.astype(r4, this.adt, tmp);
      };
      const K = gather(pool.k);
      const V = gather(pool.v);
      const qh = this.f32(qt, tmp);
      const qRows = simple ? qh : this.raw.take(qh, this.raw.data(qIdx, [B * Lq], MLX_DTYPE.i32, tmp), 0, tmp);
      // One query a sequence: moving the length-1 axis is a reshape.
      const Q = Lq === 1 ? this.raw.reshape(qRows, [B, H, 1, D], tmp) : this.raw.transpose(this.raw.reshape(qRows, [B, Lq, H, D], tmp), [0, 2, 1, 3], tmp);
      let O: number;
      if (softcap > 0) {
        const M = mask ?? this.causalMask(Lq, S, tmp);
        O = this.cappedAttention(Q, K, V, M, B, H, kvH, Lq, S, D, opts.scale, softcap, tmp);
      } else {
        const mode = mask ? MASK_ARRAY : Lq === 1 ? MASK_NONE : MASK_CAUSAL;
        O = tmp.add(this.res(this.S.mlx_fast_scaled_dot_product_attention(outSlot(), Q, K, V, opts.scale, mode, mask, null, this.stream), "pagedAttention"));
      }
      const rows = this.raw.reshape(Lq === 1 ? O : this.raw.transpose(O, [0, 2, 1, 3], tmp), [B * Lq, H, D], tmp);
      if (simple) return rows;
      return this.res(this.S.mlx_take_axis(outSlot(), rows, this.raw.data(outIdx, [T], MLX_DTYPE.i32, tmp), 0, this.stream), "pagedAttention");
    }, [T, H, D], this.computeDtype);
  }

  /**
   * The rows of a step's paged attention (see AttentionPlan), checked against the batch: made once for the
   * layers of a step, which all pass the same tables.
   */
  private attentionPlan(batch: AttentionBatch, T: number, bs: number): AttentionPlan {
    const tables = [batch.tokenSeq, batch.positions, batch.seqLens, batch.blockTables];
    for (let i = this.plans.length - 1; i >= 0; i--) {
      const p = this.plans[i]!;
      if (p.bs === bs && p.maxBlocks === batch.maxBlocks && sameTables(p.tables, tables)) return p;
    }
    const B = batch.seqLens.length;
    const { maxBlocks } = batch;
    const rank = new Int32Array(T);
    const counts = new Int32Array(B);
    for (let t = 0; t < T; t++) {
      const s = batch.tokenSeq[t]!;
      if (!(s >= 0 && s < B)) invalid(`pagedAttention: token ${t} in sequence ${s} of ${B}`);
      rank[t] = counts[s]!++;
    }
    let Lq = 1;
    let S = 1;
    for (let s = 0; s < B; s++) {
      Lq = Math.max(Lq, counts[s]!);
      const L = batch.seqLens[s]!;
      if (!(L >= 0 && L <= maxBlocks * bs)) invalid(`pagedAttention: sequence ${s} of ${L} tokens exceeds its ${maxBlocks} blocks`);
      S = Math.max(S, L);
    }
    const qIdx = new Int32Array(B * Lq);
    const outIdx = new Int32Array(T);
    let inPlace = B === 1 && T === S - (batch.positions[0] ?? 0);
    for (let t = 0; t < T; t++) {
      const s = batch.tokenSeq[t]!;
      const row = s * Lq + rank[t]!;
      qIdx[row] = t;
      outIdx[t] = row;
      const pos = batch.positions[t]!;
      if (!(pos >= 0 && pos < batch.seqLens[s]!)) invalid(`pagedAttention: token ${t} at position ${pos} of a sequence of ${batch.seqLens[s]} tokens`);
      if (row !== t || pos !== S - T + t) inPlace = false;
    }
    const plan = { tables: tables.map((t) => t.slice()), bs, maxBlocks, Lq, S, rank, qIdx, outIdx, inPlace };
    this.plans.push(plan);
    // a step's spaces (a windowed cache's two, a draft model's) each keep theirs
    if (this.plans.length > 4) this.plans.shift();
    return plan;
  }

  /**
   * i32 [B, kvHeads, S]: the pool row (slot * kvHeads + head) of each key of each sequence, so that a take gives
   * the keys straight in [seqs, kvHeads, S] order (MLX's CPU attention runs many times slower on the strided view
   * a [seqs, S, kvHeads] gather would give after a transpose). Every layer of a step reads the same tables, so the
   * array is made once and kept while the tables stay the same: building it is O(S) host work a layer.
   */
  private gatherIndex(batch: AttentionBatch, pool: MKvPool, S: number): number {
    const { blockSize: bs, kvHeads: kvH, numBlocks } = pool;
    const B = batch.seqLens.length;
    return this.stepArrays.get(`gather ${kvH} ${bs} ${numBlocks} ${S}`, [batch.seqLens, batch.blockTables], () => {
      const rowIdx = new Int32Array(B * kvH * S);
      for (let s = 0; s < B; s++)
        for (let j = 0; j < batch.seqLens[s]!; j++) {
          const blk = batch.blockTables[s * batch.maxBlocks + Math.floor(j / bs)]!;
          if (!(blk >= 0 && blk < numBlocks)) invalid(`pagedAttention: block ${blk} outside the pool's ${numBlocks}`);
          for (let h = 0; h < kvH; h++) rowIdx[(s * kvH + h) * S + j] = (blk * bs + (j % bs)) * kvH + h;
        }
      return this.constant(rowIdx, [B, kvH, S], MLX_DTYPE.i32, "pagedAttention");
    });
  }

  /** A copy of host data owned by the caller (not by a scope), and its size. */
  private constant(data: Int32Array | Uint8Array, shape: readonly number[], dtype: number, what: string): { h: number; bytes: number } {
    const h = Number(this.S.mlx_array_new_data(data.byteLength ? data : EMPTY, ints(shape), shape.length, dtype));
    if (!h) this.fail(what);
    return { h, bytes: data.byteLength };
  }

  /** [1, 1, Lq, S] bool: query i sees keys up to S - Lq + i (the last query aligned with the last key). */
  private causalMask(Lq: number, S: number, tmp: Temps): number {
    const m = new Uint8Array(Lq * S);
    for (let i = 0; i < Lq; i++) m.fill(1, i * S, S - Lq + i + 1 + i * S);
    return this.raw.data(m, [1, 1, Lq, S], MLX_DTYPE.bool, tmp);
  }

  /**
   * Attention over a pool with a packed side, the way mlx-lm attends over its quantized cache: scores =
   * quantized_matmul(q * scale, K codes, transposed), soft-cap, mask, precise softmax, then quantized_matmul(p, V
   * codes). Each sequence's rows (codes, scales, biases) are gathered through its block table into [seqs, kvHeads,
   * S, row] order, and a KV head's query heads share its rows as the rows of one product (GQA without copies), so
   * no key or value is ever held as floats. Long prefill chunks run in runs of query positions (SCORE_BYTES).
   */
  private packedAttention(qt: MTensor, pool: MKvPool, g: PagedGather, opts: AttentionOptions): Tensor {
    const { B, Lq, S } = g;
    const [T, H] = qt.shape as [number, number, number];
    const D = pool.headDim;
    const kvH = pool.kvHeads;
    const rep = H / kvH;
    const softcap = opts.softcap ?? 0;
    // Query positions per product, so that a long prefill chunk never holds more than about SCORE_BYTES of scores.
    const chunk = Math.max(1, Math.min(Lq, Math.floor(SCORE_BYTES / (B * H * S * 4))));
    return this.op((tmp) => {
      const gather = (t: MTensor) => this.raw.take(t.h, g.idx, 0, tmp);
      // One side's rows [B, kvH, S, *], gathered once for every chunk: floats as f32, codes as MLX's uint32 words.
      const operand = (side: MKvSide) => {
        const data = gather(side.data);
        if (side.e.kind === "float") return { e: side.e, data: side.data.dtype === this.computeDtype ? data : this.raw.astype(data, this.adt, tmp), scales: 0, biases: 0 };
        const scales = gather(side.scales!);
        const biases = gather(side.biases!);
        return { e: side.e, data: tmp.add(this.res(this.S.mlx_view(outSlot(), data, MLX_DTYPE.u32, this.stream), "pagedAttention")), scales, biases };
      };
      // x [B, kvH, R, *] times one side's rows: keys transposed (x [.., D] -> [.., S]), values not ([.., S] -> [.., D]).
      const product = (x: number, o: ReturnType<typeof operand>, keys: boolean): number => {
        if (o.e.kind === "float") return this.raw.bin("mlx_matmul", x, keys ? this.raw.transpose(o.data, [0, 1, 3, 2], tmp) : o.data, tmp);
        const y = tmp.add(
          this.res(
            this.S.mlx_quantized_matmul(outSlot(), x, o.data, o.scales, o.biases, keys, optInt(o.e.group), optInt(o.e.bits), MODE_NAMES.affine, this.stream),
            "pagedAttention",
          ),
        );
        return this.f32AfterOp(y, tmp);
      };
      // x[..., lo:hi, ...] along axis of a tensor of this shape.
      const part = (x: number, shape: number[], axis: number, lo: number, hi: number) => {
        const start = shape.map((_, i) => (i === axis ? lo : 0));
        const stop = shape.map((d, i) => (i === axis ? hi : d));
        const n = shape.length;
        return tmp.add(this.res(this.S.mlx_slice(outSlot(), x, ints(start), n, ints(stop), n, ints(shape.map(() => 1)), n, this.stream), "pagedAttention"));
      };
      const K = operand(pool.sides[0]);
      const V = operand(pool.sides[1]);
      const qRows = this.raw.take(this.f32(qt, tmp), this.raw.data(g.qIdx, [B * Lq], MLX_DTYPE.i32, tmp), 0, tmp);
      const q4 = this.raw.transpose(this.raw.reshape(qRows, [B, Lq, H, D], tmp), [0, 2, 1, 3], tmp);
      const Q = this.raw.bin("mlx_multiply", this.raw.reshape(q4, [B, kvH, rep, Lq, D], tmp), this.scalar(opts.scale), tmp);
      const M = this.raw.reshape(g.mask, [B, 1, 1, Lq, S], tmp);
      const outs: number[] = [];
      for (let lo = 0; lo < Lq; lo += chunk) {
        const c = Math.min(chunk, Lq - lo);
        const q = c === Lq ? Q : part(Q, [B, kvH, rep, Lq, D], 3, lo, lo + c);
        const m = c === Lq ? M : part(M, [B, 1, 1, Lq, S], 3, lo, lo + c);
        let s = product(this.raw.reshape(q, [B, kvH, rep * c, D], tmp), K, true);
        if (softcap > 0) {
          s = this.raw.bin("mlx_multiply", s, this.scalar(1 / softcap), tmp);
          s = this.raw.bin("mlx_multiply", this.raw.un("mlx_tanh", s, tmp), this.scalar(softcap), tmp);
        }
        const s5 = this.raw.reshape(s, [B, kvH, rep, c, S], tmp);
        const masked = tmp.add(this.res(this.S.mlx_where(outSlot(), m, s5, this.scalar(-Infinity), this.stream), "pagedAttention"));
        const pr = tmp.add(this.res(this.S.mlx_softmax_axis(outSlot(), masked, -1, true, this.stream), "pagedAttention"));
        outs.push(this.raw.reshape(product(this.raw.reshape(pr, [B, kvH, rep * c, S], tmp), V, false), [B, kvH, rep, c, D], tmp));
      }
      let O = outs[0]!;
      if (outs.length > 1) {
        const vec = Number(this.S.mlx_vector_array_new_data(handles(outs), outs.length));
        try {
          O = tmp.add(this.res(this.S.mlx_concatenate_axis(outSlot(), vec, 3, this.stream), "pagedAttention"));
        } finally {
          this.S.mlx_vector_array_free(vec);
        }
      }
      const rows = this.raw.reshape(this.raw.transpose(this.raw.reshape(O, [B, H, Lq, D], tmp), [0, 2, 1, 3], tmp), [B * Lq, H, D], tmp);
      return this.res(this.S.mlx_take_axis(outSlot(), rows, this.raw.data(g.outIdx, [T], MLX_DTYPE.i32, tmp), 0, this.stream), "pagedAttention");
    }, [T, H, D], this.computeDtype);
  }

  /** Attention with tanh soft-capped scores, in plain ops (MLX's fused attention has no soft-cap). */
  private cappedAttention(Q: number, K: number, V: number, M: number, B: number, H: number, kvH: number, Lq: number, S: number, D: number, scale: number, cap: number, tmp: Temps): number {
    const rep = H / kvH;
    const q5 = this.raw.reshape(Q, [B, kvH, rep, Lq, D], tmp);
    const kT = this.raw.reshape(this.raw.transpose(K, [0, 1, 3, 2], tmp), [B, kvH, 1, D, S], tmp);
    const v5 = this.raw.reshape(V, [B, kvH, 1, S, D], tmp);
    let s = this.raw.bin("mlx_matmul", q5, kT, tmp);
    s = this.raw.bin("mlx_multiply", s, this.scalar(scale / cap), tmp);
    s = this.raw.bin("mlx_multiply", this.raw.un("mlx_tanh", s, tmp), this.scalar(cap), tmp);
    const m5 = this.raw.reshape(M, [B, 1, 1, Lq, S], tmp);
    s = tmp.add(this.res(this.S.mlx_where(outSlot(), m5, s, this.scalar(-Infinity), this.stream), "pagedAttention"));
    const pr = tmp.add(this.res(this.S.mlx_softmax_axis(outSlot(), s, -1, true, this.stream), "pagedAttention"));
    return this.raw.reshape(this.raw.bin("mlx_matmul", pr, v5, tmp), [B, H, Lq, D], tmp);
  }

  sdpa(q: Tensor, k: Tensor, v: Tensor, scale: number, causal: boolean): Tensor {
    const qt = this.arg(q, "sdpa");
    const kt = this.arg(k, "sdpa");
    const vt = this.arg(v, "sdpa");
    if (qt.shape.length !== 4 || kt.shape.length !== 4 || vt.shape.length !== 4)
      invalid(`sdpa: q ${fmt(qt.shape)}, k ${fmt(kt.shape)}, v ${fmt(vt.shape)} must be rank 4`);
    const [B, H, , D] = qt.shape as [number, number, number, number];
    const [kB, kH, S, kD] = kt.shape as [number, number, number, number];
    if (kB !== B || kD !== D || H % kH !== 0 || vt.shape[0] !== B || vt.shape[1] !== kH || vt.shape[2] !== S)
      invalid(`sdpa: q ${fmt(qt.shape)}, k ${fmt(kt.shape)}, v ${fmt(vt.shape)} are not [B,H,L,D], [B,Hkv,S,D], [B,Hkv,S,D]`);
    return this.op((tmp) =>
      this.res(
        this.S.mlx_fast_scaled_dot_product_attention(
          outSlot(),
          this.f32(qt, tmp),
          this.f32(kt, tmp),
          this.f32(vt, tmp),
          scale,
          causal ? MASK_CAUSAL : MASK_NONE,
          null,
          null,
          this.stream,
        ),
        "sdpa",
      ),
    );
  }

  varlenAttention(q: Tensor, k: Tensor, v: Tensor, seqStart: Int32Array, opts: VarlenAttentionOptions): Tensor {
    args.checkVarlenAttention(this.arg(q, "varlenAttention"), this.arg(k, "varlenAttention"), this.arg(v, "varlenAttention"), seqStart, opts);
    return composedVarlenAttention(this, q, k, v, seqStart, opts);
  }

  /** Bytes MLX holds for arrays now (for tests and metrics), not counting what spare handles still hold. */
  activeMemory(): number {
    this.freeSpares();
    const out = new BigUint64Array(1);
    this.S.mlx_get_active_memory(out);
    return Number(out[0]);
  }
}

