// Gated DeltaNet (linear attention) as plain MLX ops: the depthwise causal conv1d over each sequence's carried
// inputs, and the gated delta rule over each sequence's f32 state. Sequences are laid out as padded batches (their
// lengths are known on the host; the delta rule keeps decode, short runs and long runs apart), so the op count of
// a step depends on its longest run, not on how many sequences it holds. Padded steps of the delta rule get g = 0
// and beta = 0: the state is neither decayed nor written there, and their outputs are dropped.
import type { RecurrentBatch, StateSpec } from "../backend.ts";
import { handles, ints, MLX_DTYPE, outSlot, slotPtr, spareHandle, type MlxSymbols } from "./lib.ts";

type Res = (status: number, what: string) => number;

/** Runs up to this long go step by step even where the chunked form is asked for. */
const STEPWISE_MAX = 4;


/**
 * The mlx-c calls of one op over raw handles: each result is a temp, given up by free() unless taken out by keep()
 * (MLX counts references, so a kept result holds the graph it needs).
 */
export class Graph {
  private readonly hs: number[] = [];

  constructor(
    private readonly S: MlxSymbols,
    private readonly stream: number,
    private readonly res: Res,
    private readonly what: string,
  ) {}

  private add(status: number): number {
    const h = this.res(status, this.what);
    this.hs.push(h);
    return h;
  }

  /** Takes a result out of the temps: the caller owns it from now on. */
  keep(h: number): number {
    const i = this.hs.lastIndexOf(h);
    if (i >= 0) this.hs.splice(i, 1);
    return h;
  }

  /** The temps go to the spare handles (see outSlot), for later results. */
  free(): void {
    for (const h of this.hs) if (h) spareHandle(h);
    this.hs.length = 0;
  }

  data(values: Float32Array | Int32Array | Uint8Array, shape: readonly number[], dtype: number): number {
    const h = Number(this.S.mlx_array_new_data(values.byteLength ? values : new Uint8Array(8), ints(shape), shape.length, dtype));
    // a null handle: report mlx-c's error
    if (!h) this.res(1, this.what);
    this.hs.push(h);
    return h;
  }

  scalar(v: number): number {
    const h = Number(this.S.mlx_array_new_float32(v));
    this.hs.push(h);
    return h;
  }

  zeros(shape: readonly number[]): number {
    return this.add(this.S.mlx_zeros(outSlot(), ints(shape), shape.length, MLX_DTYPE.f32, this.stream));
  }

  f32(h: number): number {
    return this.S.mlx_array_dtype(h) === MLX_DTYPE.f32 ? h : this.add(this.S.mlx_astype(outSlot(), h, MLX_DTYPE.f32, this.stream));
  }

  reshape(h: number, shape: readonly number[]): number {
    return this.add(this.S.mlx_reshape(outSlot(), h, ints(shape), shape.length, this.stream));
  }

  transpose(h: number, axes: readonly number[]): number {
    return this.add(this.S.mlx_transpose_axes(outSlot(), h, ints(axes), axes.length, this.stream));
  }

  /** Rows of h along axis 0 at host indices. */
  rows(h: number, idx: Int32Array): number {
    return this.add(this.S.mlx_take_axis(outSlot(), h, this.data(idx, [idx.length], MLX_DTYPE.i32), 0, this.stream));
  }

  /** h[lo:hi:step] along every axis (step 1 unless given). */
  slice(h: number, lo: readonly number[], hi: readonly number[], step?: readonly number[]): number {
    const n = lo.length;
    return this.add(this.S.mlx_slice(outSlot(), h, ints(lo), n, ints(hi), n, ints(step ?? lo.map(() => 1)), n, this.stream));
  }

  mul(a: number, b: number): number {
    return this.add(this.S.mlx_multiply(outSlot(), a, b, this.stream));
  }

  add2(a: number, b: number): number {
    return this.add(this.S.mlx_add(outSlot(), a, b, this.stream));
  }

  sub(a: number, b: number): number {
    return this.add(this.S.mlx_subtract(outSlot(), a, b, this.stream));
  }

