// The op list of rmlx_exec's program format, declared once: each op's name, code and fields in wire order (the
// order of the keys). A program is a sequence of records of doubles [op, nwords, fields...]; pointers and integers
// are exact in a double (x86-64 user addresses fit in 47 bits).
//
// Nothing reads this file at run time. scripts/gen_oplist.ts derives from it the typed TypeScript encoders
// (oplist_gen.ts) and the C++ records and decoder (native/cpu/oplist_gen.h), so both sides read every field by
// name; test/native/oplist.test.ts fails while either generated file differs from what this declaration gives.
// Field names are camelCase here and in TypeScript, snake_case in C++.

export type Field =
  /** A native address; `c` is the C type pointed to. */
  | { readonly kind: "ptr"; readonly c: string }
  | { readonly kind: "i32" | "i64" | "f32" | "bool" }
  /** An i32 naming one of `values` (a C++ enum <Op><Field>, a TypeScript constant <OP>). */
  | { readonly kind: "enum"; readonly values: Readonly<Record<string, number>> }
  /** The length of the `dims` fields that follow it; written by the encoder from the first of them. */
  | { readonly kind: "rank"; readonly min: number }
  /** `rank` integers (a shape or strides in elements). */
  | { readonly kind: "dims" }
  /** Fields that several ops share, written inline and read into one struct `name`. */
  | { readonly kind: "group"; readonly name: string; readonly fields: Fields };

export type Fields = Readonly<Record<string, Field>>;

export interface OpDecl {
  readonly code: number;
  readonly fields: Fields;
}

const ptr = (c: string): Field => ({ kind: "ptr", c });
const i32: Field = { kind: "i32" };
const i64: Field = { kind: "i64" };
const f32: Field = { kind: "f32" };
const bool: Field = { kind: "bool" };
const dims: Field = { kind: "dims" };
const rank = (min: number): Field => ({ kind: "rank", min });
const kinds = (values: Record<string, number>): Field => ({ kind: "enum", values });

const OUT = ptr("float");
const IN = ptr("const float");
const IDS = ptr("const int32_t");

/** A quantized weight as every quantized entry point of rmlx.h takes it. */
const QUANT_WEIGHT: Field = {
  kind: "group",
  name: "QuantWeight",
  fields: {
    w: ptr("const uint32_t"),
    scales: ptr("const void"),
    biases: ptr("const void"),
    sbdt: i32,
    mode: i32,
    bits: i32,
    group: i32,
    gscale: f32,
  },
};

/**
 * One side (keys or values) of a paged KV pool, as the KV entry points take it. mode KV_FLOAT: `data` holds f32,
 * f16 or bf16 rows (dt); KV_AFFINE: MLX affine codes of `bits` (4 or 8) along head_dim, LSB first, with an f16
 * scale and bias per `group` values; KV_FP8: E4M3 bytes with an f16 scale per group; KV_TURBO: Lloyd-Max codes of
 * `bits` (4 or 3) of the row rotated by a fixed randomised Hadamard transform, with one f16 scale per row (group
 * unused; see ops_attention.cpp). Rows are [slot, kvHead].
 */
const KV_PAGE: Field = {
  kind: "group",
  name: "KvPage",
  fields: { data: ptr("void"), scales: ptr("void"), biases: ptr("void"), dt: i32, mode: i32, bits: i32, group: i32 },
};

/** What paged attention reads after the pools, whatever their format: the cache's shape and the step's batch. */
const PAGED_ATTENTION: Fields = {
  blockSize: i64,
  kvHeads: i64,
  headDim: i64,
  numBlocks: i64,
  tables: IDS,
  maxBlocks: i64,
  tokenSeq: IDS,
  positions: IDS,
  seqLens: IDS,
  numSeqs: i64,
  T: i64,
  heads: i64,
  scale: f32,
  window: i64,
  softcap: f32,
};

const AXIS_REDUCE: Fields = { out: OUT, x: IN, outer: i64, n: i64, inner: i64 };

