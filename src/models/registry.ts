// The one list of model types: each family's entry (exported by its file) says which model_types it reads, what
// their configs leave out, how its checkpoint names map to mlx-lm's, and how it runs. A multimodal wrapper's text
// model (gemma3 with text_config) loads by the text config's model_type.
import type { Backend } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import { ConfigReader, setConfigFamilies } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { bert } from "./bert.ts";
import { bitnet } from "./bitnet.ts";
import { backendForModel } from "./compute_dtype.ts";
import type { Encoder } from "./encoder.ts";
import type { Family, ModelOptions, Sanitizer } from "./family.ts";
import { gemma3 } from "./gemma3.ts";
import { gemma4 } from "./gemma4.ts";
import { llama, mistral } from "./llama.ts";
import type { Model } from "./model.ts";
import { qwen2Moe } from "./qwen2_moe.ts";
import { qwen3 } from "./qwen3.ts";
import { qwen3_5 } from "./qwen3_5.ts";
import { qwen3Moe } from "./qwen3_moe.ts";
import { qwen3Next } from "./qwen3_next.ts";
import { ModelWeights } from "./weights.ts";

const FAMILIES: readonly Family[] = [
  llama,
  mistral,
  qwen2Moe,
  qwen3,
  qwen3Moe,
  qwen3Next,
  qwen3_5,
  gemma3,
  gemma4,
  bitnet,
  bert,
];

const BY_TYPE = new Map(FAMILIES.flatMap((f) => f.modelTypes.map((t) => [t, f] as const)));

export function familyFor(modelType: string): Family | undefined {
  return BY_TYPE.get(modelType);
}

// config.json parsing sits below this module and asks it which model_types exist and what their configs leave out.
setConfigFamilies((modelType) => {
  const f = familyFor(modelType);
  return f && { defaults: f.configDefaults ?? {}, adjust: f.adjustConfig, kvLayout: f.kvLayout };
});

export const SUPPORTED_MODEL_TYPES: readonly string[] = FAMILIES.flatMap((f) => (f.load ? f.modelTypes : []));

export const ENCODER_MODEL_TYPES: readonly string[] = FAMILIES.flatMap((f) => (f.loadEncoder ? f.modelTypes : []));

export const CONVERTIBLE_MODEL_TYPES: readonly string[] = FAMILIES.flatMap((f) => (f.sanitize ? f.modelTypes : []));

/**
 * The family's sanitizer for a checkpoint, from its text config (config.ts's textConfigOf) and stored names: the
 * one mapping behind both loading and converting. Null while the family has none.
 */
export function checkpointSanitizer(
  family: Family,
  textConfig: Record<string, unknown>,
  names: readonly string[],
  source: string,
): Sanitizer | null {
  if (!family.sanitize) return null;
  const config = new ConfigReader(textConfig, family.configDefaults ?? {}, source);
  const tied = config.optBool("tie_word_embeddings") ?? false;
  return family.sanitize({ tied, names, config });
}

/** The model_type that decides the architecture: text_config's when the config nests one. */
export function textModelType(md: ModelDir): string {
  const t = md.config.raw.model_type;
  return typeof t === "string" ? t : md.config.modelType;
}

export function loadModel(backend: Backend, md: ModelDir, opts: ModelOptions = {}): Model {
  const type = textModelType(md);
  const family = familyFor(type);
  const sanitizer = family?.load && checkpointSanitizer(family, md.config.raw, md.weights.names(), `${md.dir}/config.json`);
  if (!family?.load || !sanitizer) {
    throw new RmlxError(
      "unsupported",
      `${md.dir}: architecture '${type}' is not supported by this build (supported: ${SUPPORTED_MODEL_TYPES.join(", ")})`,
    );
  }
  const be = backendForModel(backend, md);
  return family.load(be, md, new ModelWeights(be, md, sanitizer), opts);
}

/** The model's stack as the encoder of an embedding model. */
export function loadEncoder(backend: Backend, md: ModelDir): Encoder {
  const type = textModelType(md);
  const family = familyFor(type);
  const sanitizer = family?.loadEncoder && checkpointSanitizer(family, md.config.raw, md.weights.names(), `${md.dir}/config.json`);
  if (!family?.loadEncoder || !sanitizer) {
    throw new RmlxError(
      "unsupported",
      `${md.dir}: architecture '${type}' is not supported as an embedding model by this build (supported: ${ENCODER_MODEL_TYPES.join(", ")})`,
    );
  }
  const be = backendForModel(backend, md);
  return family.loadEncoder(be, md, new ModelWeights(be, md, sanitizer));
}
