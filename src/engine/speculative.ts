// Speculative decoding with a drafter: a draft model, or the target's own multi-token-prediction head (see
// draft_model.ts). Each step, a decoding sequence may have the drafter propose k tokens
// (k drafter forwards, batched over the sequences that speculate); the target then runs its last token and the k
// proposals in one step and keeps the longest prefix it agrees with, plus one token of its own. Greedy: a
// proposal is kept when it is the target's argmax, so the output is the target's alone. Sampled: rejection
// sampling (keep d with probability min(1, p(d)/q(d)), else draw from the normalised max(0, p - q)), with the
// request's temperature, filters and penalties applied to both distributions, which keeps the target's
// distribution exactly. The drafter's KV is cut back past the tokens the target did not keep.
//
// How many tokens to propose is decided per sequence from its recent acceptance and the measured cost of draft
// steps and of the extra verified tokens, against plain decode steps: the k that maximises expected tokens per
// unit of time, 0 (a plain step) when no k beats plain decoding. A sequence that stops speculating tries again
// after a back-off that doubles while speculation keeps not paying. Across sequences: while the draft has been
// right for none of the last ones that it proposed for, a new sequence waits a back-off of its own (doubling
// with each such sequence) before its first proposal, so a draft that never agrees stops costing every request
// its first probes; one accepted token anywhere clears it.
import { RmlxError } from "../errors.ts";
import { Sampler } from "./sampler.ts";
import type { SamplingParams } from "./types.ts";

/** A draft's proposal for one sequence. */
export interface Draft {
  tokens: number[];
  /** The draft distribution each token was drawn from (over the draft's vocabulary); empty when greedy. */
  probs: Float32Array[];
}

/** What the target kept of a draft: the kept proposals, then one token of its own. */
export interface Verdict {
  tokens: number[];
  accepted: number;
}

/** Draft tokens and how many the target kept, over a request. */
export interface SpecCounts {
  draftTokens: number;
  acceptedTokens: number;
}

/**
 * The target's verdict on a draft. rows[i] is the target's logits after the sequence's tokens and the first i
 * proposals (draft.tokens.length + 1 rows); history holds the sequence's tokens (base of them) then the proposals.
 */
export function verifyDraft(sampler: Sampler, rows: readonly Float32Array[], history: Int32Array, base: number, draft: Draft): Verdict {
  const k = draft.tokens.length;
  const greedy = !(sampler.params.temperature > 0);
  const out: number[] = [];
  let p: Float32Array | null = null;
  for (let i = 0; i < k; i++) {
    const row = rows[i]!;
    const seen = history.subarray(0, base + i);
    const d = draft.tokens[i]!;
    if (greedy) {
      const t = sampler.sample(row, seen).token;
      out.push(t);
      if (t !== d) return { tokens: out, accepted: i };
      continue;
    }
    if (p === null || p.length !== row.length) p = new Float32Array(row.length);
    sampler.distribution(row, seen, p);
    const q = draft.probs[i]!;
    const pd = d < p.length ? p[d]! : 0;
    const qd = q[d]!;
    // u < p/q, written without the division; qd > 0 since d was drawn from q.
    if (sampler.uniform() * qd < pd) {
      out.push(d);
      continue;
    }
    let total = 0;
    for (let t = 0; t < p.length; t++) {
      const r = p[t]! - (t < q.length ? q[t]! : 0);
      total += p[t] = r > 0 ? r : 0;
    }
    // p <= q everywhere would mean p == q, where rejection has probability 0; rounding can still land here.
    if (total > 0) out.push(sampler.pickWeighted(p, total));
    else out.push(sampler.sample(row, seen).token);
    return { tokens: out, accepted: i };
  }
  out.push(sampler.sample(rows[k]!, history.subarray(0, base + k)).token);
  return { tokens: out, accepted: k };
}

/** Exponential moving average; NaN until the first sample. */
function ema(prev: number, x: number, w = 0.2): number {
  return Number.isNaN(prev) ? x : prev + w * (x - prev);
}

