// The model contract: a model is a pure forward pass over a paged KV cache that someone else owns.
// The engine builds a ForwardStep for any set of sequences (prefill chunks and decode tokens mixed) and gets
// logits for the rows it asks for; the model never allocates cache blocks or knows about requests.
import type { AttentionBatch, Backend, KvPool, RecurrentBatch, StatePool, StateSpec, Tensor } from "../backend/backend.ts";
import type { ModelConfig } from "../io/config.ts";

/** What the cache must hold for one layer. */
export interface LayerCacheSpec {
  kvHeads: number;
  headDim: number;
  /** Sliding window in tokens; 0 = full attention. */
  window: number;
  /**
   * The earlier layer whose K/V this layer reads instead of keeping its own (Gemma 4's KV-shared layers): same
   * sizes and window as that layer. The cache allocates it no pool (pools[i] is the source's), and the model
   * writes nothing for it.
   */
  kvSource?: number;
  /**
   * A linear-attention layer: no K/V (kvHeads and headDim 0) but a recurrent state per sequence, kept in a slot of
   * the cache's state pool for this layer.
   */
  state?: StateSpec;
}

/**
 * A step as the layers of one block space (the pools that share block ids) see it: where each token's K/V is
 * written and which blocks each sequence reads.
 */
export interface SpaceView {
  /** Block tables, lengths after this step's writes, token -> sequence, positions. */
  batch: AttentionBatch;
  /** Cache slot (block * blockSize + offset) each token's K/V is written to [T]; the same for every layer of the space. */
  slots: Int32Array;
}

/** The main space's view is the step's own: every layer reads and writes through it unless `windowed` says otherwise. */
export interface ForwardStep extends SpaceView {
  /** Token ids of the step, all sequences concatenated [T]. */
  tokens: Int32Array;
  /**
   * The same ids as a tensor i32 [T] still being computed on the device (the tokens the step before picked there,
   * when decode steps are pipelined); when present it is the step's input and `tokens` holds placeholders.
   */
  tokenIds?: Tensor;
  /** One pool per layer, in layer order. */
  pools: readonly KvPool[];
  /** Token rows (indices into [0, T)) whose logits are wanted, in output order. */
  logitRows: Int32Array;
  /**
   * When present, every layer whose LayerCacheSpec has a window > 0 has its pool in the cache's sliding-window
   * space and reads and writes through this view instead (same tokens, positions and lengths).
   */
  windowed?: SpaceView;
  /** Linear-attention layers: each sequence's state slot and token range (present when any layer has a state). */
  recurrent?: RecurrentBatch;
  /** One entry per layer: the state pool of a linear-attention layer, null for the others. */
  states?: readonly (StatePool | null)[];
}

export interface Model {
  readonly config: ModelConfig;
  readonly backend: Backend;
  /** One entry per layer. */
  readonly layers: readonly LayerCacheSpec[];
  readonly vocabSize: number;
  /** Records the forward pass; returns f32 logits [logitRows.length, vocabSize] (lazy, not yet evaluated). */
  forward(step: ForwardStep): Tensor;
  /**
   * The same forward, also returning the hidden states after the final norm of `hiddenRows` [rows, hiddenSize]:
   * what a multi-token-prediction head reads. Only models that can have such a head implement it.
   */
  forwardHidden?(step: ForwardStep, hiddenRows: Int32Array): { logits: Tensor; hidden: Tensor };
  /**
   * The model's multi-token-prediction head (Qwen3.5 / Qwen3-Next `mtp.*`), loaded on first call; RmlxError
   * ("invalid_argument") when the checkpoint has none or only part of one. Absent for families without such heads.
   */
  mtpHead?(): MtpHead;
}

/**
 * A multi-token-prediction head: from the trunk's post-norm hidden state at position t and the token at t + 1,
 * one decoder layer over a KV cache of its own predicts the token at t + 2 through the trunk's output head.
 */
export interface MtpHead {
  /** Its cache's layers (one full-attention layer). */
  readonly layers: readonly LayerCacheSpec[];
  readonly hiddenSize: number;
  /** Bytes of its weights and of the output head it shares, against the whole model's. */
  readonly weightBytes: number;
  /**
   * step.tokens are the tokens at t + 1, hidden [T, hiddenSize] the post-norm hidden states at t, positions the
   * RoPE positions (those of the tokens at t + 1). Returns f32 logits [logitRows, vocab] and the head's own
   * post-norm hidden states of those rows (the hidden input of a next, chained proposal).
   */
  forward(step: ForwardStep, hidden: Tensor, positions: Int32Array): { logits: Tensor; hidden: Tensor };
}
