// The encoder contract of embedding models: every token of a padding-free batch of whole sequences goes through
// the stack once, with no cache, and comes back as a hidden state; pooling, dense layers and normalisation follow
// in src/engine/embedder.ts. Attention stays within each sequence (Backend.varlenAttention).
import type { Backend, Tensor } from "../backend/backend.ts";
import type { ModelConfig } from "../io/config.ts";
import type { AttentionParams, AttentionWeights } from "./layers.ts";
import { checkPositions } from "./rope.ts";

/** Whole sequences, concatenated: sequence i is tokens [seqStart[i], seqStart[i + 1]). */
export interface EncoderBatch {
  tokens: Int32Array;
  seqStart: Int32Array;
  /** Each token's position within its own sequence [T]. */
  positions: Int32Array;
}

export interface Encoder {
  readonly config: ModelConfig;
  readonly backend: Backend;
  /** Width of the hidden states encode returns. */
  readonly hiddenSize: number;
  /** Most tokens one sequence may hold (its position embeddings or context). */
  readonly maxTokens: number;
  /** Hidden states of every token [T, hiddenSize], after the stack's last norm (recorded, not yet evaluated). */
  encode(batch: EncoderBatch): Tensor;
}

export function encoderBatch(seqs: readonly (readonly number[])[]): EncoderBatch {
  const T = seqs.reduce((a, s) => a + s.length, 0);
  const tokens = new Int32Array(T);
  const positions = new Int32Array(T);
  const seqStart = new Int32Array(seqs.length + 1);
  let t = 0;
  seqs.forEach((s, i) => {
    seqStart[i] = t;
    for (let p = 0; p < s.length; p++, t++) {
      tokens[t] = s[p]!;
      positions[t] = p;
    }
  });
  seqStart[seqs.length] = t;
  return { tokens, seqStart, positions };
}

/** Self-attention of a decoder family's layer run as an encoder: projections, q/k norms, rope, then attention within each sequence. */
export function encoderAttention(be: Backend, x: Tensor, w: AttentionWeights, s: AttentionParams, batch: EncoderBatch, causal: boolean, window: number): Tensor {
  const T = x.shape[0]!;
  let q = be.reshape(be.linear(x, w.q, w.qBias), [T, s.heads, s.headDim]);
  let k = be.reshape(be.linear(x, w.k, w.kBias), [T, s.kvHeads, s.headDim]);
  const v = be.reshape(be.linear(x, w.v, w.vBias), [T, s.kvHeads, s.headDim]);
  if (w.qNorm) q = be.rmsNorm(q, w.qNorm, s.normEps, s.normOnePlus);
  if (w.kNorm) k = be.rmsNorm(k, w.kNorm, s.normEps, s.normOnePlus);
  checkPositions(s.rope, batch.positions);
  q = be.rope(q, batch.positions, s.rope.opts);
  k = be.rope(k, batch.positions, s.rope.opts);
  const a = be.varlenAttention(q, k, v, batch.seqStart, { scale: s.scale, causal, window });
  return be.linear(be.reshape(a, [T, s.heads * s.headDim]), w.o, w.oBias);
}

/** Steps longer than this run each layer in a scope of its own (see layers.ts runLayer). */
const LAYER_SCOPE_TOKENS = 64;

export function runEncoderLayer(be: Backend, batch: EncoderBatch, layer: () => Tensor): Tensor {
  return batch.tokens.length > LAYER_SCOPE_TOKENS ? be.scope(layer) : layer();
}
