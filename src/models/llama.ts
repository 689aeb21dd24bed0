// Llama and its close relatives (Mistral, Qwen2): pre-norm decoder blocks of GQA attention with rope and a
// SwiGLU MLP; optional attention biases; tied or separate output head. Qwen3 and Qwen3-MoE build on this class.
import type { Backend, Tensor, Weight } from "../backend/backend.ts";
import type { ModelConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { attention, embed, gatedMlp, runLayer, selectRows, type AttentionParams, type AttentionWeights, type MlpWeights } from "./layers.ts";
import type { ForwardStep, LayerCacheSpec, Model } from "./model.ts";
import { ropeSetup } from "./rope.ts";
import { ModelWeights } from "./weights.ts";

export interface LlamaBlock {
  inputNorm: Tensor;
  postNorm: Tensor;
  attn: AttentionWeights;
  attnParams: AttentionParams;
}

export class LlamaModel implements Model {
  readonly config: ModelConfig;
  readonly layers: LayerCacheSpec[];
  readonly vocabSize: number;
  protected readonly w: ModelWeights;
  protected readonly eps: number;
  protected readonly embedTable: Weight;
  protected readonly head: Weight;
  protected readonly finalNorm: Tensor;
  protected readonly blocks: LlamaBlock[] = [];
  private readonly mlps: (MlpWeights | null)[] = [];

  constructor(
    readonly backend: Backend,
    md: ModelDir,
  ) {
    const c = md.config;
    this.config = c;
    this.w = new ModelWeights(backend, md);
    this.eps = c.rmsNormEps;
    this.embedTable = this.w.linear("model.embed_tokens");
    this.vocabSize = c.vocabSize;
    // mlx-lm drops lm_head when the embeddings are tied; a checkpoint with both keeps its own head.
    this.head = this.w.optLinear("lm_head") ?? this.embedTable;
    this.finalNorm = this.w.tensor("model.norm.weight");
    const window = this.slidingWindow();
    const rope = ropeSetup(c.rope, c.headDim, c.contextLength);
    for (let i = 0; i < c.numLayers; i++) {
      const p = `model.layers.${i}`;
      this.blocks.push({
        inputNorm: this.w.tensor(`${p}.input_layernorm.weight`),
        postNorm: this.w.tensor(`${p}.post_attention_layernorm.weight`),
        attn: this.attentionWeights(`${p}.self_attn`),
        attnParams: {
          heads: c.numHeads,
          kvHeads: c.numKvHeads,
          headDim: c.headDim,
          scale: 1 / Math.sqrt(c.headDim),
          window,
          rope,
          normEps: this.eps,
          normOnePlus: false,
        },
      });
      this.mlps.push(this.isDenseLayer(i) ? this.mlpWeights(`${p}.mlp`) : null);
    }
    this.layers = this.blocks.map((b) => ({ kvHeads: b.attnParams.kvHeads, headDim: b.attnParams.headDim, window: b.attnParams.window }));
  }

  /** Mistral slides every layer over sliding_window; Llama and Qwen2 (use_sliding_window off) never do. */
  protected slidingWindow(): number {
    return this.config.modelType === "mistral" ? (this.config.slidingWindow ?? 0) : 0;
  }

  protected isDenseLayer(_i: number): boolean {
    return true;
  }

  protected attentionWeights(p: string): AttentionWeights {
    const w = this.w;
    const a: AttentionWeights = {
      q: w.linear(`${p}.q_proj`),
      k: w.linear(`${p}.k_proj`),
      v: w.linear(`${p}.v_proj`),
      o: w.linear(`${p}.o_proj`),
    };
    const biases = { qBias: "q_proj", kBias: "k_proj", vBias: "v_proj", oBias: "o_proj" } as const;
    for (const [k, mod] of Object.entries(biases)) {
      const b = w.optTensor(`${p}.${mod}.bias`);
      if (b) a[k as keyof typeof biases] = b;
    }
    return a;
  }

  protected mlpWeights(p: string): MlpWeights {
    const w = this.w;
    const m: MlpWeights = { gate: w.linear(`${p}.gate_proj`), up: w.linear(`${p}.up_proj`), down: w.linear(`${p}.down_proj`) };
    const gb = w.optTensor(`${p}.gate_proj.bias`);
    const ub = w.optTensor(`${p}.up_proj.bias`);
    const db = w.optTensor(`${p}.down_proj.bias`);
    if (gb) m.gateBias = gb;
    if (ub) m.upBias = ub;
    if (db) m.downBias = db;
    return m;
  }

  /** The feed-forward part of layer i (dense here; Qwen3-MoE overrides it for its sparse layers). */
  protected mlp(i: number, x: Tensor): Tensor {
    return gatedMlp(this.backend, x, this.mlps[i]!, "silu");
  }

  forward(step: ForwardStep): Tensor {
    const be = this.backend;
    let h = embed(be, this.embedTable, step.tokens);
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i]!;
      const x = h;
      h = runLayer(be, step, () => {
        const y = be.add(x, attention(be, be.rmsNorm(x, b.inputNorm, this.eps), b.attn, b.attnParams, step, i));
        return be.add(y, this.mlp(i, be.rmsNorm(y, b.postNorm, this.eps)));
      });
    }
    h = selectRows(be, h, step.logitRows);
    return be.linear(be.rmsNorm(h, this.finalNorm, this.eps), this.head);
  }
}

export function loadLlama(backend: Backend, md: ModelDir): Model {
  return new LlamaModel(backend, md);
}