  matmul(a: number, b: number): number {
    return this.add(this.S.mlx_matmul(outSlot(), a, b, this.stream));
  }

  exp(a: number): number {
    return this.add(this.S.mlx_exp(outSlot(), a, this.stream));
  }

  logaddexp(a: number, b: number): number {
    return this.add(this.S.mlx_logaddexp(outSlot(), a, b, this.stream));
  }

  where(cond: number, a: number, b: number): number {
    return this.add(this.S.mlx_where(outSlot(), cond, a, b, this.stream));
  }

  cumsum(a: number, axis: number): number {
    return this.add(this.S.mlx_cumsum(outSlot(), a, axis, false, true, this.stream));
  }

  /** An elementwise op of two operands by its mlx-c name (comparisons give bool). */
  bin(f: "mlx_minimum" | "mlx_less" | "mlx_less_equal" | "mlx_greater_equal" | "mlx_logical_and", a: number, b: number): number {
    return this.add(this.S[f](outSlot(), a, b, this.stream));
  }

  astype(a: number, dtype: number): number {
    return this.add(this.S.mlx_astype(outSlot(), a, dtype, this.stream));
  }

  argsort(a: number, axis: number): number {
    return this.add(this.S.mlx_argsort_axis(outSlot(), a, axis, this.stream));
  }

  argmax(a: number, axis: number): number {
    return this.add(this.S.mlx_argmax_axis(outSlot(), a, axis, false, this.stream));
  }

  takeAlong(a: number, idx: number, axis: number): number {
    return this.add(this.S.mlx_take_along_axis(outSlot(), a, idx, axis, this.stream));
  }

  /** The largest value along axis, kept as a length-1 axis. */
  maxKeep(a: number, axis: number): number {
    return this.add(this.S.mlx_max_axis(outSlot(), a, axis, true, this.stream));
  }

  /** The sum along axis, kept as a length-1 axis. */
  sumKeep(a: number, axis: number): number {
    return this.add(this.S.mlx_sum_axis(outSlot(), a, axis, true, this.stream));
  }

  sum(a: number, axis: number): number {
    return this.add(this.S.mlx_sum_axis(outSlot(), a, axis, false, this.stream));
  }

  /** A view of a's elements (row-major, a copied first if it is not) at the given element strides and offset. */
  asStrided(a: number, shape: readonly number[], strides: readonly number[], offset = 0): number {
    return this.add(this.S.mlx_as_strided(outSlot(), a, ints(shape), shape.length, BigInt64Array.from(strides.map(BigInt)), strides.length, offset, this.stream));
  }

  concat(hs: readonly number[], axis: number): number {
    if (hs.length === 1) return hs[0]!;
    const vec = Number(this.S.mlx_vector_array_new_data(handles(hs), hs.length));
    try {
      return this.add(this.S.mlx_concatenate_axis(outSlot(), vec, axis, this.stream));
    } finally {
      this.S.mlx_vector_array_free(vec);
    }
  }

  /** h cut into n equal parts along axis (h itself when n is 1). */
  split(h: number, n: number, axis: number): number[] {
    if (n === 1) return [h];
    const vec = this.res(this.S.mlx_split(slotPtr(), h, n, axis, this.stream), this.what);
    try {
      const parts: number[] = [];
      for (let i = 0; i < n; i++) parts.push(this.add(this.S.mlx_vector_array_get(outSlot(), vec, i)));
      return parts;
    } finally {
      this.S.mlx_vector_array_free(vec);
    }
  }

  /**
   * a [slots, ...row] with the rows at host indices replaced by updates [n, 1, ...row]: one slice_update per run
   * of consecutive slots (MLX's CPU scatter addresses each element on its own, several times slower than a copy).
   */
  writeRows(a: number, rowShape: readonly number[], slots: Int32Array, updates: number): number {
    const n = slots.length;
    const rows = this.reshape(updates, [n, ...rowShape]);
    const rest = rowShape.map(() => 0);
    for (let b0 = 0; b0 < n; ) {
      let b1 = b0 + 1;
      while (b1 < n && slots[b1] === slots[b1 - 1]! + 1) b1++;
      const part = b0 === 0 && b1 === n ? rows : this.slice(rows, [b0, ...rest], [b1, ...rowShape]);
      const lo = [slots[b0]!, ...rest];
      const hi = [slots[b0]! + b1 - b0, ...rowShape];
      a = this.add(this.S.mlx_slice_update(outSlot(), a, part, ints(lo), lo.length, ints(hi), hi.length, ints(lo.map(() => 1)), lo.length, this.stream));
      b0 = b1;
    }
    return a;
  }
}