export const OPS = {
  binary: {
    code: 1,
    fields: { kind: kinds({ add: 0, sub: 1, mul: 2 }), out: OUT, a: IN, b: IN, ndim: rank(1), shape: dims, sa: dims, sb: dims },
  },
  unary: {
    code: 2,
    fields: { kind: kinds({ scale: 0, sigmoid: 1, silu: 2, geluTanh: 3, softcap: 4, softplus: 5 }), out: OUT, x: IN, n: i64, param: f32 },
  },
  glu: { code: 3, fields: { kind: kinds({ swiglu: 0, geglu: 1 }), out: OUT, gate: IN, up: IN, n: i64 } },
  softmax: { code: 4, fields: AXIS_REDUCE },
  sum: { code: 5, fields: AXIS_REDUCE },
  argmax: { code: 6, fields: { out: ptr("int32_t"), x: IN, rows: i64, n: i64 } },
  /**
   * One token per row of x [rows, n] drawn by the host sampler's rule (rmlx_sample): params [rows, 6] are each
   * row's temperature, top_p, top_k, min_p, u and the byte offset of its mask in masks (a byte a token, 1 where
   * allowed), or -1 for none.
   */
  draw: { code: 26, fields: { out: ptr("int32_t"), x: IN, rows: i64, n: i64, params: ptr("const double"), masks: ptr("const uint8_t") } },
  topk: { code: 7, fields: { vals: OUT, idx: ptr("int32_t"), x: IN, rows: i64, n: i64, k: i64 } },
  rmsNorm: {
    code: 8,
    fields: { out: OUT, x: IN, w: ptr("const void"), wdt: i32, rows: i64, n: i64, eps: f32, onePlus: bool },
  },
  layerNorm: {
    code: 9,
    fields: { out: OUT, x: IN, w: ptr("const void"), wdt: i32, b: ptr("const void"), bdt: i32, rows: i64, n: i64, eps: f32 },
  },
  rope: { code: 10, fields: { out: OUT, x: IN, table: IN, T: i64, H: i64, D: i64, dims: i64, traditional: bool } },
  kvWrite: {
    code: 11,
    fields: { kpool: ptr("void"), vpool: ptr("void"), poolDt: i32, k: IN, v: IN, slots: IDS, T: i64, row: i64, numSlots: i64 },
  },
  pagedAttention: {
    code: 12,
    fields: {
      out: OUT,
      q: IN,
      kpool: ptr("const void"),
      vpool: ptr("const void"),
      poolDt: i32,
      ...PAGED_ATTENTION,
    },
  },
  sdpa: {
    code: 13,
    fields: { out: OUT, q: IN, k: IN, v: IN, B: i64, H: i64, Hkv: i64, L: i64, S: i64, D: i64, scale: f32, causal: bool },
  },
  matmul: {
    code: 14,
    fields: { out: OUT, a: IN, b: IN, M: i64, K: i64, N: i64, nbd: rank(0), bshape: dims, sa: dims, sb: dims },
  },
  copy: {
    code: 15,
    fields: { dst: ptr("void"), src: ptr("const void"), esize: i32, ndim: rank(1), shape: dims, ss: dims, ds: dims },
  },
  astype: { code: 16, fields: { dst: ptr("void"), src: ptr("const void"), n: i64, sdt: i32, ddt: i32 } },
  memcpy: { code: 17, fields: { dst: ptr("void"), src: ptr("const void"), nbytes: i64 } },
  ropeTable: {
    code: 18,
    fields: { table: OUT, pos: IDS, T: i64, half: i64, invFreq: IN, scale: f32, mscale: f32 },
  },
  linear: {
    code: 20,
    fields: { y: OUT, x: IN, M: i64, K: i64, N: i64, w: ptr("const void"), wdt: i32, bias: ptr("const void") },
  },
  qlinear: {
    code: 21,
    fields: { y: OUT, x: IN, M: i64, K: i64, N: i64, weight: QUANT_WEIGHT, bias: ptr("const void"), biasDt: i32 },
  },
  gatherQlinear: {
    code: 22,
    fields: { y: OUT, x: IN, P: i64, xdiv: i64, K: i64, N: i64, idx: IDS, E: i64, weight: QUANT_WEIGHT },
  },
  gatherLinear: {
    code: 23,
    fields: { y: OUT, x: IN, P: i64, xdiv: i64, K: i64, N: i64, idx: IDS, E: i64, w: ptr("const void"), wdt: i32 },
  },
  dequantRows: { code: 24, fields: { out: OUT, rows: IDS, nrows: i64, N: i64, K: i64, weight: QUANT_WEIGHT } },
  takeRows: { code: 25, fields: { out: OUT, rows: IDS, nrows: i64, N: i64, K: i64, w: ptr("const void"), wdt: i32 } },
  kvWritePage: {
    code: 40,
    fields: { kpage: KV_PAGE, vpage: KV_PAGE, k: IN, v: IN, slots: IDS, T: i64, kvHeads: i64, headDim: i64, numSlots: i64 },
  },
  pagedAttentionPage: {
    code: 41,
    fields: {
      out: OUT,
      q: IN,
      kpage: KV_PAGE,
      vpage: KV_PAGE,
      ...PAGED_ATTENTION,
    },
  },
  // Linear-attention layers (Gated DeltaNet): per-sequence state lives in slots of a state pool, read and updated
  // in place. seqStart [numSeqs + 1] delimits each sequence's tokens, slots [numSeqs] names its state slot, fresh
  // [numSeqs] (0/1) starts it from zeros.
  causalConv1d: {
    code: 70,
    fields: {
      out: OUT,
      x: IN,
      w: IN,
      state: ptr("float"),
      seqStart: IDS,
      slots: IDS,
      fresh: IDS,
      numSeqs: i64,
      C: i64,
      K: i64,
      numSlots: i64,
    },
  },
  gatedDelta: {
    code: 71,
    fields: {
      out: OUT,
      q: IN,
      k: IN,
      v: IN,
      g: IN,
      beta: IN,
      state: ptr("float"),
      seqStart: IDS,
      slots: IDS,
      fresh: IDS,
      numSeqs: i64,
      Hk: i64,
      Hv: i64,
      Dk: i64,
      Dv: i64,
      numSlots: i64,
      chunk: i64,
    },
  },
  stateCopy: { code: 72, fields: { state: ptr("float"), slotSize: i64, numSlots: i64, src: i64, dst: i64 } },
  // BitNet b1.58: a Linear of ternary weights (2-bit codes, four output rows to a byte) against x quantized to int8
  // per row, and its MLP's relu(gate)^2 * up.
  ternaryLinear: {
    code: 80,
    fields: { y: OUT, x: IN, M: i64, K: i64, N: i64, w: ptr("const uint8_t"), scale: f32, divide: bool },
  },
  relu2Mul: { code: 81, fields: { out: OUT, gate: IN, up: IN, n: i64 } },
  // Encoders (embedding models): the exact (erf) GELU of BERT, and attention over each sequence of a
  // padding-free batch by itself, q [T, heads, D] and k, v [T, kvHeads, D] with seqStart [numSeqs + 1]; causal or
  // bidirectional, optionally within a window (causal: keys in (i - window, i]; bidirectional: |i - j| < window).
  geluErf: { code: 90, fields: { out: OUT, x: IN, n: i64 } },
  varlenAttention: {
    code: 91,
    fields: {
      out: OUT,
      q: IN,
      k: IN,
      v: IN,
      seqStart: IDS,
      numSeqs: i64,
      T: i64,
      heads: i64,
      kvHeads: i64,
      D: i64,
      scale: f32,
      causal: bool,
      window: i64,
    },
  },
} as const satisfies Record<string, OpDecl>;
