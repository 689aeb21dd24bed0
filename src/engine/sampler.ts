// Token sampling in mlx-lm's order: logit bias, repetition penalty (multiplicative, sign-aware), presence and
// frequency penalties (additive), over the last `repetitionContext` tokens; then the filters top_p, min_p,
// top_k on the distribution at temperature 1; then a draw at the temperature (0 = argmax).
// The work over the whole vocabulary runs in the native library (rmlx_sample) wherever it loads; the same steps
// in TypeScript below serve where it does not (the mlx backend on macOS) and are the reference its tests compare to.
import { ptr } from "bun:ffi";
import type { RowDraw } from "../backend/backend.ts";
import { native } from "../backend/native/lib.ts";
import { RmlxError } from "../errors.ts";
import type { SamplingParams } from "./types.ts";

type NativeLib = ReturnType<typeof native>;
let nativeLib: NativeLib | null | undefined;

/** The native library when it loads on this machine, else null (asked once). */
function nativeSampler(): NativeLib | null {
  if (nativeLib === undefined) {
    try {
      nativeLib = native();
    } catch {
      nativeLib = null;
    }
  }
  return nativeLib;
}

export const ALL_MASKED = "every token is masked (all logits are -inf)";

/** Deterministic PRNG (xoshiro128**), seeded through splitmix32 so that nearby seeds diverge. */
export class Rng {
  private s = new Uint32Array(4);

  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  /** Uniform in [0, 1). */
  next(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = (s[1]! << 9) >>> 0;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return r / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export interface SampledToken {
  token: number;
  /**
   * Log-probability of the token under the processed logits (after bias and penalties, before filters);
   * NaN unless the params ask for logprobs or top alternatives.
   */
  logprob: number;
  /** The most likely alternatives under the same distribution, best first (when topLogprobs > 0). */
  top: { token: number; logprob: number }[];
}

function validateSampling(p: SamplingParams): void {
  const bad = (msg: string): never => {
    throw new RmlxError("invalid_argument", msg);
  };
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature)) bad(`temperature must be >= 0 (got ${p.temperature})`);
  if (!(p.topP > 0 && p.topP <= 1)) bad(`top_p must be in (0, 1] (got ${p.topP})`);
  if (!Number.isInteger(p.topK) || p.topK < 0) bad(`top_k must be a non-negative integer (got ${p.topK})`);
  if (!(p.minP >= 0 && p.minP <= 1)) bad(`min_p must be in [0, 1] (got ${p.minP})`);
  if (!(p.repetitionPenalty > 0) || !Number.isFinite(p.repetitionPenalty)) {
    bad(`repetition_penalty must be > 0 (got ${p.repetitionPenalty})`);
  }
  if (!Number.isInteger(p.repetitionContext) || p.repetitionContext < 0) {
    bad(`repetition context must be a non-negative integer (got ${p.repetitionContext})`);
  }
  if (!Number.isFinite(p.presencePenalty)) bad("presence_penalty must be a number");
  if (!Number.isFinite(p.frequencyPenalty)) bad("frequency_penalty must be a number");
}

export class Sampler {
  private readonly rng: Rng;
  private logits = new Float32Array(0);
  private probs = new Float32Array(0);
  private keep = new Uint8Array(0);
  private readonly nativeArgs = new Float64Array(7);
  private readonly nativeOut = new Float64Array(3);
  private nativeTop = new Int32Array(0);
  private readonly biasIds: Int32Array;
  private readonly biasValues: Float32Array;

  /** jsOnly: the TypeScript steps even where the native library loads (tests compare the two). */
  constructor(
    readonly params: SamplingParams,
    private readonly jsOnly = false,
  ) {
    validateSampling(params);
    this.rng = new Rng(params.seed ?? (Math.random() * 4294967296) >>> 0);
    const entries = Object.entries(params.logitBias ?? {});
    this.biasIds = new Int32Array(entries.map(([k]) => Number(k)));
    this.biasValues = new Float32Array(entries.map(([, v]) => v));
  }

  /**
   * Whether this sampler's pick needs nothing but the filters and the temperature (no bias, penalties or
   * logprobs), so that it can be made where the logits are (Backend.drawRows).
   */
  get drawable(): boolean {
    const p = this.params;
    const penalties = p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
    return this.biasIds.length === 0 && !penalties && !p.logprobs && !(p.topLogprobs ?? 0);
  }

