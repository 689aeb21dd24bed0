// What both backends check and walk the same way: argument errors, axes and shapes, the checks of each op's
// arguments against each other, and the tensors a scope's result keeps alive. Each backend first makes sure an
// argument is one of its own live tensors; the checks here see only shapes, dtypes and sizes.
import { RmlxError } from "../errors.ts";
import { QUANT_MODES } from "../quant/spec.ts";
import { floatKvFormat, type KvFloatDType, type KvFormat, kvElementProblem } from "../quant/kv_codec.ts";
import type { AttentionBatch, DType, KvPool, QuantizedWeight, RecurrentBatch, RopeOptions, StatePool, StateSpec, VarlenAttentionOptions } from "./backend.ts";
import { kvBlockBytes } from "./backend.ts";

export const FLOAT_DTYPES: readonly DType[] = ["f32", "f16", "bf16"];

/** A backend's tensor as the checks see it. */
export interface Sized {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly size: number;
}

export const fmt = (s: readonly number[]) => `[${s.join(", ")}]`;

export function invalid(msg: string): never {
  throw new RmlxError("invalid_argument", msg);
}

export function normAxis(axis: number, ndim: number, what: string): number {
  const a = axis < 0 ? axis + ndim : axis;
  if (!Number.isInteger(a) || a < 0 || a >= ndim) invalid(`${what}: axis ${axis} out of range for rank ${ndim}`);
  return a;
}

export function checkShape(shape: readonly number[], what: string): void {
  for (const d of shape) if (!Number.isInteger(d) || d < 0) invalid(`${what}: bad shape ${fmt(shape)}`);
}

/** Tensors of class T reachable from a scope's result: the value itself, or inside arrays and plain objects. */
export function collectTensors<T>(value: unknown, cls: abstract new (...args: never[]) => T, out: T[] = [], depth = 0): T[] {
  if (value instanceof cls) out.push(value);
  else if (depth < 6 && value !== null && typeof value === "object") {
    if (Array.isArray(value)) for (const v of value) collectTensors(v, cls, out, depth + 1);
    else if (Object.getPrototypeOf(value) === Object.prototype)
      for (const v of Object.values(value as Record<string, unknown>)) collectTensors(v, cls, out, depth + 1);
  }
  return out;
}

// ---------------------------------------------------------------- shape
// The checks of ops that run in every step return at most one number, so that none allocates.

