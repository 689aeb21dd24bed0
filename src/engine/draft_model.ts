// --draft-model: a second model loaded beside the target, checked for a tokenizer the target shares, with a KV
// cache of its own, as the target's Speculator.
import { RmlxError } from "../errors.ts";
import type { Tokenizer } from "../text/tokenizer.ts";
import { KvCache } from "./kv/kv_cache.ts";
import { loadSession, type Session } from "./session.ts";
import { Speculator } from "./speculative.ts";

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
  return { dir, session, costGuess: session.md.weights.totalBytes / Math.max(1, target.md.weights.totalBytes) };
}

/**
 * A Speculator over the draft with a KV cache of its own: capacityTokens (the target cache's capacity) plus
 * room for each of `sequences` to run ahead by maxDraft.
 */
export function speculatorFor(draft: DraftModel, maxDraft: number, capacityTokens: number, sequences: number, fixed = false): Speculator {
  const tokens = capacityTokens + sequences * (maxDraft + BLOCK_SIZE);
  const model = draft.session.model;
  const cache = new KvCache(model.backend, model.layers, { blockSize: BLOCK_SIZE, numBlocks: Math.ceil(tokens / BLOCK_SIZE) });
  return new Speculator(model, cache, maxDraft, draft.costGuess, fixed);
}