/** Host-side layout of a padded batch: gather indices, padding mask, the rows of its real tokens, and its slots. */
interface Layout {
  B: number;
  L: number;
  /** Source token of each padded row [B * L] (0 for padding). */
  idx: Int32Array;
  /** 1 for real rows, 0 for padding [B * L]. */
  valid: Float32Array;
  /** Whether the padded batch is the step's tokens as they are (no gather, no padding). */
  identity: boolean;
  /** Padded row of each real token, in the group's token order. */
  outRows: Int32Array;
  /** Step token index of each real token, in the group's token order. */
  tokens: Int32Array;
  slots: Int32Array;
  /** Whether the sequence starts from a zero state [B], and whether any does. */
  fresh: Uint8Array;
  anyFresh: boolean;
  lens: Int32Array;
}

/** The padded batch of the given sequences, each padded to L tokens. */
function layout(batch: RecurrentBatch, seqs: readonly number[], L: number, T: number): Layout {
  const B = seqs.length;
  const idx = new Int32Array(B * L);
  const valid = new Float32Array(B * L);
  const lens = new Int32Array(B);
  const slots = new Int32Array(B);
  const fresh = new Uint8Array(B);
  let n = 0;
  for (let b = 0; b < B; b++) {
    const s = seqs[b]!;
    lens[b] = batch.seqStart[s + 1]! - batch.seqStart[s]!;
    slots[b] = batch.slots[s]!;
    fresh[b] = batch.fresh[s] ? 1 : 0;
    n += lens[b]!;
  }
  const outRows = new Int32Array(n);
  const tokens = new Int32Array(n);
  let identity = B * L === T;
  let at = 0;
  for (let b = 0; b < B; b++) {
    const t0 = batch.seqStart[seqs[b]!]!;
    for (let t = 0; t < L; t++) {
      const r = b * L + t;
      if (t < lens[b]!) {
        idx[r] = t0 + t;
        valid[r] = 1;
        outRows[at] = r;
        tokens[at++] = t0 + t;
        if (t0 + t !== r) identity = false;
      } else identity = false;
    }
  }
  return { B, L, idx, valid, identity, outRows, tokens, slots, fresh, anyFresh: fresh.some((f) => f === 1), lens };
}

/** The sequences a step must touch: those with tokens, and fresh ones (their state is zeroed even without). */
function activeSeqs(batch: RecurrentBatch): number[] {
  const out: number[] = [];
  for (let s = 0; s < batch.slots.length; s++) if (batch.seqStart[s + 1]! > batch.seqStart[s]! || batch.fresh[s]) out.push(s);
  return out;
}

function maxLen(batch: RecurrentBatch, seqs: number[]): number {
  let L = 0;
  for (const s of seqs) L = Math.max(L, batch.seqStart[s + 1]! - batch.seqStart[s]!);
  return L;
}

/** A handle of rows [n, 1, ...row] some slots hold, freed when the last of them lets go. */
interface Held {
  h: number;
  n: number;
  refs: number;
}

/** Rows [n, 1, ...row] an op wrote for the slots it names. */
export interface Written {
  slots: Int32Array;
  h: number;
}

/**
 * The rows each slot of one pool tensor was last given, as the lazy arrays that computed them. Ops read a slot
 * from here rather than from the pool: MLX updates an array in place only when nothing else holds its buffer,
 * and a gather from the pool in the same evaluation holds it until its task has run, so reading the pool while
 * writing into it would copy the whole pool at every step. The pool itself is written by every op too, so a
 * slot missing here is read from it.
 */
export class LastRows {
  private bySlot = new Map<number, { held: Held; row: number }>();

  constructor(private readonly S: MlxSymbols) {}