/** The shape a and b broadcast to (right-aligned, as in MLX). */
export function broadcastShapes(a: readonly number[], b: readonly number[], what: string): number[] {
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

/** transpose's axes, normalised. */
export function transposeAxes(shape: readonly number[], axes: readonly number[]): number[] {
  const nd = shape.length;
  if (axes.length !== nd) invalid(`transpose: ${axes.length} axes for rank ${nd}`);
  const ax = axes.map((a) => normAxis(a, nd, "transpose"));
  if (new Set(ax).size !== nd) invalid(`transpose: axes ${fmt(axes)} repeat an axis`);
  return ax;
}

/** slice's axis, normalised, for integer bounds. */
export function sliceAxis(shape: readonly number[], axis: number, start: number, end: number): number {
  const a = normAxis(axis, shape.length, "slice");
  if (!Number.isInteger(start) || !Number.isInteger(end)) invalid(`slice: bounds ${start}:${end} are not integers`);
  return a;
}

/** A slice bound within [0, n]; negative bounds count from the end, as in Python. */
export function clampBound(v: number, n: number): number {
  return Math.min(n, Math.max(0, v < 0 ? v + n : v));
}

/** concatenate's axis, normalised, for parts that agree in dtype and off the axis in shape. */
export function concatAxis(ts: readonly Sized[], axis: number): number {
  if (ts.length === 0) invalid("concatenate: no tensors");
  const first = ts[0]!;
  const nd = first.shape.length;
  const a = normAxis(axis, nd, "concatenate");
  for (const t of ts) {
    if (t.dtype !== first.dtype) invalid(`concatenate: dtypes ${first.dtype} and ${t.dtype} differ`);
    if (t.shape.length !== nd || t.shape.some((d, i) => i !== a && d !== first.shape[i]))
      invalid(`concatenate: shapes ${ts.map((u) => fmt(u.shape)).join(", ")} differ off axis ${a}`);
  }
  return a;
}

// ---------------------------------------------------------------- products

/** A float Linear's weight, [out, in], against its input and bias. */
export function checkLinear(x: Sized, w: Sized, bias: Sized | null): void {
  if (w.shape.length !== 2 || !FLOAT_DTYPES.includes(w.dtype))
    invalid(`linear: weight must be a float [out, in] matrix, got ${w.dtype} ${fmt(w.shape)}`);
  const N = w.shape[0]!;
  if (x.shape[x.shape.length - 1] !== w.shape[1]) invalid(`linear: input ${fmt(x.shape)} does not match weight ${fmt(w.shape)}`);
  if (bias && bias.size !== N) invalid(`linear: bias ${fmt(bias.shape)} for ${N} outputs`);
}

/** A quantized weight's parts checked against each other; returns its input width (its output width is w's [-2]). */
export function checkQuantized(what: string, q: QuantizedWeight, w: Sized, scales: Sized, biases: Sized | null): number {
  if (w.dtype !== "u32") invalid(`${what}: packed weight must be u32, got ${w.dtype}`);
  if (!QUANT_MODES.includes(q.mode)) throw new RmlxError("unsupported", `${what}: quantization mode ${q.mode}`);
  if (q.mode === "affine" && !biases) invalid(`${what}: affine quantization needs biases`);
  const nd = w.shape.length;
  if (nd < 2) invalid(`${what}: packed weight ${fmt(w.shape)} needs rank >= 2`);
  const K = (w.shape[nd - 1]! * 32) / q.bits;
  if (!Number.isInteger(K) || K % q.groupSize !== 0)
    invalid(`${what}: packed weight ${fmt(w.shape)} with ${q.bits} bits and group ${q.groupSize}`);
  if (scales.shape[scales.shape.length - 1] !== K / q.groupSize || scales.size * q.groupSize !== (w.size * 32) / q.bits)
    invalid(`${what}: scales ${fmt(scales.shape)} do not match weight ${fmt(w.shape)} (group ${q.groupSize})`);
  if (biases && biases.size !== scales.size) invalid(`${what}: biases ${fmt(biases.shape)} do not match scales ${fmt(scales.shape)}`);
  return K;
}

/** quantizedMatmul's weight (checked by checkQuantized) against its input. */
export function checkQuantizedMatmul(x: Sized, w: Sized, K: number): void {
  if (w.shape.length !== 2) invalid(`quantizedMatmul: weight ${fmt(w.shape)} must be [out, in/pack]`);
  if (x.shape[x.shape.length - 1] !== K) invalid(`quantizedMatmul: input ${fmt(x.shape)} does not match weight of ${K} inputs`);
}

/**
 * gatherMatmul's [T, topk] indices against its input, which holds one row per (token, expert) pair (returns 1) or
 * one per token (returns topk): the divisor that maps a pair to its row.
 */
export function checkGather(x: Sized, indices: Sized): number {
  if (indices.dtype !== "i32" && indices.dtype !== "u32") invalid(`gatherMatmul: indices must be i32, got ${indices.dtype}`);
  if (indices.shape.length !== 2) invalid(`gatherMatmul: indices ${fmt(indices.shape)} must be [T, topk]`);
  const [T, topk] = indices.shape as [number, number];
  const rows = x.size / x.shape[x.shape.length - 1]!;
  if (rows === T * topk) return 1;
  if (rows !== T) invalid(`gatherMatmul: input ${fmt(x.shape)} has ${rows} rows, expected ${T} or ${T * topk} for indices ${fmt(indices.shape)}`);
  return topk;
}

/**
 * gatherMatmul's stacked experts against an input of width K: [E, out, in] floats, or (quantK given: the width
 * checkQuantized found) a quantized [E, out, in/pack]. Returns the experts' output width.
 */
export function checkExperts(x: Sized, w: Sized, K: number, quantK?: number): number {
  if (quantK !== undefined) {
    if (w.shape.length !== 3) invalid(`gatherMatmul: stacked weight ${fmt(w.shape)} must be [E, out, in/pack]`);
    if (quantK !== K) invalid(`gatherMatmul: input ${fmt(x.shape)} does not match experts of ${quantK} inputs`);
    return w.shape[1]!;
  }
  if (w.shape.length !== 3 || !FLOAT_DTYPES.includes(w.dtype))
    invalid(`gatherMatmul: stacked weight must be float [E, out, in], got ${w.dtype} ${fmt(w.shape)}`);
  if (w.shape[2] !== K) invalid(`gatherMatmul: input ${fmt(x.shape)} does not match experts ${fmt(w.shape)}`);
  return w.shape[1]!;
}

export function checkTakeIds(ids: Sized): void {
  if (ids.dtype !== "i32" && ids.dtype !== "u32") invalid(`take: ids must be i32, got ${ids.dtype}`);
}

/** take's table: a 2-D quantized weight, or a float [rows, dim] matrix. */
export function checkTable(table: Sized, quantized: boolean): void {
  if (quantized) {
    if (table.shape.length !== 2) invalid(`take: table ${fmt(table.shape)} must be 2-D`);
  } else if (table.shape.length !== 2 || !FLOAT_DTYPES.includes(table.dtype)) {
    invalid(`take: table must be a float [rows, dim] matrix, got ${table.dtype} ${fmt(table.shape)}`);
  }
}

// ---------------------------------------------------------------- elementwise and reductions

export function checkSoftcap(cap: number): void {
  if (!(cap > 0)) invalid(`softcap: cap must be > 0, got ${cap}`);
}

/** The length of argmax's (last) axis. */
export function checkArgmax(shape: readonly number[]): number {
  if (shape.length === 0) invalid("argmax: scalar input");
  const n = shape[shape.length - 1]!;
  if (n === 0) invalid(`argmax: empty last axis in ${fmt(shape)}`);
  return n;
}

/** The length of topk's (last) axis. */
export function checkTopk(shape: readonly number[], k: number): number {
  if (shape.length === 0) invalid("topk: scalar input");
  const n = shape[shape.length - 1]!;
  if (!Number.isInteger(k) || k < 1 || k > n) invalid(`topk: k=${k} out of range for ${fmt(shape)}`);
  return n;
}

// ---------------------------------------------------------------- normalisation and position

/** The length of a norm's (last) axis. */
export function normAxisLength(shape: readonly number[], what: string): number {
  if (shape.length === 0) invalid(`${what}: scalar input`);
  return shape[shape.length - 1]!;
}

/** A norm's weight or bias: float, one value per element of the last axis (n). */
export function checkNormWeight(w: Sized, n: number, what: string): void {
  if (!FLOAT_DTYPES.includes(w.dtype)) invalid(`${what}: weight dtype ${w.dtype}`);
  if (w.size !== n) invalid(`${what}: weight ${fmt(w.shape)} for a last axis of ${n}`);
}

/** rope's [T, H, D] input against its positions and options. */
export function checkRope(x: Sized, positions: Int32Array, opts: RopeOptions): void {
  if (x.shape.length !== 3) invalid(`rope: input ${fmt(x.shape)} must be [T, H, D]`);
  const T = x.shape[0]!;
  const D = x.shape[2]!;
  if (positions.length !== T) invalid(`rope: ${positions.length} positions for ${T} tokens`);
  if (!Number.isInteger(opts.dims) || opts.dims < 2 || opts.dims > D || opts.dims % 2) invalid(`rope: dims ${opts.dims} for head dim ${D}`);
  if (opts.freqs && opts.freqs.length !== opts.dims / 2) invalid(`rope: ${opts.freqs.length} freqs for ${opts.dims} dims`);
}

// ---------------------------------------------------------------- attention

/** A pool's format given as a float dtype (checked by checkKvPool) or a KvFormat. */
export function kvPoolFormat(format: DType | KvFormat): KvFormat {
  return typeof format === "string" ? floatKvFormat(format as KvFloatDType) : format;
}

export function checkKvPool(numBlocks: number, blockSize: number, kvHeads: number, headDim: number, format: DType | KvFormat): void {
  if (typeof format === "string" && !FLOAT_DTYPES.includes(format)) invalid(`createKvPool: dtype ${format} (f32, f16 or bf16)`);
  const f = kvPoolFormat(format);
  for (const e of [f.k, f.v]) {
    if (e.kind === "float" && !FLOAT_DTYPES.includes(e.dtype)) invalid(`createKvPool: dtype ${e.dtype} (f32, f16 or bf16)`);
    if (e.kind === "affine" && e.bits !== 4 && e.bits !== 8) invalid(`createKvPool: affine KV bits ${e.bits} (4 or 8)`);
    if (e.kind === "turbo" && e.bits !== 3 && e.bits !== 4) invalid(`createKvPool: turbo KV bits ${e.bits} (3 or 4)`);
    const why = kvElementProblem(e, headDim);
    if (why) invalid(`createKvPool: ${why}`);
  }
  for (const [n, v] of [["numBlocks", numBlocks], ["blockSize", blockSize], ["kvHeads", kvHeads], ["headDim", headDim]] as const)
    if (!Number.isInteger(v) || v < 1) invalid(`createKvPool: ${n} = ${v}`);
}

/** kvWrite's k and v ([T, kvHeads, headDim] each) against the pool and the slots; returns T. */
export function checkKvWrite(pool: KvPool, k: Sized, v: Sized, slots: Int32Array): number {
  const { kvHeads, headDim } = pool;
  for (const t of [k, v])
    if (t.shape.length !== 3 || t.shape[1] !== kvHeads || t.shape[2] !== headDim)
      invalid(`kvWrite: k/v ${fmt(t.shape)} must be [T, ${kvHeads}, ${headDim}]`);
  const T = k.shape[0]!;
  if (v.shape[0] !== T) invalid(`kvWrite: k ${fmt(k.shape)} and v ${fmt(v.shape)} differ`);
  if (slots.length !== T) invalid(`kvWrite: ${slots.length} slots for ${T} tokens`);
  return T;
}

export function checkCopyBlock(pool: KvPool, src: number, dst: number): void {
  for (const b of [src, dst])
    if (!Number.isInteger(b) || b < 0 || b >= pool.numBlocks) invalid(`copyBlock: block ${b} outside the pool's ${pool.numBlocks}`);
}

/** A block of the pool, and the bytes written or read into: exactly kvBlockBytes(pool) of them. */
export function checkKvBlockIo(what: string, pool: KvPool, block: number, bytes?: Uint8Array): void {
  if (!Number.isInteger(block) || block < 0 || block >= pool.numBlocks) invalid(`${what}: block ${block} outside the pool's ${pool.numBlocks}`);
  const want = kvBlockBytes(pool);
  if (bytes && bytes.byteLength !== want) invalid(`${what}: ${bytes.byteLength} bytes for a block of ${want}`);
}

/** pagedAttention's [T, heads, headDim] queries against the pool and the batch. */
export function checkPagedAttention(q: Sized, pool: KvPool, batch: AttentionBatch): void {
  if (q.shape.length !== 3 || q.shape[2] !== pool.headDim) invalid(`pagedAttention: q ${fmt(q.shape)} must be [T, heads, ${pool.headDim}]`);
  const T = q.shape[0]!;
  const H = q.shape[1]!;
  if (H % pool.kvHeads !== 0) invalid(`pagedAttention: ${H} heads not a multiple of ${pool.kvHeads} KV heads`);
  const numSeqs = batch.seqLens.length;
  if (batch.tokenSeq.length !== T || batch.positions.length !== T)
    invalid(`pagedAttention: ${batch.tokenSeq.length} tokenSeq and ${batch.positions.length} positions for ${T} tokens`);
  if (!Number.isInteger(batch.maxBlocks) || batch.maxBlocks < 1 || batch.blockTables.length !== numSeqs * batch.maxBlocks)
    invalid(`pagedAttention: block tables of ${batch.blockTables.length} entries for ${numSeqs} sequences x ${batch.maxBlocks} blocks`);
}

/** createStatePool's sizes. */
export function checkStateSpec(numSlots: number, s: StateSpec): void {
  const dims = { numSlots, convDim: s.convDim, kernel: s.kernel, keyHeads: s.keyHeads, valueHeads: s.valueHeads, keyDim: s.keyDim, valueDim: s.valueDim };
  for (const [n, v] of Object.entries(dims)) if (!Number.isInteger(v) || v < 1) invalid(`createStatePool: ${n} = ${v}`);
  if (s.valueHeads % s.keyHeads !== 0) invalid(`createStatePool: ${s.valueHeads} value heads over ${s.keyHeads} key heads`);
}

/**
 * The checked spec's own fields (a state pool carries them) and the shapes of its two f32 tensors: conv [numSlots,
 * kernel - 1, convDim], one row even for a kernel of 1 (which carries nothing), and delta [numSlots, valueHeads,
 * valueDim, keyDim]; every backend lays slots out so, which keeps their bytes interchangeable.
 */
export function statePoolLayout(numSlots: number, s: StateSpec): { spec: StateSpec & { numSlots: number }; conv: number[]; delta: number[] } {
  checkStateSpec(numSlots, s);
  const { convDim, kernel, keyHeads, valueHeads, keyDim, valueDim } = s;
  return {
    spec: { convDim, kernel, keyHeads, valueHeads, keyDim, valueDim, numSlots },
    conv: [numSlots, Math.max(1, kernel - 1), convDim],
    delta: [numSlots, valueHeads, valueDim, keyDim],
  };
}

/** A recurrent batch against its pool and a step of T tokens; returns the number of sequences. */
export function checkRecurrentBatch(what: string, pool: StatePool, b: RecurrentBatch, T: number): number {
  const n = b.slots.length;
  if (b.seqStart.length !== n + 1 || b.fresh.length !== n) invalid(`${what}: seqStart must have ${n + 1} and fresh ${n} entries`);
  if (b.seqStart[0] !== 0 || b.seqStart[n] !== T) invalid(`${what}: seqStart must run from 0 to the step's ${T} tokens`);
  const seen = new Set<number>();
  for (let i = 0; i < n; i++) {
    const s = b.slots[i]!;
    if (!Number.isInteger(s) || s < 0 || s >= pool.numSlots) invalid(`${what}: slot ${s} outside the pool's ${pool.numSlots}`);
    if (seen.has(s)) invalid(`${what}: slot ${s} used by two sequences of one step`);
    seen.add(s);
    if (b.seqStart[i + 1]! < b.seqStart[i]!) invalid(`${what}: sequence ${i} has a negative token count`);
  }
  return n;
}

/** causalConv1d's x [T, convDim] and w [convDim, kernel] or [convDim, kernel, 1]. */
export function checkCausalConv(x: Sized, w: Sized, pool: StatePool): void {
  if (x.shape.length !== 2 || x.shape[1] !== pool.convDim) invalid(`causalConv1d: x ${fmt(x.shape)} must be [T, ${pool.convDim}]`);
  const ok = w.shape[0] === pool.convDim && w.shape[1] === pool.kernel && (w.shape.length === 2 || (w.shape.length === 3 && w.shape[2] === 1));
  if (!ok) invalid(`causalConv1d: weight ${fmt(w.shape)} must be [${pool.convDim}, ${pool.kernel}] or [${pool.convDim}, ${pool.kernel}, 1]`);
}

/** gatedDelta's operands; returns T. */
export function checkGatedDelta(q: Sized, k: Sized, v: Sized, g: Sized, beta: Sized, pool: StatePool): number {
  const T = q.shape[0]!;
  const want: [string, Sized, number[]][] = [
    ["q", q, [T, pool.keyHeads, pool.keyDim]],
    ["k", k, [T, pool.keyHeads, pool.keyDim]],
    ["v", v, [T, pool.valueHeads, pool.valueDim]],
    ["g", g, [T, pool.valueHeads]],
    ["beta", beta, [T, pool.valueHeads]],
  ];
  for (const [n, t, s] of want)
    if (t.shape.length !== s.length || t.shape.some((d, i) => d !== s[i])) invalid(`gatedDelta: ${n} ${fmt(t.shape)} must be ${fmt(s)}`);
  return T;
}

/** q [T, H, D], k and v [T, Hkv, D] with H a multiple of Hkv; seqStart rising from 0 to T; returns the sequences' count. */
export function checkVarlenAttention(q: Sized, k: Sized, v: Sized, seqStart: Int32Array, opts: VarlenAttentionOptions): number {
  const what = "varlenAttention";
  if (q.shape.length !== 3 || k.shape.length !== 3 || v.shape.length !== 3) invalid(`${what}: q ${fmt(q.shape)}, k ${fmt(k.shape)}, v ${fmt(v.shape)} must be rank 3`);
  const [T, H, D] = q.shape as [number, number, number];
  const [kT, Hkv, kD] = k.shape as [number, number, number];
  if (kT !== T || kD !== D || Hkv < 1 || H % Hkv !== 0 || v.shape.some((d, i) => d !== k.shape[i]))
    invalid(`${what}: q ${fmt(q.shape)}, k ${fmt(k.shape)}, v ${fmt(v.shape)} are not [T,H,D], [T,Hkv,D], [T,Hkv,D]`);
  const n = seqStart.length - 1;
  if (n < 1 || seqStart[0] !== 0 || seqStart[n] !== T) invalid(`${what}: seqStart must run from 0 to ${T}`);
  for (let i = 0; i < n; i++) if (seqStart[i + 1]! < seqStart[i]!) invalid(`${what}: seqStart falls at ${i + 1}`);
  const w = opts.window ?? 0;
  if (!Number.isInteger(w) || w < 0) invalid(`${what}: window ${w}`);
  return n;
}