/** Expected tokens of a round that proposes k, each kept with probability a until the first rejection. */
export function expectedTokens(a: number, k: number): number {
  return a >= 1 ? k + 1 : (1 - a ** (k + 1)) / (1 - a);
}

/**
 * What runs a Speculator's proposals, keeping per-sequence state (its own KV cache) keyed by the scheduler's
 * sequence objects.
 */
export interface Drafter {
  /** Longest sequence it can propose for. */
  readonly contextLength: number;
  /** Whether it reads the target's post-norm hidden states (observe). */
  readonly wantsHidden: boolean;
  /**
   * Gets key ready to propose up to k tokens after `tokens` (the target holds all but the last in its KV):
   * cache room for them; false when it cannot propose for key this round.
   */
  prepare(key: object, tokens: readonly number[], k: number): boolean;
  /**
   * One forward for each item, logits [items.length, vocab] row-major: the first of a round (last null) runs
   * what the drafter lacks of the item's tokens, a later one the item's previous proposal.
   */
  forward(items: readonly { key: object; tokens: readonly number[]; last: number | null }[]): Float32Array;
  /** After the target's verdict: key's sequence holds `valid` tokens in the target's KV. */
  settle(key: object, valid: number): void;
  /**
   * The target's post-norm hidden states [rows, hiddenSize] of key's tokens start .. start + rows - 1, from a
   * step that ran them; `tokens` are key's tokens so far.
   */
  observe?(key: object, start: number, hidden: Float32Array, rows: number, tokens: readonly number[]): void;
  /** Drops key's KV (the target's was released too: key will be recomputed), keeping nothing of it. */
  release(key: object): void;
  dispose(): void;
}

interface SeqSpec {
  /** Draws the draft's tokens (its own generator, the request's sampling). */
  sampler: Sampler;
  /** Decayed counts of kept proposals and of rejections (at most one a round). */
  kept: number;
  rejected: number;
  /** Tokens generated when speculation may be tried again, and the back-off after that. */
  offUntil: number;
  backoff: number;
  probing: boolean;
  counts: SpecCounts;
}

/** A sequence to propose for: its tokens (prompt and generated; the target has all but the last in its KV). */
export interface ProposeItem {
  key: object;
  tokens: readonly number[];
  k: number;
}

const DECAY = 0.9;
const PRIOR_KEPT = 0.5;
const PRIOR_REJECTED = 0.5;
/** One step in this many runs plain, so that the baseline the costs are measured against follows the load. */
const CALIBRATE_EVERY = 16;
const FIRST_BACKOFF = 8;
const MAX_BACKOFF = 256;
/** The acceptance a draft would need to be worth probing. */
const OPTIMISTIC = 0.9;
/** The extra cost of one verified token against a plain step, until measured. */
const GUESS_EXTRA = 0.1;

export class Speculator {
  private readonly seqs = new Map<object, SeqSpec>();
  /** Measured (EMA) milliseconds: a plain decode-only target step, a draft step, one extra verified token. */
  private plainMs = NaN;
  private draftMs = NaN;
  private extraMs = NaN;
  private steps = 0;
  /** Tokens a new sequence waits before its first proposal: 0, or doubling while sequences end unhelped. */
  private pairBackoff = 0;

  constructor(
    readonly drafter: Drafter,
    /** Most tokens proposed a round (--draft-tokens). */
    readonly maxDraft: number,
    /** The draft's cost per step against the target's, until measured (e.g. the ratio of their weight bytes). */
    private readonly costGuess: number,
    /** After the first plain step, always propose maxDraft (within the room left) instead of adapting. */
    private readonly fixed = false,
  ) {
    if (!Number.isInteger(maxDraft) || maxDraft < 1) throw new RmlxError("invalid_argument", `draft tokens must be an integer >= 1 (got ${maxDraft})`);
  }

