// --draft-kind mtp: the target's multi-token-prediction head as the drafter. The head's KV entry for index i of a
// sequence is made from the token at i + 1 and the target's post-norm hidden state at i (at the RoPE position of
// the token at i + 1) and predicts the token at i + 2. The scheduler hands over the target's hidden states of the
// tokens it keeps (observe); the first forward of a round runs the entries those allow, up to the sequence's last
// token, whose logits give the first proposal; each later proposal runs one entry from the previous proposal and
// the head's own hidden state. Entries made from the head's own hidden states are cut back after the round: they
// are made again from the target's once it has run those tokens.
import { RmlxError } from "../errors.ts";
import type { Model, MtpHead } from "../models/model.ts";
import { type KvCache, Sequence } from "./kv/kv_cache.ts";
import type { Drafter } from "./speculative.ts";

/** Most entries one catch-up forward runs (a prompt's), and the hidden rows a sequence keeps before running them. */
const CATCH_UP_CHUNK = 1024;

const NONE = new Float32Array(0);

interface MtpSeq {
  /** The head's KV: entry n is index base + n of the sequence. */
  seq: Sequence;
  base: number;
  /** Entries made from the target's hidden states (those past them are this round's proposals). */
  trueLen: number;
  /** The target's hidden states not yet run, of indices base + trueLen onwards. */
  pending: Float32Array[];
  pendingRows: number;
  /** The head's own hidden state after the last proposal (the hidden input of the next one). */
  last: Float32Array | null;
}

/** One run of entries of one sequence: the tokens at i + 1 and the hidden states at i. */
interface Run {
  st: MtpSeq;
  tokens: Int32Array;
  hidden: Float32Array;
}

export class MtpDrafter implements Drafter {
  readonly wantsHidden = true;
  private readonly seqs = new Map<object, MtpSeq>();
  private readonly H: number;

  constructor(
    readonly target: Model,
    readonly head: MtpHead,
    readonly cache: KvCache,
  ) {
    this.H = head.hiddenSize;
  }

  get contextLength(): number {
    return this.target.config.contextLength;
  }

  observe(key: object, start: number, hidden: Float32Array, rows: number, tokens: readonly number[]): void {
    if (hidden.length !== rows * this.H) throw new RmlxError("internal", `${rows} hidden rows of ${this.H} values expected, got ${hidden.length} values`);
    let st = this.seqs.get(key);
    // A gap (the prefix cache supplied the tokens before start, or the target starts over after a preemption):
    // the head starts its KV at start.
    if (!st || start !== st.base + st.trueLen + st.pendingRows) {
      if (st) this.cache.release(st.seq);
      st = { seq: new Sequence(), base: start, trueLen: 0, pending: [], pendingRows: 0, last: null };
      this.seqs.set(key, st);
    }
    st.pending.push(hidden.slice(0, rows * this.H));
    st.pendingRows += rows;
    if (st.pendingRows < CATCH_UP_CHUNK) return;
    // Many rows waiting (a prompt, or a sequence that has not speculated for a while): run those whose next
    // token is known, so that their hidden states need not be kept.
    this.cutBack(st);
    const n = Math.min(st.pendingRows, tokens.length - 1 - (st.base + st.trueLen));
    if (n < 1 || !this.reserve(st, n)) return;
    for (let done = 0; done < n; done += CATCH_UP_CHUNK) this.runTrue([this.takeRun(st, tokens, Math.min(CATCH_UP_CHUNK, n - done))], false);
  }

  prepare(key: object, tokens: readonly number[], k: number): boolean {
    const st = this.seqs.get(key);
    if (!st) return false;
    this.cutBack(st);
    // Entries base + trueLen .. L - 2 run first; the target's hidden states must cover them.
    const need = tokens.length - 1 - (st.base + st.trueLen);
    if (need < 1 || need > st.pendingRows) return false;
    return this.reserve(st, need + k - 1);
  }

