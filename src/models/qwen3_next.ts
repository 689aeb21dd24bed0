// Qwen3-Next: a hybrid of Gated DeltaNet (linear attention) and gated full-attention layers, every fourth one full,
// with a mixture of experts beside a gated shared expert and a multi-token-prediction head. Convert writes its
// checkpoints in mlx-lm's layout; the forward pass is qwen3_5.ts's, with the fused projections.
import type { Family } from "./family.ts";
import { hybridSanitize, loadHybrid } from "./qwen3_5.ts";

const DEFAULTS = { full_attention_interval: 4, partial_rotary_factor: 0.25 };

export const qwen3Next: Family = {
  modelTypes: ["qwen3_next"],
  configDefaults: DEFAULTS,
  sanitize: hybridSanitize,
  load: (backend, md, w) => loadHybrid(backend, md, w, true, true),
  // the router and the shared expert's gate stay at 8 bits, as mlx-lm's quant_predicate has it
  quantOverride: (path) => (path.endsWith("mlp.gate") || path.endsWith("shared_expert_gate") ? { bits: 8, groupSize: 64 } : null),
};
