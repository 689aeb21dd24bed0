// The model contract: a model is a pure forward pass over a paged KV cache that someone else owns.
// The engine builds a ForwardStep for any set of sequences (prefill chunks and decode tokens mixed) and gets
// logits for the rows it asks for; the model never allocates cache blocks or knows about requests.
import type { AttentionBatch, Backend, KvPool, Tensor } from "../backend/backend.ts";
import type { ModelConfig } from "../io/config.ts";

/** What the cache must hold for one layer. */
export interface LayerCacheSpec {
  kvHeads: number;
  headDim: number;
  /** Sliding window in tokens; 0 = full attention. */
  window: number;
}

export interface ForwardStep {
  /** Token ids of the step, all sequences concatenated [T]. */
  tokens: Int32Array;
  /** Block tables, lengths after this step's writes, token -> sequence, positions. */
  batch: AttentionBatch;
  /** One pool per layer, in layer order. */
  pools: readonly KvPool[];
  /** Cache slot (block * blockSize + offset) each token's K/V is written to [T]; the same for every layer. */
  slots: Int32Array;
  /** Token rows (indices into [0, T)) whose logits are wanted, in output order. */
  logitRows: Int32Array;
  /**
   * When present, every layer whose LayerCacheSpec has a window > 0 has its pool among the cache's window pools
   * and reads and writes through these block tables and slots instead (same tokens, positions and lengths).
   */
  windowed?: { batch: AttentionBatch; slots: Int32Array };
}

export interface Model {
  readonly config: ModelConfig;
  readonly backend: Backend;
  /** One entry per layer. */
  readonly layers: readonly LayerCacheSpec[];
  readonly vocabSize: number;
  /** Records the forward pass; returns f32 logits [logitRows.length, vocabSize] (lazy, not yet evaluated). */
  forward(step: ForwardStep): Tensor;
}