  forward(items: readonly { key: object; tokens: readonly number[]; last: number | null }[]): Float32Array {
    const sts = items.map(({ key }) => {
      const st = this.seqs.get(key);
      if (!st) throw new RmlxError("internal", "the MTP head has no state for a sequence it proposes for");
      return st;
    });
    if (items[0]?.last !== null) {
      const runs = items.map(({ last }, i) => ({ st: sts[i]!, tokens: Int32Array.of(last!), hidden: sts[i]!.last! }));
      return this.run(runs, true);
    }
    // Long catch-ups in chunks that need no logits, so that the first proposal's forward is short.
    for (;;) {
      const runs: Run[] = [];
      items.forEach(({ tokens }, i) => {
        const st = sts[i]!;
        const need = tokens.length - 1 - (st.base + st.trueLen);
        if (need > CATCH_UP_CHUNK) runs.push(this.takeRun(st, tokens, CATCH_UP_CHUNK));
      });
      if (runs.length === 0) break;
      this.runTrue(runs, false);
    }
    const runs = items.map(({ tokens }, i) => this.takeRun(sts[i]!, tokens, tokens.length - 1 - (sts[i]!.base + sts[i]!.trueLen)));
    return this.runTrue(runs, true);
  }

  settle(key: object): void {
    const st = this.seqs.get(key);
    if (st) this.cutBack(st);
  }

  release(key: object): void {
    const st = this.seqs.get(key);
    if (st) this.cache.release(st.seq);
    this.seqs.delete(key);
  }

  dispose(): void {
    for (const st of this.seqs.values()) this.cache.release(st.seq);
    this.seqs.clear();
    this.cache.dispose();
  }

  /** Drops the entries made from the head's own hidden states. */
  private cutBack(st: MtpSeq): void {
    if (st.seq.length > st.trueLen) this.cache.truncate(st.seq, st.trueLen);
    st.last = null;
  }

  private reserve(st: MtpSeq, n: number): boolean {
    try {
      this.cache.reserve(st.seq, n);
      return true;
    } catch (e) {
      if (e instanceof RmlxError && e.code === "overloaded") return false;
      throw e;
    }
  }

  /** The next n entries of st from the target's hidden states (taken off its pending rows). */
  private takeRun(st: MtpSeq, tokens: readonly number[], n: number): Run {
    const first = st.base + st.trueLen;
    const H = this.H;
    const hidden = new Float32Array(n * H);
    let filled = 0;
    while (filled < n) {
      const chunk = st.pending[0]!;
      const rows = chunk.length / H;
      const use = Math.min(rows, n - filled);
      hidden.set(chunk.subarray(0, use * H), filled * H);
      filled += use;
      if (use === rows) st.pending.shift();
      else st.pending[0] = chunk.subarray(use * H);
    }
    st.pendingRows -= n;
    return { st, tokens: Int32Array.from(tokens.slice(first + 1, first + 1 + n)), hidden };
  }

  /** Runs entries made from the target's hidden states; they stay after the round. */
  private runTrue(runs: Run[], logits: boolean): Float32Array {
    const out = this.run(runs, logits);
    for (const r of runs) r.st.trueLen = r.st.seq.length;
    return out;
  }

  /** One forward of the head over the runs: logits of each run's last entry when asked (else none). */
  private run(runs: Run[], logits: boolean): Float32Array {
    const cache = this.cache;
    const H = this.H;
    const entries = runs.map((r) => ({ seq: r.st.seq, tokens: r.tokens }));
    const built = cache.buildStep(entries);
    const T = built.tokens.length;
    const hidden = new Float32Array(T * H);
    const positions = new Int32Array(T);
    let t = 0;
    for (const r of runs) {
      hidden.set(r.hidden, t * H);
      // The head's entry n holds index base + n, at the position of the token after it.
      for (let j = 0; j < r.tokens.length; j++, t++) positions[t] = r.st.base + r.st.seq.length + j + 1;
    }
    const rows = logits ? built.lastRows : new Int32Array(0);
    const be = this.target.backend;
    const res = be.scope(() => {
      const f = this.head.forward(cache.forwardStep(built, rows), be.fromArray(hidden, [T, H], "f32"), positions);
      return { logits: be.toFloat32(f.logits), hidden: logits ? be.toFloat32(f.hidden) : NONE };
    });
    cache.advance(entries);
    runs.forEach((r, i) => {
      if (logits) r.st.last = res.hidden.slice(i * H, (i + 1) * H);
    });
    return res.logits;
  }
}
