// --verify: run the source and the converted model on the same few prompts and measure how far the converted
// model's next-token distributions moved, as KL(source || converted) per position, plus top-1 agreement.
import { getBackend } from "../backend/index.ts";
import { forwardBatch } from "../engine/forward_batch.ts";
import { KvCache, Sequence } from "../engine/kv/kv_cache.ts";
import { klDivergence, logSoftmax } from "../engine/logprobs.ts";
import { openModelDir } from "../io/model_dir.ts";
import type { Model } from "../models/model.ts";
import { loadModel } from "../models/registry.ts";

export interface VerifyReport {
  prompts: number;
  positions: number;
  meanKl: number;
  maxKl: number;
  top1Agreement: number;
}

/** Prompts as token ids spread over the vocabulary, so verification needs no tokenizer. */
export function verifyPrompts(vocab: number, count = 3, length = 24): Int32Array[] {
  return Array.from({ length: count }, (_, p) =>
    Int32Array.from({ length }, (_, i) => (i * 7919 + p * 104729 + 13 * (p + 1)) % vocab),
  );
}

function argmax(row: ArrayLike<number>): number {
  let b = 0;
  for (let j = 1; j < row.length; j++) if (row[j]! > row[b]!) b = j;
  return b;
}

function allLogits(model: Model, ids: Int32Array): Float32Array {
  const blockSize = 16;
  const cache = new KvCache(model.backend, model.layers, { numBlocks: Math.ceil(ids.length / blockSize) + 1, blockSize });
  return forwardBatch(model, cache, [{ seq: new Sequence(), tokens: ids }], "all").logits;
}

export function verifyConversion(srcDir: string, outDir: string): VerifyReport {
  const backend = getBackend();
  const src = loadModel(backend, openModelDir(srcDir));
  const out = loadModel(backend, openModelDir(outDir));
  const vocab = Math.min(src.vocabSize, out.vocabSize);
  const prompts = verifyPrompts(vocab);
  let sum = 0;
  let max = 0;
  let agree = 0;
  let n = 0;
  for (const ids of prompts) {
    const a = allLogits(src, ids);
    const b = allLogits(out, ids);
    for (let t = 0; t < ids.length; t++) {
      const ra = a.subarray(t * src.vocabSize, (t + 1) * src.vocabSize);
      const rb = b.subarray(t * out.vocabSize, (t + 1) * out.vocabSize);
      const kl = klDivergence(logSoftmax(ra), logSoftmax(rb));
      sum += kl;
      max = Math.max(max, kl);
      if (argmax(ra) === argmax(rb)) agree++;
      n++;
    }
  }
  return { prompts: prompts.length, positions: n, meanKl: sum / n, maxKl: max, top1Agreement: agree / n };
}