  get(slot: number): { held: Held; row: number } | undefined {
    return this.bySlot.get(slot);
  }

  /** The slots an op wrote, each set of rows taken out of G's temps; slots it did not write go back to the pool. */
  replace(G: Graph, written: readonly Written[]): void {
    const next = new Map<number, { held: Held; row: number }>();
    for (const w of written) {
      const held: Held = { h: G.keep(w.h), n: w.slots.length, refs: w.slots.length };
      w.slots.forEach((s, row) => next.set(s, { held, row }));
    }
    const old = this.bySlot;
    this.bySlot = next;
    for (const e of old.values()) this.unref(e.held);
  }

  /** One slot given new rows [1, 1, ...row] (a copy or a restore); the others keep theirs. */
  set(G: Graph, slot: number, h: number): void {
    const old = this.bySlot.get(slot);
    this.bySlot.set(slot, { held: { h: G.keep(h), n: 1, refs: 1 }, row: 0 });
    if (old) this.unref(old.held);
  }

  clear(): void {
    for (const e of this.bySlot.values()) this.unref(e.held);
    this.bySlot.clear();
  }

  private unref(held: Held): void {
    if (--held.refs === 0) this.S.mlx_array_free(held.h);
  }
}

/** An op's result, its pool's updated array, and the rows it wrote (for LastRows). */
export interface StateOp {
  out: number;
  pool: number;
  written: Written[];
}

/** One pool tensor [numSlots, ...row] as the ops see it: its current array and the rows its slots last got. */
export interface PoolRows {
  pool: number;
  readonly rowShape: readonly number[];
  readonly last: LastRows;
}

interface DeltaInputs {
  q: number;
  k: number;
  v: number;
  g: number;
  beta: number;
}

export class LinearAttention {
  /** Host-made constants per chunk size: identity and strict-lower mask. */
  private readonly chunkConsts = new Map<number, { eye: number; strict: number }>();
  private readonly zero: number;
  private readonly negInf: number;
  private readonly minusOne: number;
  /** [[1, 0], [0, 1]] and [[0, 0], [1, 0]]: the first diagonal blocks of the inverse are eye2 + a lower2. */
  private readonly eye2: number;
  private readonly lower2: number;

  constructor(
    private readonly S: MlxSymbols,
    private readonly stream: number,
    private readonly res: Res,
    /** Evaluates an array at once (rows read from a pool, so that no read of it is in flight when it is written). */
    private readonly evalNow: (h: number) => void,
  ) {
    this.zero = Number(S.mlx_array_new_float32(0));
    this.negInf = Number(S.mlx_array_new_float32(-Infinity));
    this.minusOne = Number(S.mlx_array_new_float32(-1));
    this.eye2 = Number(S.mlx_array_new_data(Float32Array.of(1, 0, 0, 1), Int32Array.of(2, 2), 2, MLX_DTYPE.f32));
    this.lower2 = Number(S.mlx_array_new_data(Float32Array.of(0, 0, 1, 0), Int32Array.of(2, 2), 2, MLX_DTYPE.f32));
  }

  graph(what: string): Graph {
    return new Graph(this.S, this.stream, this.res, what);
  }

  /** log(1 + exp(x)) without overflow: logaddexp(x, 0). */
  softplus(G: Graph, x: number): number {
    return G.logaddexp(G.f32(x), this.zero);
  }

