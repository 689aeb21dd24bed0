// The Backend interface: tensors and the ops the model families need. Names and semantics follow MLX
// (mlx.core / mlx.core.fast), so that porting an mlx-lm model is line for line and the mlx backend is a thin
// map onto mlx-c. Ops are lazy: they record, and eval() (or a read-back) runs what was recorded.
//
// Differences from MLX, on purpose:
//  - activations are f32 on the native backend (weights keep their stored dtype or quantized format);
//  - rope takes one position per token (not a scalar offset), and attention reads a paged KV pool through
//    block tables, because the server batches sequences of different lengths into one step.

import type { ComputeDtypeMode } from "./choice.ts";
import { floatKvFormat, type KvFloatDType, type KvFormat, kvElementBytes } from "../quant/kv_codec.ts";

export type DType = "f32" | "f16" | "bf16" | "u32" | "u8" | "i32";

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = { f32: 4, f16: 2, bf16: 2, u32: 4, u8: 1, i32: 4 };
export type QuantMode = "affine" | "mxfp4" | "mxfp8" | "nvfp4";

export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
}

/** A quantized weight in MLX's layout: w uint32 [..., out, in*bits/32], scales (and biases for affine) [..., out, in/group]. */
export interface QuantizedWeight {
  readonly w: Tensor;
  readonly scales: Tensor;
  readonly biases?: Tensor;
  readonly mode: QuantMode;
  readonly bits: number;
  readonly groupSize: number;
  /** nvfp4 only. */
  readonly globalScale?: number;
  /**
   * Products of many rows of x keep exact f32 under the native backend's automatic prefill arithmetic: set on
   * every weight of a model that routes tokens to experts, where a near-tie in the router turns a rounding of x
   * into another expert's output.
   */
  readonly exactRows?: boolean;
}

/** A Linear / embedding weight: float [out, in] or quantized. */
export type Weight = Tensor | QuantizedWeight;

/**
 * A BitNet b1.58 Linear's weight: ternary values t in {-1, 0, 1} packed as transformers stores them, uint8
 * [out/4, in], byte (r, k) holding the codes t + 1 of rows r + i*out/4 in bits 2i..2i+1.
 */
export interface TernaryWeight {
  readonly packed: Tensor;
  /** Multiplies the product (AutoBitLinear, online quantization), or divides it when `divide` (BitLinear). */
  readonly scale: number;
  readonly divide: boolean;
}

export function isQuantized(w: Weight): w is QuantizedWeight {
  return (w as QuantizedWeight).scales !== undefined;
}

export interface RopeOptions {
  /** Rotated dims (partial rotary when < head dim). */
  dims: number;
  /** true: rotate adjacent pairs (GPT-J style); false: rotate halves (NeoX / Llama HF style). */
  traditional: boolean;
  /** Base frequency, ignored when freqs is given. */
  base: number;
  /** Multiplies positions (linear scaling is scale = 1/factor). */
  scale: number;
  /** Precomputed inverse frequencies [dims/2] (llama3, yarn, longrope), overriding base. */
  freqs?: Float32Array;
  /** Multiplies cos and sin (yarn's attention factor). Default 1. */
  mscale?: number;
}

/** Where each token of a batched step sits: in which sequence, at which position. */
export interface AttentionBatch {
  /** Block table of each sequence, row-major [numSeqs, maxBlocks]; entries are block indices into the pool. */
  blockTables: Int32Array;
  maxBlocks: number;
  /** Total tokens of each sequence in the cache after this step's writes [numSeqs]. */
  seqLens: Int32Array;
  /** Sequence index of each token of the step [T]. */
  tokenSeq: Int32Array;
  /** Absolute position of each token of the step [T]. */
  positions: Int32Array;
}

/** Attention of an encoder step (no cache): each sequence of a padding-free batch over its own tokens. */
export interface VarlenAttentionOptions {
  scale: number;
  /** true: a token sees its sequence's tokens up to itself (decoder-only encoders such as Qwen3-Embedding). */
  causal: boolean;
  /**
   * Window in tokens, 0 = none. Causal: keys in (i - window, i]; bidirectional: keys j with |i - j| < window
   * (Gemma 3 with use_bidirectional_attention, whose sliding layers transformers gives such a window).
   */
  window?: number;
}

