// Qwen3.5 (dense and MoE): Qwen3-Next's hybrid of Gated DeltaNet and gated full-attention layers, the multimodal
// checkpoint nesting the text model under text_config. Known from its config so that `rmlx info` describes its
// checkpoints; neither the forward pass nor convert's sanitize is written yet.
import type { Family } from "./family.ts";

export const qwen3_5: Family = {
  modelTypes: ["qwen3_5_text", "qwen3_5", "qwen3_5_moe_text", "qwen3_5_moe"],
  // every fourth layer is full attention, the others linear
  configDefaults: { full_attention_interval: 4 },
};