  /**
   * The current rows [B, ...row] of the given slots, zeros where fresh: the rows an op last wrote for them (as they
   * are when one op wrote all of them in this order, the decode steady state), else gathered from the pool.
   */
  current(G: Graph, pr: PoolRows, slots: Int32Array, fresh: Uint8Array | null): number {
    const B = slots.length;
    const row = pr.rowShape;
    const isFresh = (b: number) => fresh !== null && fresh[b] === 1;
    const anyFresh = fresh !== null && fresh.some((f) => f === 1);
    const first = pr.last.get(slots[0]!);
    if (!anyFresh && first && first.held.n === B && Array.from(slots).every((s, b) => pr.last.get(s)?.held === first.held && pr.last.get(s)?.row === b))
      return G.reshape(first.held.h, [B, ...row]);
    const sources = new Map<number, { idx: number[]; at: number[]; pool: boolean }>();
    for (let b = 0; b < B; b++) {
      if (isFresh(b)) continue;
      const e = pr.last.get(slots[b]!);
      const h = e ? e.held.h : pr.pool;
      let src = sources.get(h);
      if (!src) sources.set(h, (src = { idx: [], at: [], pool: !e }));
      src.idx.push(e ? e.row : slots[b]!);
      src.at.push(b);
    }
    if (sources.size === 0) return G.zeros([B, ...row]);
    const parts: number[] = [];
    const pos = new Int32Array(B);
    let m = 0;
    for (const [h, src] of sources) {
      const part = G.reshape(G.rows(h, Int32Array.from(src.idx)), [src.idx.length, ...row]);
      if (src.pool) this.evalNow(part);
      parts.push(part);
      src.at.forEach((b, j) => (pos[b] = m + j));
      m += src.idx.length;
    }
    let x = G.concat(parts, 0);
    if (anyFresh || pos.some((p, b) => p !== b)) x = G.rows(x, pos);
    if (!anyFresh) return x;
    const keep = G.data(Uint8Array.from(fresh!, (f) => 1 - f), [B, ...row.map(() => 1)], MLX_DTYPE.bool);
    return G.where(keep, x, this.zero);
  }

  /**
   * The slots' carried inputs (zeroed where fresh) followed by each sequence's tokens, as one padded window
   * [B, P + L, C]; the conv reads it through a strided view [B, L, K, C]. Padding sits after each sequence's
   * tokens, so it reaches neither a real output nor the K - 1 inputs the slot keeps.
   */
  causalConv1d(G: Graph, x: number, w: number, conv: PoolRows, spec: StateSpec, batch: RecurrentBatch, T: number): StateOp {
    const { convDim: C, kernel: K } = spec;
    const P = K - 1;
    const seqs = activeSeqs(batch);
    const L = maxLen(batch, seqs);
    if (seqs.length === 0 || (L === 0 && P === 0)) return { out: G.zeros([T, C]), pool: conv.pool, written: [] };
    const lay = layout(batch, seqs, L, T);
    const { B } = lay;
    const xf = G.f32(x);
    let window = G.reshape(lay.identity ? xf : G.rows(xf, lay.idx), [B, L, C]);
    if (P > 0) window = G.concat([this.current(G, conv, lay.slots, lay.anyFresh ? lay.fresh : null), window], 1);
    let out: number;
    if (L === 0) out = G.zeros([T, C]);
    else {
      const taps = G.transpose(G.reshape(G.f32(w), [C, K]), [1, 0]);
      const y = L === 1 ? G.sum(G.mul(window, taps), 1) : G.sum(G.mul(G.asStrided(window, [B, L, K, C], [(P + L) * C, C, C, 1]), taps), 2);
      const flat = G.reshape(y, [B * L, C]);
      out = lay.identity ? flat : G.rows(flat, lay.outRows);
    }
    if (P === 0) return { out, pool: conv.pool, written: [] };
    // Each slot keeps the inputs at window rows [n, n + P) of its sequence (n its token count).
    let tail: number;
    if (lay.lens.every((n) => n === L)) tail = G.slice(window, [0, L, 0], [B, L + P, C]);
    else {
      const idx = new Int32Array(B * P);
      for (let b = 0; b < B; b++) for (let p = 0; p < P; p++) idx[b * P + p] = b * (P + L) + lay.lens[b]! + p;
      tail = G.rows(G.reshape(window, [B * (P + L), C]), idx);
    }
    const rows = G.reshape(tail, [B, 1, P, C]);
    return { out, pool: G.writeRows(conv.pool, conv.rowShape, lay.slots, rows), written: [{ slots: lay.slots, h: rows }] };
  }

