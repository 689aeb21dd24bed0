// The drafters of speculative decoding. --draft-model: a second model loaded beside the target, checked for a
// tokenizer the target shares, with a KV cache of its own. --draft-kind mtp: the target's own multi-token-prediction
// head (mtp_drafter.ts).
import { RmlxError } from "../errors.ts";
import type { Model, MtpHead } from "../models/model.ts";
import type { Tokenizer } from "../text/tokenizer.ts";
import { runStep } from "./forward_batch.ts";
import { KvCache, Sequence, type StepEntry } from "./kv/kv_cache.ts";
import { MtpDrafter } from "./mtp_drafter.ts";
import { loadSession, type Session } from "./session.ts";
import { type Drafter, Speculator } from "./speculative.ts";

/** The draft tokens a step proposes at most when --draft-tokens is not given. */
export const DEFAULT_DRAFT_TOKENS = 4;

const BLOCK_SIZE = 16;

/** Why two tokenizers do not give tokens the same ids, or null when they do. */
export function vocabularyMismatch(target: Tokenizer, draft: Tokenizer): string | null {
  if (target.vocabSize !== draft.vocabSize) return `${draft.vocabSize} tokens against the target's ${target.vocabSize}`;
  const a = target.allTokenBytes();
  const b = draft.allTokenBytes();
  for (let id = 0; id < target.vocabSize; id++) {
    const x = a.blob.subarray(a.offsets[id]!, a.offsets[id + 1]!);
    const y = b.blob.subarray(b.offsets[id]!, b.offsets[id + 1]!);
    if (x.length !== y.length || x.some((v, i) => v !== y[i]) || target.isSpecial(id) !== draft.isSpecial(id)) {
      return `token ${id} is ${JSON.stringify(draft.idToToken(id) ?? "")} there and ${JSON.stringify(target.idToToken(id) ?? "")} in the target`;
    }
  }
  return null;
}

/** A loaded draft model, checked against its target. */
export interface DraftModel {
  kind: "model";
  dir: string;
  session: Session;
  /** The draft's cost per step against the target's until measured: the ratio of their weight bytes. */
  costGuess: number;
}

/** Loads a draft model for `target`; one-line errors for a pair that cannot work. */
export function loadDraft(target: Session, dir: string): DraftModel {
  const where = `--draft-model ${dir}`;
  let session: Session;
  try {
    session = loadSession(dir, target.model.backend);
  } catch (e) {
    if (e instanceof RmlxError) throw new RmlxError(e.code, `--draft-model: ${e.message}`);
    throw e;
  }
  const why = vocabularyMismatch(target.tokenizer, session.tokenizer);
  if (why) throw new RmlxError("invalid_argument", `${where}: its tokenizer is not the target's (${why})`);
  if (session.model.layers.some((l) => l.state)) {
    throw new RmlxError("invalid_argument", `${where}: a draft with linear-attention layers cannot be cut back past rejected tokens`);
  }
  return { kind: "model", dir, session, costGuess: session.md.weights.totalBytes / Math.max(1, target.md.weights.totalBytes) };
}

/** The target's MTP head as its drafter. */
export interface MtpDraft {
  kind: "mtp";
  target: Model;
  head: MtpHead;
  /** The head's cost per step against the target's until measured: the ratio of the weight bytes it reads. */
  costGuess: number;
}

/** The MTP head of `target`; one-line errors for a model without a complete one. */
export function loadMtpDraft(target: Session): MtpDraft {
  const where = "--draft-kind mtp";
  const model = target.model;
  if (!model.mtpHead || !model.forwardHidden) throw new RmlxError("invalid_argument", `${where}: ${target.md.dir}: model type ${target.md.config.modelType} has no MTP head`);
  let head: MtpHead;
  try {
    head = model.mtpHead();
  } catch (e) {
    if (e instanceof RmlxError) throw new RmlxError(e.code, `${where}: ${e.message}`);
    throw e;
  }
  return { kind: "mtp", target: model, head, costGuess: head.weightBytes / Math.max(1, target.md.weights.totalBytes) };
}

/** A draft model or the target's MTP head. */
export type DraftSource = DraftModel | MtpDraft;

