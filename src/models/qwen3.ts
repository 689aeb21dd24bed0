// Qwen3: the Llama layout with an explicit head_dim and a per-head RMSNorm on q and k before rope.
import type { Backend } from "../backend/backend.ts";
import type { ModelDir } from "../io/model_dir.ts";
import type { AttentionWeights } from "./layers.ts";
import { LlamaModel } from "./llama.ts";
import type { Model } from "./model.ts";

export class Qwen3Model extends LlamaModel {
  protected override attentionWeights(p: string): AttentionWeights {
    return {
      ...super.attentionWeights(p),
      qNorm: this.w.tensor(`${p}.q_norm.weight`),
      kNorm: this.w.tensor(`${p}.k_norm.weight`),
    };
  }
}

export function loadQwen3(backend: Backend, md: ModelDir): Model {
  return new Qwen3Model(backend, md);
}