  /**
   * The gated delta rule over the slots' states [numSlots, Hv, Dv, Dk]. Sequences of one token (decode) run one
   * recurrent step together; short runs go step by step as a second padded batch, and longer ones as a third, in
   * the chunked form when chunk > 0 (step by step when it is 0). Returns the outputs [T, Hv, Dv] in token order and
   * the updated state.
   */
  gatedDelta(G: Graph, q: number, k: number, v: number, g: number, beta: number, delta: PoolRows, spec: StateSpec, batch: RecurrentBatch, T: number, chunk: number): StateOp {
    const { valueHeads: Hv, valueDim: Dv } = spec;
    const seqs = activeSeqs(batch);
    const len = (s: number) => batch.seqStart[s + 1]! - batch.seqStart[s]!;
    // Padding a sequence costs a pass over its state per padded token: decode, short and long runs apart.
    const groups = [seqs.filter((s) => len(s) <= 1), seqs.filter((s) => len(s) > 1 && len(s) <= STEPWISE_MAX), seqs.filter((s) => len(s) > STEPWISE_MAX)];
    const x: DeltaInputs = { q: G.f32(q), k: G.f32(k), v: G.f32(v), g: G.f32(g), beta: G.f32(beta) };
    // Every group's state is read before any is written back.
    const plans = groups
      .filter((grp) => grp.length > 0)
      .map((grp) => {
        const L = maxLen(batch, grp);
        // Chunks of a power of two (for unitLowerInverse) up to chunk, and no longer than the run needs: the same
        // result up to rounding.
        // Runs of a few tokens (speculative verification) take fewer ops step by step: 7 per token against about 50.
        const C = chunk > 0 && L > STEPWISE_MAX ? Math.min(2 ** Math.floor(Math.log2(chunk)), 2 ** Math.ceil(Math.log2(L))) : 0;
        const lay = layout(batch, grp, C ? Math.ceil(L / C) * C : L, T);
        return { L, C, lay, S0: this.current(G, delta, lay.slots, lay.anyFresh ? lay.fresh : null) };
      });
    const outs: number[] = [];
    const order: Int32Array[] = [];
    const written: Written[] = [];
    let pool = delta.pool;
    for (const { L, C, lay, S0 } of plans) {
      let state: number;
      if (L === 0) state = G.reshape(S0, [lay.B, 1, Hv, Dv, spec.keyDim]);
      else {
        const r = C ? this.chunked(G, x, S0, lay, spec, C) : this.recurrent(G, x, S0, lay, spec);
        state = r.state;
        outs.push(lay.identity ? r.rows : G.rows(r.rows, lay.outRows));
        order.push(lay.tokens);
      }
      pool = G.writeRows(pool, delta.rowShape, lay.slots, state);
      written.push({ slots: lay.slots, h: state });
    }
    if (outs.length === 0) return { out: G.zeros([T, Hv, Dv]), pool, written };
    if (outs.length === 1 && order[0]!.every((t, i) => t === i)) return { out: outs[0]!, pool, written };
    // Each token's row in the groups' outputs, concatenated.
    const at = new Int32Array(T);
    let n = 0;
    for (const toks of order) for (const t of toks) at[t] = n++;
    return { out: G.rows(G.concat(outs, 0), at), pool, written };
  }

  /** A padded input [B * L, ...]: the step's rows as they are, or gathered (padding reads row 0). */
  private gather(G: Graph, h: number, lay: Layout): number {
    return lay.identity ? h : G.rows(h, lay.idx);
  }

  /** g or beta gathered with 0 on padding: padded steps neither decay nor write the state. */
  private gatherMasked(G: Graph, h: number, lay: Layout): number {
    if (lay.identity) return h;
    return G.mul(G.rows(h, lay.idx), G.data(lay.valid, [lay.B * lay.L, 1], MLX_DTYPE.f32));
  }

