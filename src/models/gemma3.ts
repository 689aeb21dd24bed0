// Gemma 3 (text): RMSNorm as x * (1 + w) everywhere (q/k norms included), four norms per block (input,
// post-attention, pre- and post-feedforward), GeGLU with tanh GELU, embeddings times sqrt(hidden) rounded to
// bf16, scores scaled by query_pre_attn_scalar^-0.5, and sliding-window layers with their own rope base.
import type { Backend, Tensor, Weight } from "../backend/backend.ts";
import type { ModelConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { attention, embed, gatedMlp, runLayer, selectRows, type AttentionParams, type AttentionWeights, type MlpWeights } from "./layers.ts";
import type { ForwardStep, LayerCacheSpec, Model } from "./model.ts";
import { ropeSetup } from "./rope.ts";
import { ModelWeights, roundToBf16 } from "./weights.ts";

interface Gemma3Block {
  inputNorm: Tensor;
  postAttnNorm: Tensor;
  preFfnNorm: Tensor;
  postFfnNorm: Tensor;
  attn: AttentionWeights;
  attnParams: AttentionParams;
  mlp: MlpWeights;
}

export class Gemma3Model implements Model {
  readonly config: ModelConfig;
  readonly layers: LayerCacheSpec[];
  readonly vocabSize: number;
  private readonly eps: number;
  private readonly embedTable: Weight;
  private readonly embedScale: number;
  private readonly head: Weight;
  private readonly finalNorm: Tensor;
  private readonly blocks: Gemma3Block[] = [];

  constructor(
    readonly backend: Backend,
    md: ModelDir,
  ) {
    const c = md.config;
    const w = new ModelWeights(backend, md);
    this.config = c;
    this.eps = c.rmsNormEps;
    this.vocabSize = c.vocabSize;
    this.embedTable = w.linear("model.embed_tokens");
    this.embedScale = roundToBf16(Math.sqrt(c.hiddenSize));
    this.head = w.optLinear("lm_head") ?? this.embedTable;
    this.finalNorm = w.tensor("model.norm.weight");
    const globalRope = ropeSetup(c.rope, c.headDim, c.contextLength);
    const localRope = ropeSetup(c.localRope ?? { type: "default", theta: 10_000 }, c.headDim, c.contextLength);
    const scale = 1 / Math.sqrt(c.queryPreAttnScalar ?? c.headDim);
    for (let i = 0; i < c.numLayers; i++) {
      const p = `model.layers.${i}`;
      const sliding = (c.layerTypes?.[i] ?? "full_attention") === "sliding_attention";
      this.blocks.push({
        inputNorm: w.tensor(`${p}.input_layernorm.weight`),
        postAttnNorm: w.tensor(`${p}.post_attention_layernorm.weight`),
        preFfnNorm: w.tensor(`${p}.pre_feedforward_layernorm.weight`),
        postFfnNorm: w.tensor(`${p}.post_feedforward_layernorm.weight`),
        attn: {
          q: w.linear(`${p}.self_attn.q_proj`),
          k: w.linear(`${p}.self_attn.k_proj`),
          v: w.linear(`${p}.self_attn.v_proj`),
          o: w.linear(`${p}.self_attn.o_proj`),
          qNorm: w.tensor(`${p}.self_attn.q_norm.weight`),
          kNorm: w.tensor(`${p}.self_attn.k_norm.weight`),
        },
        attnParams: {
          heads: c.numHeads,
          kvHeads: c.numKvHeads,
          headDim: c.headDim,
          scale,
          window: sliding ? (c.slidingWindow ?? 512) : 0,
          rope: sliding ? localRope : globalRope,
          normEps: this.eps,
          normOnePlus: true,
          ...(c.attnLogitSoftcapping ? { softcap: c.attnLogitSoftcapping } : {}),
        },
        mlp: {
          gate: w.linear(`${p}.mlp.gate_proj`),
          up: w.linear(`${p}.mlp.up_proj`),
          down: w.linear(`${p}.mlp.down_proj`),
        },
      });
    }
    this.layers = this.blocks.map((b) => ({ kvHeads: b.attnParams.kvHeads, headDim: b.attnParams.headDim, window: b.attnParams.window }));
  }

  forward(step: ForwardStep): Tensor {
    const be = this.backend;
    const eps = this.eps;
    let h = be.scale(embed(be, this.embedTable, step.tokens), this.embedScale);
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i]!;
      const x = h;
      h = runLayer(be, step, () => {
        const a = attention(be, be.rmsNorm(x, b.inputNorm, eps, true), b.attn, b.attnParams, step, i);
        const y = be.add(x, be.rmsNorm(a, b.postAttnNorm, eps, true));
        const f = gatedMlp(be, be.rmsNorm(y, b.preFfnNorm, eps, true), b.mlp, "gelu_tanh");
        return be.add(y, be.rmsNorm(f, b.postFfnNorm, eps, true));
      });
    }
    h = selectRows(be, h, step.logitRows);
    let logits = be.linear(be.rmsNorm(h, this.finalNorm, eps, true), this.head);
    const cap = this.config.finalLogitSoftcapping;
    if (cap) logits = be.softcap(logits, cap);
    return logits;
  }
}

export function loadGemma3(backend: Backend, md: ModelDir): Model {
  return new Gemma3Model(backend, md);
}
