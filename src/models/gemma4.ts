// Gemma 4 (text): known from its config so that `rmlx info` describes its checkpoints; the forward pass (per-layer
// inputs, KV shared across the last layers, proportional rope on the global layers) is not written yet.
import type { Family } from "./family.ts";

/** Values its published configs leave out and the reference implementations assume. */
const DEFAULTS = {
  num_attention_heads: 8,
  num_key_value_heads: 1,
  head_dim: 256,
  rms_norm_eps: 1e-6,
  vocab_size: 262144,
  sliding_window: 512,
  sliding_window_pattern: 5,
  max_position_embeddings: 131072,
  final_logit_softcapping: 30,
  tie_word_embeddings: true,
  rope_parameters: {
    full_attention: { rope_type: "proportional", rope_theta: 1_000_000, partial_rotary_factor: 1 },
    sliding_attention: { rope_type: "default", rope_theta: 10_000 },
  },
};

export const gemma4: Family = {
  modelTypes: ["gemma4_text", "gemma4"],
  configDefaults: DEFAULTS,
};
