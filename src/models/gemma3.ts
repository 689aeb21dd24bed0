// Gemma 3 (text): RMSNorm as x * (1 + w) everywhere (q/k norms included), four norms per block (input,
// post-attention, pre- and post-feedforward), GeGLU with tanh GELU, embeddings times sqrt(hidden) rounded to
// bf16, scores scaled by query_pre_attn_scalar^-0.5, and sliding-window layers with their own rope base. The
// multimodal checkpoint (model_type gemma3) nests this text model under text_config and language_model.*.
import { isQuantized, type Backend, type Tensor } from "../backend/backend.ts";
import { ConfigReader, type ModelConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { encoderAttention, runEncoderLayer, type Encoder, type EncoderBatch } from "./encoder.ts";
import { bareTextModelSanitizer, type Family } from "./family.ts";
import {
  attention,
  attentionWeights,
  embed,
  gatedMlp,
  mlpWeights,
  qkNorms,
  runLayer,
  selectRows,
  stackEnds,
  stepTokens,
  type AttentionParams,
  type AttentionWeights,
  type MlpWeights,
  type StackEnds,
} from "./layers.ts";
import type { ForwardStep, LayerCacheSpec, Model } from "./model.ts";
import { ropeSetup } from "./rope.ts";
import { roundToBf16, type ModelWeights } from "./weights.ts";

/** What its published configs leave out (gemma-3-4b-it's text_config states six keys) and the references assume. */
const DEFAULTS = {
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 256,
  rms_norm_eps: 1e-6,
  vocab_size: 262208,
  rope_theta: 1_000_000,
  rope_local_base_freq: 10_000,
  query_pre_attn_scalar: 256,
  sliding_window: 512,
  sliding_window_pattern: 6,
  max_position_embeddings: 131072,
  tie_word_embeddings: true,
} as const;

export interface Gemma3Args {
  queryPreAttnScalar: number;
  slidingWindow: number;
  attnLogitSoftcapping?: number;
  finalLogitSoftcapping?: number;
}

export function gemma3Args(c: ModelConfig, source: string): Gemma3Args {
  const r = new ConfigReader(c.raw, DEFAULTS, source);
  const args: Gemma3Args = {
    queryPreAttnScalar: r.optNum("query_pre_attn_scalar") ?? c.headDim,
    // config.ts leaves slidingWindow unset for sliding_window: null; the sliding layers still need one
    slidingWindow: c.slidingWindow ?? DEFAULTS.sliding_window,
  };
  const attnCap = r.optNum("attn_logit_softcapping");
  const finalCap = r.optNum("final_logit_softcapping");
  if (attnCap !== undefined) args.attnLogitSoftcapping = attnCap;
  if (finalCap !== undefined) args.finalLogitSoftcapping = finalCap;
  return args;
}

interface Block {
  inputNorm: Tensor;
  postAttnNorm: Tensor;
  preFfnNorm: Tensor;
  postFfnNorm: Tensor;
  attn: AttentionWeights;
  attnParams: AttentionParams;
  mlp: MlpWeights;
}

/** The blocks of a Gemma 3 text stack, as both the causal model and the encoder read them. */
function gemma3Blocks(w: ModelWeights, c: ModelConfig, args: Gemma3Args, eps: number): Block[] {
  const globalRope = ropeSetup(c.rope, c.headDim, c.contextLength);
  const localRopeConfig = c.localRope ?? { type: "default", theta: DEFAULTS.rope_local_base_freq };
  const localRope = ropeSetup(localRopeConfig, c.headDim, c.contextLength);
  const scale = 1 / Math.sqrt(args.queryPreAttnScalar);
  const blocks: Block[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    const sliding = (c.layerTypes?.[i] ?? "full_attention") === "sliding_attention";
    blocks.push({
      inputNorm: w.tensor(`${p}.input_layernorm.weight`),
      postAttnNorm: w.tensor(`${p}.post_attention_layernorm.weight`),
      preFfnNorm: w.tensor(`${p}.pre_feedforward_layernorm.weight`),
      postFfnNorm: w.tensor(`${p}.post_feedforward_layernorm.weight`),
      attn: { ...attentionWeights(w, `${p}.self_attn`), ...qkNorms(w, `${p}.self_attn`) },
      attnParams: {
        heads: c.numHeads,
        kvHeads: c.numKvHeads,
        headDim: c.headDim,
        scale,
        window: sliding ? args.slidingWindow : 0,
        rope: sliding ? localRope : globalRope,
        normEps: eps,
        normOnePlus: true,
        ...(args.attnLogitSoftcapping ? { softcap: args.attnLogitSoftcapping } : {}),
      },
      mlp: mlpWeights(w, `${p}.mlp`),
    });
  }
  return blocks;
}

class Gemma3Model implements Model {
  readonly config: ModelConfig;
  readonly layers: LayerCacheSpec[];
  readonly vocabSize: number;
  private readonly eps: number;
  private readonly ends: StackEnds;
  private readonly embedScale: number;
  private readonly finalSoftcap: number | undefined;
  private readonly blocks: Block[];

  constructor(
    readonly backend: Backend,
    md: ModelDir,
    w: ModelWeights,
  ) {
    const c = md.config;
    const args = gemma3Args(c, `${md.dir}/config.json`);
    this.config = c;
    this.eps = c.rmsNormEps;
    this.vocabSize = c.vocabSize;
    this.ends = stackEnds(w);
    this.embedScale = roundToBf16(Math.sqrt(c.hiddenSize));
    this.finalSoftcap = args.finalLogitSoftcapping;
    this.blocks = gemma3Blocks(w, c, args, this.eps);
    this.layers = this.blocks.map((b) => ({ kvHeads: b.attnParams.kvHeads, headDim: b.attnParams.headDim, window: b.attnParams.window }));
  }

  forward(step: ForwardStep): Tensor {
    const be = this.backend;
    const eps = this.eps;
    let h = be.scale(embed(be, this.ends.embed, stepTokens(step)), this.embedScale);
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
    let logits = be.linear(be.rmsNorm(h, this.ends.norm, eps, true), this.ends.head);
    if (this.finalSoftcap) logits = be.softcap(logits, this.finalSoftcap);
    return logits;
  }
}

/**
 * Gemma 3 as the encoder of EmbeddingGemma (use_bidirectional_attention): every layer attends both ways, and a
 * sliding layer sees the keys within its window on either side. transformers halves the configured width once
 * when it reads such a config (sliding_window // 2 + 1, which config.json keeps unhalved) and lets a token see
 * keys at a distance below that.
 */
class Gemma3Encoder implements Encoder {
  readonly config: ModelConfig;
  readonly hiddenSize: number;
  readonly maxTokens: number;
  private readonly eps: number;
  private readonly embed: StackEnds["embed"];
  private readonly norm: Tensor;
  private readonly embedScale: number;
  private readonly radius: number;
  private readonly causal: boolean;
  private readonly blocks: Block[];

  constructor(
    readonly backend: Backend,
    md: ModelDir,
    w: ModelWeights,
  ) {
    const c = md.config;
    const args = gemma3Args(c, `${md.dir}/config.json`);
    this.config = c;
    this.hiddenSize = c.hiddenSize;
    this.maxTokens = c.contextLength;
    this.eps = c.rmsNormEps;
    this.embed = w.linear("model.embed_tokens");
    this.norm = w.tensor("model.norm.weight");
    // transformers scales in the table's dtype: exact for f32 tables, bf16-rounded for bf16 (and quantized) ones
    const exact = !isQuantized(this.embed) && this.embed.dtype === "f32";
    this.embedScale = exact ? Math.sqrt(c.hiddenSize) : roundToBf16(Math.sqrt(c.hiddenSize));
    const bidirectional = c.raw.use_bidirectional_attention === true;
    this.radius = bidirectional ? Math.floor(args.slidingWindow / 2) + 1 : args.slidingWindow;
    this.blocks = gemma3Blocks(w, c, args, this.eps);
    this.causal = !bidirectional;
  }

  encode(batch: EncoderBatch): Tensor {
    const be = this.backend;
    const eps = this.eps;
    let h = be.scale(embed(be, this.embed, batch.tokens), this.embedScale);
    for (const b of this.blocks) {
      const x = h;
      const window = b.attnParams.window > 0 ? this.radius : 0;
      h = runEncoderLayer(be, batch, () => {
        const a = encoderAttention(be, be.rmsNorm(x, b.inputNorm, eps, true), b.attn, b.attnParams, batch, this.causal, window);
        const y = be.add(x, be.rmsNorm(a, b.postAttnNorm, eps, true));
        const f = gatedMlp(be, be.rmsNorm(y, b.preFfnNorm, eps, true), b.mlp, "gelu_tanh");
        return be.add(y, be.rmsNorm(f, b.postFfnNorm, eps, true));
      });
    }
    return be.rmsNorm(h, this.norm, eps, true);
  }
}

export const gemma3: Family = {
  modelTypes: ["gemma3_text", "gemma3"],
  configDefaults: DEFAULTS,
  sanitize: bareTextModelSanitizer,
  nested: { gemma3: "language_model." },
  load: (backend, md, w) => new Gemma3Model(backend, md, w),
  loadEncoder: (backend, md, w) => new Gemma3Encoder(backend, md, w),
};