export interface AttentionOptions {
  scale: number;
  /** Sliding window in tokens (a query at position p sees keys in (p - window, p]); 0 = full causal. */
  window?: number;
  /** tanh soft-capping of the scores (Gemma 2); 0 = none. */
  softcap?: number;
}

/**
/** Bytes of one block of a pool, both sides (what readKvBlock returns). */
export function kvBlockBytes(pool: KvPool): number {
  const f = pool.format ?? floatKvFormat(pool.k.dtype as KvFloatDType);
  return pool.blockSize * pool.kvHeads * (kvElementBytes(f.k, pool.headDim) + kvElementBytes(f.v, pool.headDim));
}

/**
 * A paged KV pool for one layer. Float sides: k / v [numBlocks, blockSize, kvHeads, headDim] in their dtype.
 * Packed sides (format affine, fp8 or turbo) are the only copy of their values: k / v hold the codes, u8
 * [numBlocks, blockSize, kvHeads, headDim * bits / 8], and kScales / kBiases (vScales / vBiases) f16
 * [numBlocks, blockSize, kvHeads, headDim / group] (no biases for fp8; turbo: one scale per row, see KvElement).
 */
export interface KvPool {
  readonly k: Tensor;
  readonly v: Tensor;
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly kvHeads: number;
  readonly headDim: number;
  /** Absent: both sides float in k.dtype. */
  readonly format?: KvFormat;
  readonly kScales?: Tensor;
  readonly kBiases?: Tensor;
  readonly vScales?: Tensor;
  readonly vBiases?: Tensor;
}

/** What one linear-attention (Gated DeltaNet) layer keeps per sequence. */
export interface StateSpec {
  /** Channels of the depthwise causal conv (q, k and v together). */
  convDim: number;
  /** Conv kernel size; the state keeps the last kernel - 1 inputs. */
  kernel: number;
  /** Key heads and value heads (each value head reads key head h / (valueHeads / keyHeads)). */
  keyHeads: number;
  valueHeads: number;
  keyDim: number;
  valueDim: number;
}

/**
 * The recurrent state of one linear-attention layer for numSlots sequences, f32: conv [numSlots, kernel - 1,
 * convDim] (the last inputs, oldest first) and delta [numSlots, valueHeads, valueDim, keyDim] (mlx-lm's layout).
 */
export interface StatePool extends StateSpec {
  readonly conv: Tensor;
  readonly delta: Tensor;
  readonly numSlots: number;
}

/** Which state slot each sequence of a step uses, and where its tokens are (each sequence's tokens contiguous). */
export interface RecurrentBatch {
  /** Token offset of each sequence [numSeqs + 1]. */
  seqStart: Int32Array;
  /** State slot of each sequence [numSeqs]. */
  slots: Int32Array;
  /** 1 where the sequence starts from a zero state (its first token is at position 0) [numSeqs]. */
  fresh: Int32Array;
}

/** How one row's token is drawn where its logits are (Backend.drawRows). */
export interface RowDraw {
  /** 0: the argmax. */
  temperature: number;
  topP: number;
  /** 0: no limit. */
  topK: number;
  minP: number;
  /** Uniform in [0, 1) from the request's generator; unused at temperature 0. */
  u: number;
  /** The tokens the pick may take, 1 a token (an output constraint's mask); absent: every token. */
  allowed?: Uint8Array;
}