  /** The next pick as a RowDraw, taking its uniform draw from this sampler's generator as sample() would. */
  rowDraw(): RowDraw {
    const p = this.params;
    return { temperature: p.temperature, topP: p.topP, topK: p.topK, minP: p.minP, u: p.temperature > 0 ? this.rng.next() : 0 };
  }

  /**
   * Picks the next token from one row of logits. history: the tokens so far (prompt and generated); only the
   * last repetitionContext are used by the penalties. The row is not modified.
   */
  sample(row: Float32Array, history: ArrayLike<number> = []): SampledToken {
    const V = row.length;
    if (this.probs.length !== V) {
      this.logits = new Float32Array(V);
      this.probs = new Float32Array(V);
      this.keep = new Uint8Array(V);
    }
    let x = row;
    if (this.hasProcessors(history)) {
      x = this.logits;
      x.set(row);
      this.applyProcessors(x, history);
    }
    const lib = this.jsOnly ? null : nativeSampler();
    return lib ? this.sampleNative(lib, x) : this.sampleJs(x);
  }

  private sampleNative(lib: NativeLib, x: Float32Array): SampledToken {
    const p = this.params;
    const nTop = Math.min(p.topLogprobs ?? 0, x.length);
    if (this.nativeTop.length < nTop) this.nativeTop = new Int32Array(nTop);
    const a = this.nativeArgs;
    a[0] = p.temperature;
    a[1] = p.topP;
    a[2] = p.topK;
    a[3] = p.minP;
    a[4] = p.temperature > 0 ? this.rng.next() : 0;
    a[5] = nTop;
    a[6] = p.logprobs === true ? 1 : 0;
    const out = this.nativeOut;
    const status = lib.rmlx_sample(ptr(x), x.length, ptr(a), ptr(this.probs), ptr(this.keep), nTop > 0 ? ptr(this.nativeTop) : null, ptr(out));
    if (status !== 0) throw new RmlxError("invalid_argument", ALL_MASKED);
    const logZ = out[2]!;
    const top: { token: number; logprob: number }[] = [];
    for (let i = 0; i < nTop; i++) top.push({ token: this.nativeTop[i]!, logprob: x[this.nativeTop[i]!]! - logZ });
    return { token: out[0]!, logprob: out[1]!, top };
  }

  private sampleJs(x: Float32Array): SampledToken {
    const p = this.params;
    const V = x.length;
    let max = -Infinity;
    let argmax = 0;
    for (let i = 0; i < V; i++) {
      if (x[i]! > max) {
        max = x[i]!;
        argmax = i;
      }
    }
    if (max === -Infinity) throw new RmlxError("invalid_argument", ALL_MASKED);
    const nTop = p.topLogprobs ?? 0;
    const wantLogprobs = p.logprobs === true || nTop > 0;
    const filters = p.topP < 1 || p.minP > 0 || p.topK > 0;
    if (!wantLogprobs && (p.temperature === 0 || !filters)) {
      // Nothing needs the distribution at temperature 1: skip a pass of exponentials over the vocabulary.
      const token = p.temperature > 0 ? this.drawAll(x, max) : argmax;
      return { token, logprob: NaN, top: [] };
    }
    // Unnormalised probabilities exp(x - max): the most likely token has 1, the total is the partition sum.
    const probs = this.probs;
    let sum = 0;
    for (let i = 0; i < V; i++) sum += probs[i] = Math.exp(x[i]! - max);
    const logZ = max + Math.log(sum);
    const token = p.temperature > 0 ? this.draw(x, probs, sum) : argmax;
    return { token, logprob: x[token]! - logZ, top: nTop > 0 ? topN(x, nTop, logZ) : [] };
  }

