// mlx-lm's sanitize step per model family, as renames, drops and small value fixes of source tensors. Families
// whose sanitize does more than this are refused rather than written with the wrong weights.
import { RmlxError } from "../errors.ts";

export interface Sanitizer {
  /** The mlx-lm name of a source tensor, or null when sanitize drops it. */
  rename(name: string): string | null;
  /** Whether a 1-D tensor is a zero-centred norm weight that mlx-lm shifts by +1. */
  addOne(name: string, shape: readonly number[]): boolean;
  /** The shape mlx-lm gives a tensor (conv1d weights move their kernel axis last). */
  reshape(name: string, shape: readonly number[]): number[];
}

const FAMILIES = [
  "llama",
  "mistral",
  "qwen2",
  "qwen2_moe",
  "qwen3",
  "qwen3_moe",
  "qwen3_next",
  "gemma3",
  "gemma3_text",
] as const;

export const CONVERTIBLE_MODEL_TYPES: readonly string[] = FAMILIES;

const QWEN3_NEXT_NORMS = [".input_layernorm.weight", ".post_attention_layernorm.weight", "model.norm.weight", ".q_norm.weight", ".k_norm.weight"];

export function sanitizerFor(modelType: string, tied: boolean, names: readonly string[]): Sanitizer {
  if (!(FAMILIES as readonly string[]).includes(modelType))
    throw new RmlxError(
      "unsupported",
      `model_type '${modelType || "(missing)"}' cannot be converted yet (supported: ${FAMILIES.join(", ")})`,
    );
  const common = (name: string): string | null => {
    if (name.includes("rotary_emb.inv_freq")) return null;
    if (/(^|\.)(vision_tower|multi_modal_projector|visual)\./.test(name)) return null;
    if (tied && (name === "lm_head.weight" || name === "language_model.lm_head.weight")) return null;
    return name;
  };
  if (modelType === "gemma3") {
    // the multimodal wrapper: mlx-lm keeps the text model under language_model.*
    return {
      rename(name) {
        const n = common(name);
        if (n === null) return null;
        if (n.startsWith("model.language_model.")) return `language_model.model.${n.slice("model.language_model.".length)}`;
        if (n.startsWith("lm_head.")) return `language_model.${n}`;
        return n;
      },
      addOne: () => false,
      reshape: (_, s) => [...s],
    };
  }
  if (modelType === "qwen3_next") {
    // mlx-lm fixes norms and conv1d only on a checkpoint still in transformers' layout (experts one by one)
    const hfLayout = names.includes("model.layers.0.mlp.experts.0.up_proj.weight");
    return {
      rename(name) {
        if (name.startsWith("mtp.") || name.includes(".mtp.")) return null;
        return common(name);
      },
      addOne: (name, shape) => hfLayout && shape.length === 1 && QWEN3_NEXT_NORMS.some((k) => name.endsWith(k)),
      reshape(name, s) {
        if (!(hfLayout && name.includes("conv1d.weight") && s.length === 3 && s[2] !== 1)) return [...s];
        // [C, 1, K] -> [C, K, 1] moves no data; a conv with several input channels per group would
        if (s[1] !== 1) throw new RmlxError("unsupported", `${name}: conv1d weight ${JSON.stringify(s)} is not depthwise`);
        return [s[0]!, s[2]!, s[1]!];
      },
    };
  }
  return { rename: common, addOne: () => false, reshape: (_, s) => [...s] };
}