export interface Backend {
  readonly name: string;
  /** A short description of the device (CPU model and ISA, GPU name). */
  readonly device: string;
  /**
   * Milliseconds this backend has spent computing (native: inside its one call per evaluation; mlx: inside
   * mlx_eval, which returns when the device is done, and mlx_async_eval, which may wait for it), so that host
   * overhead per step can be told apart; undefined where the backend cannot tell.
   */
  readonly computeMs?: number;
  /**
   * The backend to run a model whose float weights are in modelDtype under --compute-dtype mode, or undefined for
   * this one: the mlx backend keeps one instance per activation dtype; the native backend computes in f32 whatever
   * the model and has none.
   */
  forModel?(modelDtype: DType, mode: ComputeDtypeMode): Backend | undefined;
  /** The dtype activations are computed in, where a backend says (the mlx backend's; the native one is f32). */
  readonly computeDtype?: DType;

  // ---- creation and read-back ----
  /** Copies host data into a new tensor. */
  fromArray(data: Float32Array | Int32Array | Uint32Array | Uint16Array | Uint8Array, shape: readonly number[], dtype: DType): Tensor;
  /** Wraps bytes without copying (mmapped weights). The bytes must outlive the tensor. */
  fromBytes(bytes: Uint8Array, shape: readonly number[], dtype: DType): Tensor;
  /**
   * Memory of the backend's own for a model weight, kept for the model's life, which the caller fills with the
   * stored bytes (read from the file or copied): where its kernels read it faster than the file's mapping.
   * Undefined where the stored bytes should stay in place (fromBytes); left out where that is always so.
   */
  weightBuffer?(shape: readonly number[], dtype: DType): { tensor: Tensor; bytes: Uint8Array } | undefined;
  zeros(shape: readonly number[], dtype: DType): Tensor;
  /** Runs everything recorded that the given tensors depend on. */
  eval(...tensors: Tensor[]): void;
  /**
   * Starts what eval() would run and returns without waiting, so that the host can record the next step while
   * the device computes this one; a later eval or read-back waits for it. Only where the device runs apart from
   * the host (the mlx backend); absent elsewhere.
   */
  evalAsync?(...tensors: Tensor[]): void;
  /**
   * Evaluates and copies out as f32 (any float dtype) or i32. With `out` long enough, the values go into it and a
   * view of it is returned, so a per-step read-back (the logits) allocates nothing.
   */
  toFloat32(t: Tensor, out?: Float32Array): Float32Array;
  toInt32(t: Tensor): Int32Array;
  /**
   * Runs fn; every tensor created inside is freed when it returns, except those returned (in an array or
   * object) and persistent tensors (fromBytes, allocPersistent). Steps run inside a scope so RSS stays flat.
   */
  scope<T>(fn: () => T): T;
  /** A zero-filled tensor owned by the caller (model or cache), freed only by dispose(). */
  allocPersistent(shape: readonly number[], dtype: DType): Tensor;
  dispose(t: Tensor): void;

  // ---- shape ----
  reshape(x: Tensor, shape: readonly number[]): Tensor;
  transpose(x: Tensor, axes: readonly number[]): Tensor;
  /** x[start:end] along axis. */
  slice(x: Tensor, axis: number, start: number, end: number): Tensor;
  concatenate(xs: readonly Tensor[], axis: number): Tensor;
  astype(x: Tensor, dtype: DType): Tensor;

  // ---- products ----
  /** a [..., M, K] @ b [..., K, N], broadcasting leading dims. */
  matmul(a: Tensor, b: Tensor): Tensor;
  /** x [..., K] @ w.T (+ bias): a Linear with a float or quantized weight [N, K]. */
  linear(x: Tensor, w: Weight, bias?: Tensor): Tensor;
  /** mx.quantized_matmul(x, w, scales, biases, transpose=true, group_size, bits, mode). */
  quantizedMatmul(x: Tensor, w: QuantizedWeight): Tensor;
  /**
   * MoE: x [T, K] or [T*topk, K], indices i32 [T, topk] of experts; w stacked [E, N, K] (float or quantized).
   * Returns [T, topk, N]: each token's row through each of its experts (mx.gather_qmm with rhs_indices).
   */
  gatherMatmul(x: Tensor, w: Weight, indices: Tensor): Tensor;
  /**
   * x [..., K] through a ternary Linear [N, K], as BitNet's linears compute it: each row of x quantized to int8
   * (s = 127 / max|x|, round half to even), integer products, then / s and the weight's scale.
   */
  ternaryLinear(x: Tensor, w: TernaryWeight): Tensor;
  /** Embedding lookup: rows of table (float or quantized) [V, D] for ids i32 [...] -> [..., D] f32. */
  take(table: Weight, ids: Tensor): Tensor;
  quantize(w: Tensor, mode: QuantMode, bits: number, groupSize: number): QuantizedWeight;
  dequantize(w: QuantizedWeight): Tensor;

