// Qwen3: the Llama layout with an explicit head_dim and a per-head RMSNorm on q and k before rope; pre-norm
// decoder blocks of GQA attention and a SwiGLU MLP, tied or separate output head.
import type { Backend, Tensor, Weight } from "../backend/backend.ts";
import type { ModelConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { encoderAttention, runEncoderLayer, type Encoder, type EncoderBatch } from "./encoder.ts";
import { bareTextModelSanitizer, type Family } from "./family.ts";
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

/** The decoder stack's weights: q/k-normed attention and a SwiGLU MLP per layer (the model and the encoder alike). */
function qwen3Blocks(w: ModelWeights, numLayers: number): Block[] {
  return Array.from({ length: numLayers }, (_, i) => {
    const p = `model.layers.${i}`;
    return { ...preNormWeights(w, p, true), mlp: mlpWeights(w, `${p}.mlp`) };
  });
}

class Qwen3Model implements Model {
  readonly config: ModelConfig;
  readonly layers: LayerCacheSpec[];
  readonly vocabSize: number;
  private readonly eps: number;
  private readonly ends: StackEnds;
  private readonly attn: AttentionParams;
  private readonly blocks: Block[];

  constructor(
    readonly backend: Backend,
    md: ModelDir,
    w: ModelWeights,
  ) {
    const c = md.config;
    this.config = c;
    this.eps = c.rmsNormEps;
    this.ends = stackEnds(w);
    this.vocabSize = c.vocabSize;
    this.attn = gqaParams(c, 0);
    this.blocks = qwen3Blocks(w, c.numLayers);
    this.layers = this.blocks.map(() => ({ kvHeads: c.numKvHeads, headDim: c.headDim, window: 0 }));
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

/** Qwen3 as the encoder of Qwen3-Embedding: the same causal stack, its final norm, and no head. */
class Qwen3Encoder implements Encoder {
  readonly config: ModelConfig;
  readonly hiddenSize: number;
  readonly maxTokens: number;
  private readonly eps: number;
  private readonly embed: Weight;
  private readonly norm: Tensor;
  private readonly attn: AttentionParams;
  private readonly blocks: Block[];

  constructor(
    readonly backend: Backend,
    md: ModelDir,
    w: ModelWeights,
  ) {
    const c = md.config;
    this.config = c;
    this.hiddenSize = c.hiddenSize;
    this.maxTokens = c.contextLength;
    this.eps = c.rmsNormEps;
    this.embed = w.linear("model.embed_tokens");
    this.norm = w.tensor("model.norm.weight");
    this.attn = gqaParams(c, 0);
    this.blocks = qwen3Blocks(w, c.numLayers);
  }

  encode(batch: EncoderBatch): Tensor {
    const be = this.backend;
    let h = embed(be, this.embed, batch.tokens);
    for (const b of this.blocks) {
      const x = h;
      h = runEncoderLayer(be, batch, () => {
        const y = be.add(x, encoderAttention(be, be.rmsNorm(x, b.inputNorm, this.eps), b.attn, this.attn, batch, true, 0));
        return be.add(y, gatedMlp(be, be.rmsNorm(y, b.postNorm, this.eps), b.mlp, "silu"));
      });
    }
    return be.rmsNorm(h, this.norm, this.eps);
  }
}

export const qwen3: Family = {
  modelTypes: ["qwen3"],
  sanitize: bareTextModelSanitizer,
  load: (backend, md, w) => new Qwen3Model(backend, md, w),
  loadEncoder: (backend, md, w) => new Qwen3Encoder(backend, md, w),
};
