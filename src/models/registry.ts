// model_type -> loader. A multimodal wrapper's text model (gemma3 with text_config) loads by the text
// config's model_type.
import type { Backend } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { loadGemma3 } from "./gemma3.ts";
import { loadLlama } from "./llama.ts";
import type { Model } from "./model.ts";
import { loadQwen3 } from "./qwen3.ts";
import { loadQwen3Moe } from "./qwen3_moe.ts";

type Loader = (backend: Backend, md: ModelDir) => Model;

const LOADERS: Record<string, Loader> = {
  llama: loadLlama,
  mistral: loadLlama,
  qwen2: loadLlama,
  qwen3: loadQwen3,
  qwen3_moe: loadQwen3Moe,
  gemma3: loadGemma3,
  gemma3_text: loadGemma3,
};

export const SUPPORTED_MODEL_TYPES: readonly string[] = Object.keys(LOADERS);

/** The model_type that decides the architecture: text_config's when the config nests one. */
export function textModelType(md: ModelDir): string {
  const t = md.config.raw.model_type;
  return typeof t === "string" ? t : md.config.modelType;
}

export function loadModel(backend: Backend, md: ModelDir): Model {
  const type = textModelType(md);
  const loader = Object.hasOwn(LOADERS, type) ? LOADERS[type] : undefined;
  if (!loader) {
    throw new RmlxError(
      "unsupported",
      `${md.dir}: architecture '${type}' is not supported by this build (supported: ${SUPPORTED_MODEL_TYPES.join(", ")})`,
    );
  }
  return loader(backend, md);
}