  // ---- elementwise and reductions (broadcasting like MLX) ----
  add(a: Tensor, b: Tensor): Tensor;
  sub(a: Tensor, b: Tensor): Tensor;
  mul(a: Tensor, b: Tensor): Tensor;
  /** x * s for a scalar. */
  scale(x: Tensor, s: number): Tensor;
  sigmoid(x: Tensor): Tensor;
  silu(x: Tensor): Tensor;
  /** log(1 + exp(x)). */
  softplus(x: Tensor): Tensor;
  /** GELU, tanh approximation (gelu_pytorch_tanh). */
  geluTanh(x: Tensor): Tensor;
  /** GELU with the exact normal CDF, 0.5 x (1 + erf(x / sqrt 2)) (BERT's "gelu"). */
  gelu(x: Tensor): Tensor;
  /** silu(gate) * up. */
  swiglu(gate: Tensor, up: Tensor): Tensor;
  /** geluTanh(gate) * up. */
  geglu(gate: Tensor, up: Tensor): Tensor;
  /** relu(gate)^2 * up (BitNet's MLP). */
  relu2Mul(gate: Tensor, up: Tensor): Tensor;
  /** cap * tanh(x / cap). */
  softcap(x: Tensor, cap: number): Tensor;
  softmax(x: Tensor, axis?: number): Tensor;
  /** Over the last axis; returns i32 with that axis removed. */
  argmax(x: Tensor): Tensor;
  /**
   * One token per row of logits [R, V], i32 [R], picked as the host sampler picks from a row without bias or
   * penalties, after the row's mask (tokens not allowed at -inf): top_p, min_p and top_k on the distribution at
   * temperature 1, then the first index whose cumulative weight exp((x - max) / T) over the kept tokens passes u
   * times their total; the argmax at temperature 0. Where the logits live on a device apart from the host (mlx),
   * so that only ids come back; absent elsewhere.
   */
  drawRows?(logits: Tensor, draws: readonly RowDraw[]): Tensor;
  /**
   * Whether drawRows beats copying the logits out for the host's sampler at this temperature: a GPU sorts a
   * vocabulary for top_p in well under a millisecond, MLX's CPU build in about 25 ms (152k entries), slower than
   * the copy and the native sampler; its argmax is cheap everywhere.
   */
  drawPays?(temperature: number): boolean;
  /** Largest k along the last axis, descending: values f32 and indices i32, [..., k] each. */
  topk(x: Tensor, k: number): { values: Tensor; indices: Tensor };
  /** Sum along the given axis, removed. */
  sum(x: Tensor, axis: number): Tensor;

  // ---- normalisation and position ----
  /** mx.fast.rms_norm over the last axis; with onePlus, the weight is used as (1 + w) (Gemma). */
  rmsNorm(x: Tensor, w: Tensor | null, eps: number, onePlus?: boolean): Tensor;
  layerNorm(x: Tensor, w: Tensor | null, b: Tensor | null, eps: number): Tensor;
  /** x [T, H, D] with one position per token. */
  rope(x: Tensor, positions: Int32Array, opts: RopeOptions): Tensor;