  /**
   * Token by token over the padded batch, S [B, 1, Hk, rep, Dv, Dk]: S = exp(g) S; u = beta (v - S k);
   * S += u k^T; o = S q. Returns the padded outputs [B * L, Hv, Dv] and the state [B, 1, Hv, Dv, Dk].
   */
  private recurrent(G: Graph, x: DeltaInputs, S0: number, lay: Layout, spec: StateSpec): { rows: number; state: number } {
    const { keyHeads: Hk, valueHeads: Hv, keyDim: Dk, valueDim: Dv } = spec;
    const rep = Hv / Hk;
    const { B, L } = lay;
    const k = this.gather(G, x.k, lay);
    const qs = G.split(G.reshape(this.gather(G, x.q, lay), [B, L, Hk, 1, Dk, 1]), L, 1);
    const kCol = G.split(G.reshape(k, [B, L, Hk, 1, Dk, 1]), L, 1);
    const kRow = G.split(G.reshape(k, [B, L, Hk, 1, 1, Dk]), L, 1);
    const vs = G.split(G.reshape(this.gather(G, x.v, lay), [B, L, Hk, rep, Dv, 1]), L, 1);
    const decays = G.split(G.exp(G.reshape(this.gatherMasked(G, x.g, lay), [B, L, Hk, rep, 1, 1])), L, 1);
    const betas = G.split(G.reshape(this.gatherMasked(G, x.beta, lay), [B, L, Hk, rep, 1, 1]), L, 1);
    let S = G.reshape(S0, [B, 1, Hk, rep, Dv, Dk]);
    const outs: number[] = [];
    for (let t = 0; t < L; t++) {
      S = G.mul(S, decays[t]!);
      const u = G.mul(G.sub(vs[t]!, G.matmul(S, kCol[t]!)), betas[t]!);
      S = G.add2(S, G.mul(u, kRow[t]!));
      outs.push(G.matmul(S, qs[t]!));
    }
    return { rows: G.reshape(G.concat(outs, 1), [B * L, Hv, Dv]), state: G.reshape(S, [B, 1, Hv, Dv, Dk]) };
  }

  private consts(C: number) {
    let c = this.chunkConsts.get(C);
    if (!c) {
      const mk = (f: (i: number, j: number) => boolean, dtype: number) => {
        const a = dtype === MLX_DTYPE.bool ? new Uint8Array(C * C) : new Float32Array(C * C);
        for (let i = 0; i < C; i++) for (let j = 0; j < C; j++) a[i * C + j] = f(i, j) ? 1 : 0;
        return Number(this.S.mlx_array_new_data(a, Int32Array.of(C, C), 2, dtype));
      };
      c = { eye: mk((i, j) => i === j, MLX_DTYPE.f32), strict: mk((i, j) => i > j, MLX_DTYPE.bool) };
      this.chunkConsts.set(C, c);
    }
    return c;
  }

  /**
   * (I + A)^-1 for M strictly lower A [.., C, C] (C a power of two, at least 2) as [M, 1, C, C], by doubling the diagonal
   * blocks of the inverse: where Y_a and Y_b invert two neighbouring diagonal blocks of size s and O is the block
   * below the first, the block of 2s they form inverts to [[Y_a, 0], [-Y_b O Y_a, Y_b]]. That is block forward
   * substitution (stable where a power series of A would cancel huge terms, as on similar keys), and only the
   * blocks are multiplied: about C^3 / 3 per matrix in all.
   */
  private unitLowerInverse(G: Graph, A: number, M: number, C: number): number {
    // -A row-major, so that the blocks below the diagonal are strided views of it
    const neg = G.mul(A, this.minusOne);
    const first = G.asStrided(neg, [M, C / 2, 1, 1], [C * C, 2 * C + 2, 1, 1], C);
    let Y = G.add2(this.eye2, G.mul(first, this.lower2));
    for (let s = 2; s < C; s *= 2) {
      const nb = C / s;
      const Ya = G.slice(Y, [0, 0, 0, 0], [M, nb, s, s], [1, 2, 1, 1]);
      const Yb = G.slice(Y, [0, 1, 0, 0], [M, nb, s, s], [1, 2, 1, 1]);
      const O = G.asStrided(neg, [M, nb / 2, s, s], [C * C, 2 * s * C + 2 * s, C, 1], s * C);
      const low = G.matmul(G.matmul(Yb, O), Ya);
      const top = G.concat([Ya, G.zeros([M, nb / 2, s, s])], 3);
      Y = G.concat([top, G.concat([low, Yb], 3)], 2);
    }
    return Y;
  }