  private stateOf(key: object, params: SamplingParams): SeqSpec {
    let st = this.seqs.get(key);
    if (!st) {
      const seed = params.seed === undefined ? undefined : (params.seed ^ 0x5bd1e995) >>> 0;
      st = {
        sampler: new Sampler({ ...params, seed, logprobs: false, topLogprobs: 0 }),
        kept: 0,
        rejected: 0,
        offUntil: this.pairBackoff,
        backoff: FIRST_BACKOFF,
        probing: false,
        counts: { draftTokens: 0, acceptedTokens: 0 },
      };
      this.seqs.set(key, st);
    }
    return st;
  }

  /** Called once a step before plan(): false for a step that runs plain to measure the baseline again. */
  beginStep(): boolean {
    return this.steps++ % CALIBRATE_EVERY !== CALIBRATE_EVERY - 1;
  }

  /**
   * Tokens to propose for key this step (0: a plain step). length: its tokens so far; room: tokens it may still
   * generate; batch: sequences decoding in the step.
   */
  plan(key: object, params: SamplingParams, length: number, generated: number, room: number, batch: number): number {
    const st = this.stateOf(key, params);
    const most = Math.min(this.maxDraft, room - 1, this.drafter.contextLength - length);
    // A plain step is measured before anything is proposed.
    if (most < 1 || Number.isNaN(this.plainMs)) return 0;
    if (this.fixed) return most;
    if (generated < st.offUntil) return 0;
    const a = (st.kept + PRIOR_KEPT) / (st.kept + st.rejected + PRIOR_KEPT + PRIOR_REJECTED);
    // Until the draft has been right once for this sequence, a round proposes one token, and after a wrong one
    // the sequence waits out a back-off: a draft that never agrees costs one proposal per back-off.
    const trusted = st.counts.acceptedTokens > 0;
    const best = trusted || st.counts.draftTokens === 0 ? this.bestK(a, most, batch) : 0;
    if (best > 0) {
      st.probing = false;
      st.backoff = FIRST_BACKOFF;
      return trusted ? best : 1;
    }
    if (this.bestK(OPTIMISTIC, most, batch) === 0) {
      // Too costly a draft even if it were nearly always right: no probing either, until the costs change.
      st.offUntil = generated + MAX_BACKOFF;
      return 0;
    }
    if (!st.probing && st.offUntil > 0) {
      // The back-off is over: one short round to see whether the acceptance has changed.
      st.probing = true;
      return trusted ? Math.min(2, most) : 1;
    }
    st.probing = false;
    st.offUntil = generated + st.backoff;
    st.backoff = Math.min(MAX_BACKOFF, st.backoff * 2);
    return 0;
  }

  /** The k in 1..most with the most expected tokens per unit of time above plain decoding's 1; 0 when none. */
  private bestK(a: number, most: number, batch: number): number {
    const draftCost = (Number.isNaN(this.draftMs) ? this.costGuess * this.plainMs : this.draftMs) / this.plainMs;
    const extraCost = (Number.isNaN(this.extraMs) ? GUESS_EXTRA * this.plainMs : this.extraMs) / this.plainMs;
    let best = 0;
    let bestGain = 1;
    for (let k = 1; k <= most; k++) {
      const gain = expectedTokens(a, k) / (1 + k * (draftCost + batch * extraCost));
      if (gain > bestGain) {
        best = k;
        bestGain = gain;
      }
    }
    return best;
  }

  /** Whether the drafter reads the target's hidden states: the scheduler then hands them over (observe). */
  get wantsHidden(): boolean {
    return this.drafter.wantsHidden;
  }

  /** The target's post-norm hidden states of key's tokens start .. start + rows - 1 (see Drafter.observe). */
  observe(key: object, start: number, hidden: Float32Array, rows: number, tokens: readonly number[]): void {
    this.drafter.observe?.(key, start, hidden, rows, tokens);
  }