  // ---- attention over a paged KV cache ----
  /** A pool in a float dtype (both sides) or a KvFormat; a backend throws for a format it cannot store. */
  createKvPool(numBlocks: number, blockSize: number, kvHeads: number, headDim: number, format: DType | KvFormat): KvPool;
  /**
   * Makes the memory of blocks [firstBlock, endBlock) of the pool (default: all of them) resident now, contents
   * unchanged, instead of page by page as blocks are first written (for long-lived caches: the server's). Left out
   * where pools are resident when made.
   */
  populateKvPool?(pool: KvPool, firstBlock?: number, endBlock?: number): void;
  /** Writes k, v [T, kvHeads, headDim] into the pool at slot indices (block * blockSize + offset) [T]. */
  kvWrite(pool: KvPool, k: Tensor, v: Tensor, slots: Int32Array): void;
  /** q [T, heads, headDim] attends causally (GQA: heads / kvHeads queries per KV head) -> [T, heads, headDim]. */
  pagedAttention(q: Tensor, pool: KvPool, batch: AttentionBatch, opts: AttentionOptions): Tensor;
  /** Dense mx.fast.scaled_dot_product_attention: q [B,H,L,D], k/v [B,Hkv,S,D]; causal aligns the last query with the last key. */
  sdpa(q: Tensor, k: Tensor, v: Tensor, scale: number, causal: boolean): Tensor;
  /**
   * Encoder attention without a cache: q [T, heads, headDim], k and v [T, kvHeads, headDim] of a padding-free
   * batch whose sequence i holds tokens [seqStart[i], seqStart[i + 1]) -> [T, heads, headDim].
   */
  varlenAttention(q: Tensor, k: Tensor, v: Tensor, seqStart: Int32Array, opts: VarlenAttentionOptions): Tensor;
  /** Copies one block of every layer's pool to another (copy-on-write of shared prefix blocks). */
  copyBlock(pool: KvPool, src: number, dst: number): void;
  /**
   * One block of a pool as bytes (what an SSD tier keeps), after every recorded write to the pool: keys, then
   * values; each side its codes [blockSize, kvHeads, row], then for a packed side its scales and biases
   * [blockSize, kvHeads, groups] (kvBlockBytes(pool) in all). With `out` (that many bytes), into it.
   */
  readKvBlock(pool: KvPool, block: number, out?: Uint8Array): Uint8Array;
  /** Overwrites one block of a pool with bytes laid out as readKvBlock gives them (recorded like kvWrite). */
  writeKvBlock(pool: KvPool, block: number, bytes: Uint8Array): void;

  // ---- linear attention over per-sequence recurrent state ----
  createStatePool(numSlots: number, spec: StateSpec): StatePool;
  /**
   * Depthwise causal conv1d without bias, x [T, convDim], w [convDim, kernel] (or [convDim, kernel, 1]): each
   * sequence's tokens follow the inputs its slot carries (zeros when fresh); the slot then keeps its last ones.
   */
  causalConv1d(x: Tensor, w: Tensor, pool: StatePool, batch: RecurrentBatch): Tensor;
  /**
   * The gated delta rule, f32, per sequence and value head over its slot's state S [valueDim, keyDim]:
   * S = exp(g) S; u = beta (v - S k); S += u k^T; out = S q. q, k [T, keyHeads, keyDim] (normalised and scaled by
   * the caller), v [T, valueHeads, valueDim], g (log-decay, <= 0) and beta [T, valueHeads] -> [T, valueHeads,
   * valueDim]. chunk > 0 runs runs of several tokens in that chunked form (same result up to rounding).
   */
  gatedDelta(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, pool: StatePool, batch: RecurrentBatch, chunk?: number): Tensor;
  /** Copies one slot's state (conv and delta) to another. */
  copyStateSlot(pool: StatePool, src: number, dst: number): void;
  /** Bytes of one slot's state: its conv inputs, then its delta-rule state (the layout of readStateSlot). */
  stateSlotBytes(pool: StatePool): number;
  /** Copies one slot's state out, as of the last recorded step: conv [kernel - 1, convDim] then delta, f32. */
  readStateSlot(pool: StatePool, slot: number, out: Uint8Array): void;
  /** Sets one slot's state from bytes laid out as readStateSlot gives them. */
  writeStateSlot(pool: StatePool, slot: number, data: Uint8Array): void;
}