  /**
   * The chunked form over chunks of C tokens, all chunks of all sequences at once except the state's pass
   * from chunk to chunk. With G the within-chunk cumulative log-decay and D_ij = exp(G_i - G_j) for j <= i, a
   * chunk's writes solve (I + A) u = beta (v - exp(G) S k), A the strictly lower beta_i (k_i . k_j) D_ij, so
   * u = U - W S with U = T (beta v), W = T (beta exp(G) k), T = (I + A)^-1; the outputs are o = exp(G) S q +
   * (Q K^T * D) u, and the state moves once per chunk: S <- exp(G_C) S + sum_j exp(G_C - G_j) k_j u_j^T. S is
   * [Dk, Dv] per head here (the pool holds its transpose).
   *
   * T comes from unitLowerInverse (C is a power of two).
   */
  private chunked(G: Graph, x: DeltaInputs, S0: number, lay: Layout, spec: StateSpec, C: number): { rows: number; state: number } {
    const { keyHeads: Hk, valueHeads: Hv, keyDim: Dk, valueDim: Dv } = spec;
    const rep = Hv / Hk;
    const { B } = lay;
    const N = lay.L / C;
    // [B, N, C, Hk, rep, d] -> [B, Hk, rep, N, C, d]; and the swap of the last two axes
    const heads = [0, 3, 4, 1, 2, 5];
    const tr = [0, 1, 2, 3, 5, 4];
    const Q = G.transpose(G.reshape(this.gather(G, x.q, lay), [B, N, C, Hk, 1, Dk]), heads);
    const K = G.transpose(G.reshape(this.gather(G, x.k, lay), [B, N, C, Hk, 1, Dk]), heads);
    const V = G.transpose(G.reshape(this.gather(G, x.v, lay), [B, N, C, Hk, rep, Dv]), heads);
    const gc = G.transpose(G.reshape(this.gatherMasked(G, x.g, lay), [B, N, C, Hk, rep, 1]), heads);
    const bc = G.transpose(G.reshape(this.gatherMasked(G, x.beta, lay), [B, N, C, Hk, rep, 1]), heads);
    const { eye, strict } = this.consts(C);

    const Gc = G.cumsum(gc, 4);
    // exp(G_i - G_j) below the diagonal only: above it the exponent is positive and would overflow
    const Dst = G.exp(G.where(strict, G.sub(Gc, G.transpose(Gc, tr)), this.negInf));
    const KT = G.transpose(K, tr);
    const A = G.mul(G.mul(G.matmul(K, KT), Dst), bc);
    const Y = G.reshape(this.unitLowerInverse(G, A, B * Hv * N, C), [B, Hk, rep, N, C, C]);
    const eG = G.exp(Gc);
    const U = G.matmul(Y, G.mul(V, bc));
    const W = G.matmul(Y, G.mul(G.mul(K, bc), eG));
    const intra = G.mul(G.matmul(Q, KT), G.add2(Dst, eye));
    const Gl = G.slice(Gc, [0, 0, 0, 0, C - 1, 0], [B, Hk, rep, N, C, 1]);
    const KdT = G.transpose(G.mul(K, G.exp(G.sub(Gl, Gc))), tr);

    const Ws = G.split(W, N, 3);
    const Us = G.split(U, N, 3);
    const Qs = G.split(G.mul(Q, eG), N, 3);
    const Is = G.split(intra, N, 3);
    const Ks = G.split(KdT, N, 3);
    const Es = G.split(G.exp(Gl), N, 3);
    let S = G.transpose(G.reshape(S0, [B, Hk, rep, 1, Dv, Dk]), tr);
    const outs: number[] = [];
    for (let n = 0; n < N; n++) {
      const Vn = G.sub(Us[n]!, G.matmul(Ws[n]!, S));
      outs.push(G.add2(G.matmul(Qs[n]!, S), G.matmul(Is[n]!, Vn)));
      S = G.add2(G.mul(S, Es[n]!), G.matmul(Ks[n]!, Vn));
    }
    const rows = G.reshape(G.transpose(G.concat(outs, 3), heads), [B * lay.L, Hv, Dv]);
    return { rows, state: G.reshape(G.transpose(S, tr), [B, 1, Hv, Dv, Dk]) };
  }
}