  /**
   * The distribution sample() draws from at a temperature above 0 (bias, penalties, filters, temperature),
   * normalised into out (length of row). What speculative decoding compares a draft's proposal against.
   */
  distribution(row: Float32Array, history: ArrayLike<number>, out: Float32Array): void {
    const p = this.params;
    if (!(p.temperature > 0)) throw new RmlxError("internal", "a greedy sampler has no distribution to draw from");
    const V = row.length;
    if (this.probs.length !== V) {
      this.logits = new Float32Array(V);
      this.probs = new Float32Array(V);
      this.keep = new Uint8Array(V);
    }
    const x = this.logits;
    x.set(row);
    this.applyProcessors(x, history);
    let max = -Infinity;
    for (let i = 0; i < V; i++) if (x[i]! > max) max = x[i]!;
    if (max === -Infinity) throw new RmlxError("invalid_argument", ALL_MASKED);
    let total: number;
    if (p.topP < 1 || p.minP > 0 || p.topK > 0) {
      let sum = 0;
      for (let i = 0; i < V; i++) sum += this.probs[i] = Math.exp(x[i]! - max);
      total = this.filteredWeights(x, this.probs, sum);
    } else {
      total = this.allWeights(x, max);
    }
    const inv = 1 / total;
    for (let i = 0; i < V; i++) out[i] = this.probs[i]! * inv;
  }

  /** A uniform draw in [0, 1) from this sampler's generator. */
  uniform(): number {
    return this.rng.next();
  }

  /** Index i with probability w[i] / total, from this sampler's generator. */
  pickWeighted(w: Float32Array, total: number): number {
    return this.pick(w, total);
  }

  /** Whether bias or penalties change this row (they need a copy of it). */
  private hasProcessors(history: ArrayLike<number>): boolean {
    const p = this.params;
    if (this.biasIds.length > 0) return true;
    const penalties = p.repetitionPenalty !== 1 || p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
    return penalties && p.repetitionContext > 0 && history.length > 0;
  }

