// Qwen3-Next: a hybrid of Gated DeltaNet (linear attention) and gated full-attention layers, every fourth one full,
// with a mixture of experts beside a gated shared expert and a multi-token-prediction head. Convert writes its
// checkpoints in mlx-lm's layout; the forward pass is not written yet.
import { RmlxError } from "../errors.ts";
import { stackedExpert, textModelName, type Family, type SanitizeContext, type Sanitizer } from "./family.ts";

const DEFAULTS = { full_attention_interval: 4, partial_rotary_factor: 0.25 };

/** The norms transformers stores zero-centred (x * (1 + w)) and mlx-lm stores shifted by one. */
const SHIFTED_NORMS = [
  ".input_layernorm.weight",
  ".post_attention_layernorm.weight",
  "model.norm.weight",
  ".q_norm.weight",
  ".k_norm.weight",
];

/**
 * mlx-lm's qwen3_next sanitize: the MTP head dropped, experts stacked; the norms shifted and conv1d weights
 * reordered only on a checkpoint still in transformers' layout (experts one by one).
 */
function sanitize({ tied, names }: SanitizeContext): Sanitizer {
  const hfLayout = names.includes("model.layers.0.mlp.experts.0.up_proj.weight");
  return {
    rename(name) {
      if (name.startsWith("mtp.") || name.includes(".mtp.")) return null;
      const n = textModelName(name, tied);
      return n === null ? null : stackedExpert(n);
    },
    addOne: (name, shape) => hfLayout && shape.length === 1 && SHIFTED_NORMS.some((k) => name.endsWith(k)),
    reshape(name, s) {
      if (!(hfLayout && name.includes("conv1d.weight") && s.length === 3 && s[2] !== 1)) return [...s];
      // [C, 1, K] -> [C, K, 1] moves no data; a conv with several input channels per group would
      if (s[1] !== 1) throw new RmlxError("unsupported", `${name}: conv1d weight ${JSON.stringify(s)} is not depthwise`);
      return [s[0]!, s[2]!, s[1]!];
    },
  };
}

export const qwen3Next: Family = {
  modelTypes: ["qwen3_next"],
  configDefaults: DEFAULTS,
  sanitize,
  // the router and the shared expert's gate stay at 8 bits, as mlx-lm's quant_predicate has it
  quantOverride: (path) => (path.endsWith("mlp.gate") || path.endsWith("shared_expert_gate") ? { bits: 8, groupSize: 64 } : null),
};
