// Llama and its close relatives: pre-norm decoder blocks of GQA attention with rope and a SwiGLU MLP, attention
// and MLP biases where the checkpoint stores them (qwen2's q/k/v), tied or separate output head. Mistral is the
// same model with every layer sliding over sliding_window; Llama and Qwen2 never slide.
import type { Backend, Tensor } from "../backend/backend.ts";
import type { ModelConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { textModelSanitizer, type Family } from "./family.ts";
import {
  attention,
  embed,
  gatedMlp,
  gqaParams,
  mlpWeights,
  preNormWeights,
  runLayer,
  selectRows,
  stackEnds,
  stepTokens,
  type AttentionParams,
  type MlpWeights,
  type PreNormWeights,
  type StackEnds,
} from "./layers.ts";
import type { ForwardStep, LayerCacheSpec, Model } from "./model.ts";
import type { ModelWeights } from "./weights.ts";

interface Block extends PreNormWeights {
  mlp: MlpWeights;
}

class LlamaModel implements Model {
  readonly config: ModelConfig;
  readonly layers: LayerCacheSpec[];
  readonly vocabSize: number;
  private readonly eps: number;
  private readonly ends: StackEnds;
  private readonly attn: AttentionParams;
  private readonly blocks: Block[] = [];

  /** window: the sliding window of every layer, 0 for none. */
  constructor(
    readonly backend: Backend,
    md: ModelDir,
    w: ModelWeights,
    window: number,
  ) {
    const c = md.config;
    this.config = c;
    this.eps = c.rmsNormEps;
    this.ends = stackEnds(w);
    this.vocabSize = c.vocabSize;
    this.attn = gqaParams(c, window);
    for (let i = 0; i < c.numLayers; i++) {
      const p = `model.layers.${i}`;
      this.blocks.push({ ...preNormWeights(w, p, false), mlp: mlpWeights(w, `${p}.mlp`) });
    }
    this.layers = this.blocks.map(() => ({ kvHeads: c.numKvHeads, headDim: c.headDim, window }));
  }

  forward(step: ForwardStep): Tensor {
    const be = this.backend;
    let h = embed(be, this.ends.embed, stepTokens(step));
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i]!;
      const x = h;
      h = runLayer(be, step, () => {
        const y = be.add(x, attention(be, be.rmsNorm(x, b.inputNorm, this.eps), b.attn, this.attn, step, i));
        return be.add(y, gatedMlp(be, be.rmsNorm(y, b.postNorm, this.eps), b.mlp, "silu"));
      });
    }
    h = selectRows(be, h, step.logitRows);
    return be.linear(be.rmsNorm(h, this.ends.norm, this.eps), this.ends.head);
  }
}

export const llama: Family = {
  modelTypes: ["llama", "qwen2"],
  sanitize: textModelSanitizer,
  load: (backend, md, w) => new LlamaModel(backend, md, w, 0),
};

export const mistral: Family = {
  modelTypes: ["mistral"],
  sanitize: textModelSanitizer,
  load: (backend, md, w) => new LlamaModel(backend, md, w, md.config.slidingWindow ?? 0),
};
