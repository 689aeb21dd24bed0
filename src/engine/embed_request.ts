// An embeddings request inside the engine: each input's token ids (tokenized with the model's prompt, or given),
// checked against the model's limit (refused, or cut when the request asks), then every input in one batch.
import { RmlxError } from "../errors.ts";
import type { Embedder } from "./embedder.ts";
import type { EmbedRequest } from "./types.ts";

/**
 * Cuts ids to n tokens as a tokenizer's truncation does: the end, except a special token the tokenizer closes every
 * input with ([SEP], </s>, <|endoftext|>), which stays last.
 */
function cut(e: Embedder, ids: number[], n: number): number[] {
  const last = ids[ids.length - 1]!;
  return e.tokenizer.isSpecial(last) ? [...ids.slice(0, n - 1), last] : ids.slice(0, n);
}

export function runEmbedRequest(e: Embedder, req: EmbedRequest): { embeddings: Float32Array[]; promptTokens: number } {
  const limit = e.info.maxTokens;
  const seqs = req.inputs.map((input, i) => {
    const ids = typeof input === "string" ? e.tokenize(input, req.promptName) : e.withEnd(input);
    if (ids.length === 0) throw new RmlxError("invalid_argument", `input ${i} has no tokens`);
    if (ids.length <= limit) return ids;
    if (!req.truncate) {
      throw new RmlxError(
        "invalid_argument",
        `input ${i} has ${ids.length} tokens, more than this model's limit of ${limit}; shorten it or send "truncate": true to cut it to fit`,
      );
    }
    return cut(e, ids, limit);
  });
  const embeddings = e.embed(seqs);
  return { embeddings, promptTokens: seqs.reduce((a, s) => a + s.length, 0) };
}