  /**
   * Runs the drafter over the items (first what it lacks of their tokens, then one forward per proposed token)
   * and returns their proposals; null for an item it cannot propose for this round.
   */
  propose(items: readonly ProposeItem[], params: (key: object) => SamplingParams): (Draft | null)[] {
    const t0 = performance.now();
    const live: { item: ProposeItem; st: SeqSpec; draft: Draft; last: number }[] = [];
    const out: (Draft | null)[] = items.map(() => null);
    items.forEach((item, i) => {
      const st = this.stateOf(item.key, params(item.key));
      if (!this.drafter.prepare(item.key, item.tokens, item.k)) return;
      const draft: Draft = { tokens: [], probs: [] };
      out[i] = draft;
      live.push({ item, st, draft, last: -1 });
    });
    let steps = 0;
    for (let j = 0; ; j++) {
      const active = live.filter((l) => l.item.k > j);
      if (active.length === 0) break;
      const logits = this.drafter.forward(active.map((l) => ({ key: l.item.key, tokens: l.item.tokens, last: j === 0 ? null : l.last })));
      steps++;
      const vocab = logits.length / active.length;
      active.forEach((l, r) => {
        const row = logits.subarray(r * vocab, (r + 1) * vocab);
        const history = [...l.item.tokens, ...l.draft.tokens];
        const s = l.st.sampler;
        let token: number;
        if (s.params.temperature > 0) {
          const q = new Float32Array(vocab);
          s.distribution(row, history, q);
          token = s.pickWeighted(q, 1);
          l.draft.probs.push(q);
        } else {
          token = s.sample(row, history).token;
        }
        l.draft.tokens.push(token);
        l.last = token;
      });
    }
    if (steps > 0) this.draftMs = ema(this.draftMs, (performance.now() - t0) / steps);
    return out;
  }

  /**
   * After the target's verdict: the draft keeps the K/V of the first `valid` tokens of the sequence; the
   * acceptance counts move.
   */
  settle(key: object, valid: number, proposed: number, accepted: number): void {
    const st = this.seqs.get(key);
    if (!st) return;
    this.drafter.settle(key, valid);
    st.kept = st.kept * DECAY + accepted;
    st.rejected = st.rejected * DECAY + (accepted < proposed ? 1 : 0);
    st.counts.draftTokens += proposed;
    st.counts.acceptedTokens += accepted;
    if (accepted > 0) this.pairBackoff = 0;
  }

  /** A target step's forward time: decode-only steps, with `drafted` proposals verified in all. */
  observeStep(ms: number, drafted: number): void {
    // The baseline follows faster steps at once and slower ones by the average: the first plain steps of a
    // request can take several times a steady one (114 ms against 13 measured), and against such a baseline
    // the first verifications looked free, so a draft that never agreed kept being probed.
    if (drafted === 0) this.plainMs = ms < this.plainMs ? ms : ema(this.plainMs, ms);
    else if (!Number.isNaN(this.plainMs)) this.extraMs = ema(this.extraMs, Math.max(0, ms - this.plainMs) / drafted);
  }

  /** The measured costs (milliseconds, NaN until measured): a plain decode step, a draft step, one extra verified token. */
  get costs(): { plainMs: number; draftMs: number; extraMs: number } {
    return { plainMs: this.plainMs, draftMs: this.draftMs, extraMs: this.extraMs };
  }

  counts(key: object): SpecCounts {
    return { ...(this.seqs.get(key)?.counts ?? { draftTokens: 0, acceptedTokens: 0 }) };
  }

  /** The drafter's blocks of a sequence go back (preempted: they are recomputed with it). */
  releaseKv(key: object): void {
    this.drafter.release(key);
  }

  /** Forgets a finished or cancelled sequence. */
  release(key: object): void {
    const st = this.seqs.get(key);
    if (st && st.counts.draftTokens > 0 && st.counts.acceptedTokens === 0)
      this.pairBackoff = Math.min(MAX_BACKOFF, Math.max(FIRST_BACKOFF, 2 * this.pairBackoff));
    this.releaseKv(key);
    this.seqs.delete(key);
  }

  dispose(): void {
    this.seqs.clear();
    this.drafter.dispose();
  }
}