  /** Bias and penalties, in place. */
  applyProcessors(x: Float32Array, history: ArrayLike<number>): void {
    const p = this.params;
    const V = x.length;
    for (let i = 0; i < this.biasIds.length; i++) {
      const id = this.biasIds[i]!;
      if (id >= 0 && id < V) x[id]! += this.biasValues[i]!;
    }
    const needRep = p.repetitionPenalty !== 1;
    const needAdd = p.presencePenalty !== 0 || p.frequencyPenalty !== 0;
    if ((!needRep && !needAdd) || p.repetitionContext === 0 || history.length === 0) return;
    const start = Math.max(0, history.length - p.repetitionContext);
    const counts = new Map<number, number>();
    for (let i = start; i < history.length; i++) {
      const id = history[i]!;
      if (id >= 0 && id < V) counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    for (const [id, n] of counts) {
      let v = x[id]!;
      if (needRep) v = v < 0 ? v * p.repetitionPenalty : v / p.repetitionPenalty;
      v -= p.presencePenalty + p.frequencyPenalty * n;
      x[id] = v;
    }
  }

  /**
   * Marks the tokens surviving top_p, min_p and top_k (on the distribution at temperature 1, probs holding
   * exp(x - max) with total sum), then draws one at the temperature.
   */
  private draw(x: Float32Array, probs: Float32Array, sum: number): number {
    return this.pick(probs, this.filteredWeights(x, probs, sum));
  }

  /** The weights draw() picks from, written over probs; returns their total. */
  private filteredWeights(x: Float32Array, probs: Float32Array, sum: number): number {
    const p = this.params;
    const V = x.length;
    const keep = this.keep;
    keep.fill(1);
    if (p.topP < 1) keepTopP(probs, p.topP * sum, keep);
    if (p.minP > 0) {
      // relative to the most likely token, whose unnormalised probability is 1
      for (let i = 0; i < V; i++) if (probs[i]! < p.minP) keep[i] = 0;
    }
    if (p.topK > 0 && p.topK < V) keepTopK(x, p.topK, keep);
    let kmax = -Infinity;
    for (let i = 0; i < V; i++) if (keep[i] && x[i]! > kmax) kmax = x[i]!;
    const invT = 1 / p.temperature;
    const w = probs;
    let total = 0;
    for (let i = 0; i < V; i++) total += w[i] = keep[i] ? Math.exp((x[i]! - kmax) * invT) : 0;
    return total;
  }

  /** A draw at the temperature over the whole vocabulary (no filters). */
  private drawAll(x: Float32Array, max: number): number {
    return this.pick(this.probs, this.allWeights(x, max));
  }

  /** The weights drawAll() picks from, written into probs; returns their total. */
  private allWeights(x: Float32Array, max: number): number {
    const invT = 1 / this.params.temperature;
    const w = this.probs;
    let total = 0;
    for (let i = 0; i < x.length; i++) total += w[i] = Math.exp((x[i]! - max) * invT);
    return total;
  }

  /** Index i with probability w[i] / total. */
  private pick(w: Float32Array, total: number): number {
    const V = w.length;
    let u = this.rng.next() * total;
    let last = -1;
    for (let i = 0; i < V; i++) {
      if (w[i]! === 0) continue;
      last = i;
      u -= w[i]!;
      if (u < 0) return i;
    }
    return last;
  }
}

/**
 * Keeps the smallest set of most likely tokens whose mass reaches `mass` (top_p times the total). One pass
 * builds a histogram of the mass by the float's top bits (order-preserving for non-negative floats); only the
 * tokens of the bucket where the cumulative mass crosses the target are sorted.
 */
function keepTopP(probs: Float32Array, mass: number, keep: Uint8Array): void {
  const V = probs.length;
  const bits = new Uint32Array(probs.buffer, probs.byteOffset, V);
  const hist = new Float64Array(1 << 13);
  for (let i = 0; i < V; i++) hist[bits[i]! >>> 19]! += probs[i]!;
  let cum = 0;
  let b = hist.length - 1;
  for (; b > 0; b--) {
    if (cum + hist[b]! >= mass) break;
    cum += hist[b]!;
  }
  const edge: number[] = [];
  for (let i = 0; i < V; i++) {
    const k = bits[i]! >>> 19;
    if (k < b) keep[i] = 0;
    else if (k === b) edge.push(i);
  }
  edge.sort((i, j) => probs[j]! - probs[i]! || i - j);
  for (const i of edge) {
    if (cum >= mass) keep[i] = 0;
    else cum += probs[i]!;
  }
}

/** An unsigned key with the order of the float (negative values included). */
function orderKey(bits: number): number {
  return (bits & 0x80000000 ? ~bits : bits | 0x80000000) >>> 0;
}

/** Keeps the k largest surviving logits (ties broken by lower index). */
function keepTopK(x: Float32Array, k: number, keep: Uint8Array): void {
  const V = x.length;
  let n = 0;
  for (let i = 0; i < V; i++) n += keep[i]!;
  if (n <= k) return;
  if (k <= 32) {
    const best = selectTop(x, keep, k);
    keep.fill(0);
    for (const i of best) keep[i] = 1;
    return;
  }
  // Larger k: count surviving tokens per 16-bit key bucket, keep whole buckets above the one where the count
  // reaches k, and sort only that bucket.
  const bits = new Uint32Array(x.buffer, x.byteOffset, V);
  const hist = new Int32Array(1 << 16);
  for (let i = 0; i < V; i++) if (keep[i]) hist[orderKey(bits[i]!) >>> 16]!++;
  let above = 0;
  let b = hist.length - 1;
  for (; b > 0; b--) {
    if (above + hist[b]! >= k) break;
    above += hist[b]!;
  }
  const edge: number[] = [];
  for (let i = 0; i < V; i++) {
    if (!keep[i]) continue;
    const key = orderKey(bits[i]!) >>> 16;
    if (key < b) keep[i] = 0;
    else if (key === b) edge.push(i);
  }
  edge.sort((i, j) => x[j]! - x[i]! || i - j);
  for (let e = k - above; e < edge.length; e++) keep[edge[e]!] = 0;
}

/**
 * The k best indices of x (among those with mask[i] set, when a mask is given), best first, ties to the lower
 * index; a small sorted buffer, O(V k) worst case but O(V) in practice.
 */
function selectTop(x: Float32Array, mask: Uint8Array | null, k: number): number[] {
  const buf: number[] = [];
  for (let i = 0; i < x.length; i++) {
    if (mask && !mask[i]) continue;
    const v = x[i]!;
    if (buf.length === k && v <= x[buf[k - 1]!]!) continue;
    let j = buf.length < k ? buf.length : k - 1;
    if (buf.length < k) buf.push(i);
    while (j > 0 && x[buf[j - 1]!]! < v) {
      buf[j] = buf[j - 1]!;
      j--;
    }
    buf[j] = i;
  }
  return buf;
}

function topN(x: Float32Array, n: number, logZ: number): { token: number; logprob: number }[] {
  return selectTop(x, null, Math.min(n, x.length)).map((token) => ({ token, logprob: x[token]! - logZ }));
}