/** Most catch-up tokens the draft runs in one forward (its prompt, on a sequence's first round). */
const CATCH_UP_CHUNK = 1024;

/** A draft model over a KV cache of its own, one sequence of it per target sequence. */
export class ModelDrafter implements Drafter {
  readonly wantsHidden = false;
  private readonly seqs = new Map<object, Sequence>();

  constructor(
    readonly model: Model,
    readonly cache: KvCache,
  ) {}

  get contextLength(): number {
    return this.model.config.contextLength;
  }

  private seqOf(key: object): Sequence {
    let seq = this.seqs.get(key);
    if (!seq) this.seqs.set(key, (seq = new Sequence()));
    return seq;
  }

  prepare(key: object, tokens: readonly number[], k: number): boolean {
    const seq = this.seqOf(key);
    const behind = tokens.length - seq.length;
    if (behind < 1) throw new RmlxError("internal", "the draft is ahead of its sequence");
    // A target with a larger (padded) vocabulary may emit an id the draft has no embedding for.
    for (let t = seq.length; t < tokens.length; t++) if (tokens[t]! >= this.model.vocabSize) return false;
    try {
      this.cache.reserve(seq, behind + k - 1);
    } catch (e) {
      if (e instanceof RmlxError && e.code === "overloaded") return false;
      throw e;
    }
    return true;
  }

  forward(items: readonly { key: object; tokens: readonly number[]; last: number | null }[]): Float32Array {
    const cache = this.cache;
    if (items[0]?.last === null) {
      // Long catch-ups (a sequence's prompt) in chunks that need no logits, so the first proposal step is short.
      for (;;) {
        const entries: StepEntry[] = [];
        for (const { key, tokens } of items) {
          const seq = this.seqOf(key);
          const behind = tokens.length - seq.length;
          if (behind > CATCH_UP_CHUNK) entries.push({ seq, tokens: Int32Array.from(tokens.slice(seq.length, seq.length + Math.min(CATCH_UP_CHUNK, behind - 1))) });
        }
        if (entries.length === 0) break;
        runStep(this.model, cache, cache.buildStep(entries), new Int32Array(0));
        cache.advance(entries);
      }
    }
    const entries = items.map(({ key, tokens, last }) => {
      const seq = this.seqOf(key);
      return { seq, tokens: last === null ? Int32Array.from(tokens.slice(seq.length)) : Int32Array.of(last) };
    });
    const built = cache.buildStep(entries);
    const logits = runStep(this.model, cache, built, built.lastRows);
    cache.advance(entries);
    return logits;
  }

  settle(key: object, valid: number): void {
    const seq = this.seqs.get(key);
    if (seq && seq.length > valid) this.cache.truncate(seq, valid);
  }

  release(key: object): void {
    const seq = this.seqs.get(key);
    if (seq) this.cache.release(seq);
    this.seqs.delete(key);
  }

  dispose(): void {
    for (const seq of this.seqs.values()) this.cache.release(seq);
    this.seqs.clear();
    this.cache.dispose();
  }
}

/**
 * A Speculator over the draft (a model or the target's MTP head) with a KV cache of its own: capacityTokens (the
 * target cache's capacity) plus room for each of `sequences` to run ahead by maxDraft.
 */
export function speculatorFor(draft: DraftSource, maxDraft: number, capacityTokens: number, sequences: number, fixed = false): Speculator {
  const tokens = capacityTokens + sequences * (maxDraft + BLOCK_SIZE);
  const numBlocks = Math.ceil(tokens / BLOCK_SIZE);
  if (draft.kind === "mtp") {
    const cache = new KvCache(draft.target.backend, draft.head.layers, { blockSize: BLOCK_SIZE, numBlocks });
    return new Speculator(new MtpDrafter(draft.target, draft.head, cache), maxDraft, draft.costGuess, fixed);
  }
  const model = draft.session.model;
  const cache = new KvCache(model.backend, model.layers, { blockSize: BLOCK_SIZE, numBlocks });
  return new Speculator(new ModelDrafter(model, cache), maxDraft, draft.costGuess, fixed);
}
