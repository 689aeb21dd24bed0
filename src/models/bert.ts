// BERT and the encoders that share its layout (RoBERTa, XLM-RoBERTa): learned absolute position and token-type
// embeddings summed with the word embeddings and layer-normalised, then post-norm blocks of bidirectional
// multi-head attention and a GELU feed-forward, each with biases. RoBERTa numbers positions from
// pad_token_id + 1. Embedding models only: the family has no language-model head.
import type { Backend, Tensor, Weight } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { ModelConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { runEncoderLayer, type Encoder, type EncoderBatch } from "./encoder.ts";
import type { Family, SanitizeContext, Sanitizer } from "./family.ts";
import type { ModelWeights } from "./weights.ts";

const DEFAULTS = {
  layer_norm_eps: 1e-12,
  hidden_act: "gelu",
  type_vocab_size: 2,
  position_embedding_type: "absolute",
} as const;

/** transformers' prefixes of the encoder inside task models (BertForMaskedLM's bert.*, ...) and mlx-embeddings' model.*. */
const PREFIX = /^(bert|roberta|xlm_roberta|model)\./;

/** Stored names to the bare BertModel's (embeddings.*, encoder.layer.N.*); heads, poolers and position-id buffers are dropped. */
export function bertSanitizer(_ctx: SanitizeContext): Sanitizer {
  return {
    rename(name) {
      const n = name.replace(PREFIX, "");
      if (!n.startsWith("embeddings.") && !n.startsWith("encoder.")) return null;
      if (n.endsWith(".position_ids") || n.endsWith(".token_type_ids")) return null;
      return { name: n };
    },
  };
}

interface Dense {
  w: Weight;
  b?: Tensor;
}

interface Norm {
  w: Tensor;
  b: Tensor;
}

interface Block {
  q: Dense;
  k: Dense;
  v: Dense;
  o: Dense;
  attnNorm: Norm;
  up: Dense;
  down: Dense;
  ffnNorm: Norm;
}

function dense(w: ModelWeights, p: string): Dense {
  const d: Dense = { w: w.linear(p) };
  const b = w.optTensor(`${p}.bias`);
  if (b) d.b = b;
  return d;
}

function norm(w: ModelWeights, p: string): Norm {
  return { w: w.tensor(`${p}.weight`), b: w.tensor(`${p}.bias`) };
}

type Act = "gelu" | "gelu_tanh";

function activation(name: unknown, source: string): Act {
  if (name === "gelu") return "gelu";
  if (name === "gelu_new" || name === "gelu_pytorch_tanh" || name === "gelu_fast") return "gelu_tanh";
  throw new RmlxError("unsupported", `${source}: hidden_act '${String(name)}' is not supported (gelu, gelu_new, gelu_pytorch_tanh)`);
}

class BertEncoder implements Encoder {
  readonly config: ModelConfig;
  readonly hiddenSize: number;
  readonly maxTokens: number;
  private readonly heads: number;
  private readonly headDim: number;
  private readonly eps: number;
  private readonly act: Act;
  /** Added to every position (RoBERTa: pad_token_id + 1). */
  private readonly positionOffset: number;
  private readonly words: Weight;
  private readonly positions: Weight;
  private readonly tokenType: Weight | undefined;
  private readonly embedNorm: Norm;
  private readonly blocks: Block[] = [];

  constructor(
    readonly backend: Backend,
    md: ModelDir,
    w: ModelWeights,
  ) {
    const c = md.config;
    const source = `${md.dir}/config.json`;
    this.config = c;
    this.hiddenSize = c.hiddenSize;
    this.heads = c.numHeads;
    this.headDim = c.hiddenSize / c.numHeads;
    this.eps = c.rmsNormEps;
    const raw = c.raw;
    this.act = activation(raw.hidden_act ?? DEFAULTS.hidden_act, source);
    const posType = raw.position_embedding_type ?? DEFAULTS.position_embedding_type;
    if (posType !== "absolute") throw new RmlxError("unsupported", `${source}: position_embedding_type '${String(posType)}' is not supported (absolute)`);
    const roberta = c.modelType === "roberta" || c.modelType === "xlm-roberta";
    const pad = typeof raw.pad_token_id === "number" ? raw.pad_token_id : 1;
    this.positionOffset = roberta ? pad + 1 : 0;
    this.maxTokens = c.contextLength - this.positionOffset;
    this.words = w.linear("embeddings.word_embeddings");
    this.positions = w.linear("embeddings.position_embeddings");
    this.tokenType = w.optLinear("embeddings.token_type_embeddings");
    this.embedNorm = norm(w, "embeddings.LayerNorm");
    for (let i = 0; i < c.numLayers; i++) {
      const p = `encoder.layer.${i}`;
      this.blocks.push({
        q: dense(w, `${p}.attention.self.query`),
        k: dense(w, `${p}.attention.self.key`),
        v: dense(w, `${p}.attention.self.value`),
        o: dense(w, `${p}.attention.output.dense`),
        attnNorm: norm(w, `${p}.attention.output.LayerNorm`),
        up: dense(w, `${p}.intermediate.dense`),
        down: dense(w, `${p}.output.dense`),
        ffnNorm: norm(w, `${p}.output.LayerNorm`),
      });
    }
  }

  encode(batch: EncoderBatch): Tensor {
    const be = this.backend;
    const T = batch.tokens.length;
    const pos = this.positionOffset === 0 ? batch.positions : batch.positions.map((p) => p + this.positionOffset);
    let h = be.add(be.take(this.words, be.fromArray(batch.tokens, [T], "i32")), be.take(this.positions, be.fromArray(pos, [T], "i32")));
    // every input is one segment: token type 0
    if (this.tokenType) h = be.add(h, be.take(this.tokenType, be.fromArray(new Int32Array(1), [1], "i32")));
    h = be.layerNorm(h, this.embedNorm.w, this.embedNorm.b, this.eps);
    const scale = 1 / Math.sqrt(this.headDim);
    for (const b of this.blocks) {
      const x = h;
      h = runEncoderLayer(be, batch, () => {
        const q = be.reshape(be.linear(x, b.q.w, b.q.b), [T, this.heads, this.headDim]);
        const k = be.reshape(be.linear(x, b.k.w, b.k.b), [T, this.heads, this.headDim]);
        const v = be.reshape(be.linear(x, b.v.w, b.v.b), [T, this.heads, this.headDim]);
        const a = be.varlenAttention(q, k, v, batch.seqStart, { scale, causal: false });
        const o = be.linear(be.reshape(a, [T, this.hiddenSize]), b.o.w, b.o.b);
        const y = be.layerNorm(be.add(x, o), b.attnNorm.w, b.attnNorm.b, this.eps);
        const u = be.linear(y, b.up.w, b.up.b);
        const f = be.linear(this.act === "gelu" ? be.gelu(u) : be.geluTanh(u), b.down.w, b.down.b);
        return be.layerNorm(be.add(y, f), b.ffnNorm.w, b.ffnNorm.b, this.eps);
      });
    }
    return h;
  }
}

export const bert: Family = {
  modelTypes: ["bert", "roberta", "xlm-roberta"],
  configDefaults: DEFAULTS,
  sanitize: bertSanitizer,
  loadEncoder: (backend, md, w) => new BertEncoder(backend, md, w),
};
