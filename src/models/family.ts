// What a registry entry says about a model family, and the sanitize steps families share. A family file exports
// its entry; src/models/registry.ts lists the entries.
import type { Backend } from "../backend/backend.ts";
import type { ConfigReader, FamilyConfigRules } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import type { Encoder } from "./encoder.ts";
import type { Model } from "./model.ts";
import type { ModelWeights } from "./weights.ts";

/** What sanitize makes of one stored tensor: its mlx-lm name, and for one expert of a stack, its index there. */
export interface Renamed {
  name: string;
  /** The tensor is expert `expert` of the [E, ...] tensor `name` (transformers stores experts one by one). */
  expert?: number;
}

/**
 * mlx-lm's sanitize as renames, drops and small value fixes of stored tensors, written once per family and used
 * both to load a checkpoint and to convert it. Names are the text model's (model.*, lm_head.*).
 */
export interface Sanitizer {
  /** The mlx-lm name of a stored tensor, or null when sanitize drops it. */
  rename(name: string): Renamed | null;
  /**
   * Whether a 1-D tensor (by its mlx-lm name) is a zero-centred norm weight that mlx-lm shifts by +1. Loading
   * maps weights without changing them, so only convert applies this and the next fix.
   */
  addOne?(name: string, shape: readonly number[]): boolean;
  /** The shape mlx-lm gives a tensor (conv1d weights move their kernel axis last). */
  reshape?(name: string, shape: readonly number[]): number[];
  /**
   * A tensor (by its mlx-lm name) that convert writes as several, each a range of rows along one axis: a fused
   * [E, 2I, H] gate_up stack becomes mlx-lm's gate and up stacks. Loading reads the fused tensor as it is.
   */
  split?(name: string, shape: readonly number[]): SplitPart[] | null;
}

/** Part of a split tensor: rows [start, end) of `axis` (an axis before the last), under a name of its own. */
export interface SplitPart {
  name: string;
  axis: number;
  start: number;
  end: number;
}

export interface SanitizeContext {
  /** tie_word_embeddings: the output head is the embedding table, and a stored head is dropped. */
  tied: boolean;
  /** Every stored tensor name (some fixes apply only to one checkpoint layout). */
  names: readonly string[];
  /** The text model's config.json (text_config's keys over the top level's), with the family's defaults. */
  config: ConfigReader;
}

/** BitNet's ternary linears: int8 activations per token as transformers computes them, or float ones as mlx-lm does. */
export type BitnetActivations = "int8" | "float";
export const BITNET_ACTIVATIONS: readonly BitnetActivations[] = ["int8", "float"];

/** Choices of how to run a checkpoint that its files leave open (command-line and server settings). */
export interface ModelOptions {
  /** Default int8, so that tokens match transformers. */
  bitnetActivations?: BitnetActivations;
}

export interface Family {
  /** The model_type values of its checkpoints: the text model's, and a multimodal wrapper's. */
  readonly modelTypes: readonly string[];
  /** config.json values its published configs leave out and the reference implementations assume. */
  readonly configDefaults?: Readonly<Record<string, unknown>>;
  /** Its checkpoints' names mapped to mlx-lm's, for load and convert alike; absent while neither is written. */
  readonly sanitize?: (ctx: SanitizeContext) => Sanitizer;
  /** The prefix mlx-lm stores a multimodal model_type's text weights under (gemma3: "language_model."). */
  readonly nested?: Readonly<Record<string, string>>;
  /** mlx-lm's quant_predicate: modules quantized differently from the global choice (routers at 8 bits). */
  readonly quantOverride?: (path: string) => { bits: number; groupSize: number } | null;
  /** Checks and fixes of the parsed config (see FamilyConfigRules), and per-layer KV geometry for `rmlx info`. */
  readonly adjustConfig?: FamilyConfigRules["adjust"];
  readonly kvLayout?: FamilyConfigRules["kvLayout"];
  /** The forward pass over weights named by sanitize; absent while the family is known but not implemented. */
  readonly load?: (backend: Backend, md: ModelDir, w: ModelWeights, opts: ModelOptions) => Model;
  /** The stack as an encoder of embedding models (sentence-transformers checkpoints); absent where none runs. */
  readonly loadEncoder?: (backend: Backend, md: ModelDir, w: ModelWeights) => Encoder;
}

const VISION = /(^|\.)(vision_tower|multi_modal_projector|visual)\./;

/**
 * The first step of every family's sanitize: the text model's weights under the names of the text-only checkpoint.
 * Drops precomputed rotary frequencies, the vision tower of a multimodal checkpoint, and the stored head when the
 * embeddings are tied; lifts the text model out of the multimodal wrappers' prefixes (transformers'
 * model.language_model.*, mlx-vlm's language_model.model.* and language_model.lm_head.*).
 */
export function textModelName(name: string, tied: boolean): string | null {
  if (name.includes("rotary_emb.inv_freq") || VISION.test(name)) return null;
  let n = name;
  if (n.startsWith("model.language_model.")) n = `model.${n.slice("model.language_model.".length)}`;
  else if (n.startsWith("language_model.")) n = n.slice("language_model.".length);
  if (tied && n.startsWith("lm_head.")) return null;
  return n;
}

const EXPERT = /^(.*\.mlp)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(weight|scales|biases)$/;

/** mlx-lm's expert stacking: mlp.experts.{e}.{proj}.* of transformers becomes expert e of mlp.switch_mlp.{proj}.*. */
export function stackedExpert(name: string): Renamed {
  const m = EXPERT.exec(name);
  return m ? { name: `${m[1]}.switch_mlp.${m[3]}.${m[4]}`, expert: Number(m[2]) } : { name };
}

/** The sanitize of a family whose checkpoints need no more than textModelName (mlx-lm's llama, qwen3, gemma3_text). */
export function textModelSanitizer({ tied }: SanitizeContext): Sanitizer {
  return {
    rename(name) {
      const n = textModelName(name, tied);
      return n === null ? null : { name: n };
    },
  };
}

/** Names of a bare text model (embed_tokens.*, layers.*, norm.*, as sentence-transformers saves Qwen3Model) under model.*. */
const BARE = /^(embed_tokens|layers|norm)\./;

/** textModelSanitizer that also reads a bare text model's checkpoint (Qwen3-Embedding, EmbeddingGemma). */
export function bareTextModelSanitizer(ctx: SanitizeContext): Sanitizer {
  return {
    rename(name) {
      const n = textModelName(BARE.test(name) ? `model.${name}` : name, ctx.tied);
      return n === null ? null : { name: n };
    },
  };
}
