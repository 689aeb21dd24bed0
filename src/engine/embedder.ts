// An embedding model at work: its tokenizer and prompts, its encoder, and the sentence-transformers pipeline after
// it (pooling, Dense layers, Normalize). A batch of inputs runs as one padding-free step: every sequence's tokens
// concatenated, attention kept within each sequence, then pooled per sequence.
import { join } from "node:path";
import type { Backend, DType, Tensor } from "../backend/backend.ts";
import { getBackend } from "../backend/index.ts";
import { RmlxError } from "../errors.ts";
import { openModelDir, type ModelDir } from "../io/model_dir.ts";
import { readEmbeddingSpec, type DenseSpec, type EmbeddingSpec } from "../io/sentence_transformers.ts";
import { WeightStore } from "../io/weights.ts";
import { encoderBatch, type Encoder } from "../models/encoder.ts";
import { loadEncoder, textModelType } from "../models/registry.ts";
import { Tokenizer } from "../text/tokenizer.ts";

const FLOAT: Record<string, DType> = { F32: "f32", F16: "f16", BF16: "bf16" };

/**
 * Most tokens of one step: a request with more runs as several steps of whole inputs, so that the activations of
 * 2048 long inputs are never held at once (a step's cost is its tokens either way).
 */
const STEP_TOKENS = 8192;

interface DenseLayer {
  spec: DenseSpec;
  w: Tensor;
  b?: Tensor;
}

/** What a loaded embedding model tells the server and `rmlx info`. */
export interface EmbeddingInfo {
  modelType: string;
  pooling: EmbeddingSpec["pooling"];
  normalize: boolean;
  dimension: number;
  maxTokens: number;
  prompts: string[];
}

function loadDense(backend: Backend, spec: DenseSpec): DenseLayer {
  const store = WeightStore.open(spec.dir);
  const wrap = (name: string): Tensor => {
    const e = store.require(name);
    const dt = FLOAT[e.dtype];
    if (!dt) throw new RmlxError("unsupported", `${spec.dir}: ${name} is ${e.dtype}, not a float`);
    return backend.fromBytes(e.bytes, e.shape, dt);
  };
  const w = wrap("linear.weight");
  if (w.shape[0] !== spec.outFeatures || w.shape[1] !== spec.inFeatures)
    throw new RmlxError("bad_model", `${spec.dir}: linear.weight is [${w.shape.join(", ")}], not [${spec.outFeatures}, ${spec.inFeatures}]`);
  const layer: DenseLayer = { spec, w };
  if (spec.bias) layer.b = wrap("linear.bias");
  return layer;
}

/** The most tokens one input may have: sentence-transformers' max_seq_length, the tokenizer's limit, the encoder's. */
function tokenLimit(md: ModelDir, spec: EmbeddingSpec, encoder: Encoder): number {
  let limit = encoder.maxTokens;
  if (spec.maxSeqLength !== undefined) limit = Math.min(limit, spec.maxSeqLength);
  const m = md.tokenizerConfig?.model_max_length;
  // transformers writes a huge sentinel (1e30) when a tokenizer states no limit
  if (typeof m === "number" && Number.isInteger(m) && m > 0 && m < 1e9) limit = Math.min(limit, m);
  return limit;
}

export class Embedder {
  readonly info: EmbeddingInfo;
  private readonly dense: DenseLayer[];
  /** Appended when the tokenizer does not end an input with it (last-token pooling of Qwen3-Embedding). */
  private readonly endToken: number | undefined;

  private constructor(
    readonly md: ModelDir,
    readonly spec: EmbeddingSpec,
    readonly tokenizer: Tokenizer,
    readonly encoder: Encoder,
  ) {
    this.dense = spec.dense.map((d) => loadDense(encoder.backend, d));
    let dim = encoder.hiddenSize;
    for (const d of spec.dense) {
      if (d.inFeatures !== dim) throw new RmlxError("bad_model", `${d.dir}: in_features ${d.inFeatures} does not follow the previous width ${dim}`);
      dim = d.outFeatures;
    }
    const modelType = textModelType(md);
    // Qwen3-Embedding pools the hidden state of <|endoftext|>, which its recipe appends to every input
    const eot = tokenizer.tokenToId("<|endoftext|>");
    this.endToken = spec.pooling === "lasttoken" && modelType.startsWith("qwen") ? eot : undefined;
    this.info = {
      modelType,
      pooling: spec.pooling,
      normalize: spec.normalize,
      dimension: dim,
      maxTokens: tokenLimit(md, spec, encoder),
      prompts: Object.keys(spec.prompts),
    };
  }

  static load(dir: string, backend: Backend = getBackend()): Embedder {
    const md = openModelDir(dir);
    if (!md.tokenizerJson) throw new RmlxError("bad_model", `${dir}: no tokenizer.json`);
    const spec = readEmbeddingSpec(dir);
    const tokenizer = Tokenizer.fromFiles(join(dir, "tokenizer.json"), md.tokenizerConfig ?? {});
    return new Embedder(md, spec, tokenizer, loadEncoder(backend, md));
  }

  /** The prompt text of a prompt name (the model's default when none is given), or "" for none. */
  prompt(name: string | undefined): string {
    const n = name ?? this.spec.defaultPromptName;
    if (n === undefined) return "";
    const p = this.spec.prompts[n];
    if (p === undefined) {
      const known = Object.keys(this.spec.prompts);
      throw new RmlxError("invalid_argument", `prompt '${n}' is not one of this model's prompts (${known.length ? known.join(", ") : "it has none"})`);
    }
    return p;
  }

  /** An input's token ids, as sentence-transformers tokenizes prompt + text (with the model's special tokens). */
  tokenize(text: string, promptName?: string): number[] {
    const ids = this.tokenizer.encode(this.prompt(promptName) + text, { addSpecialTokens: true });
    return this.withEnd(ids);
  }

  /** Ids given by the client get the end token the pooling needs, as tokenize's do. */
  withEnd(ids: number[]): number[] {
    const end = this.endToken;
    return end !== undefined && ids[ids.length - 1] !== end ? [...ids, end] : ids;
  }

  /** One embedding per input, in input order: the inputs in one batched step (several when they exceed STEP_TOKENS). */
  embed(inputs: readonly (readonly number[])[]): Float32Array[] {
    const vocab = this.encoder.config.vocabSize;
    for (const ids of inputs) {
      if (ids.length === 0) throw new RmlxError("invalid_argument", "an input has no tokens");
      const bad = ids.find((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
      if (bad !== undefined) throw new RmlxError("invalid_argument", `token ${bad} is outside the vocabulary (0..${vocab - 1})`);
    }
    const out: Float32Array[] = [];
    for (let i = 0; i < inputs.length; ) {
      let j = i + 1;
      let tokens = inputs[i]!.length;
      while (j < inputs.length && tokens + inputs[j]!.length <= STEP_TOKENS) tokens += inputs[j++]!.length;
      out.push(...this.step(inputs.slice(i, j)));
      i = j;
    }
    return out;
  }

  private step(inputs: readonly (readonly number[])[]): Float32Array[] {
    const be = this.encoder.backend;
    const batch = encoderBatch(inputs);
    const B = inputs.length;
    const rows = be.scope(() => {
      const h = this.encoder.encode(batch);
      let pooled = this.pool(h, batch.seqStart);
      for (const d of this.dense) {
        pooled = be.linear(pooled, d.w, d.b);
        if (d.spec.activation === "tanh") pooled = be.softcap(pooled, 1);
      }
      return be.toFloat32(pooled);
    });
    const dim = this.info.dimension;
    const out: Float32Array[] = [];
    for (let i = 0; i < B; i++) {
      const v = rows.slice(i * dim, (i + 1) * dim);
      if (this.spec.normalize) l2normalize(v);
      out.push(v);
    }
    return out;
  }

  /** One row per sequence [B, hidden] from the token rows h [T, hidden]. */
  private pool(h: Tensor, seqStart: Int32Array): Tensor {
    const be = this.encoder.backend;
    const B = seqStart.length - 1;
    const T = h.shape[0]!;
    const D = h.shape[1]!;
    switch (this.spec.pooling) {
      case "cls":
      case "lasttoken": {
        const rows = new Int32Array(B);
        for (let i = 0; i < B; i++) rows[i] = this.spec.pooling === "cls" ? seqStart[i]! : seqStart[i + 1]! - 1;
        return be.take(h, be.fromArray(rows, [B], "i32"));
      }
      case "mean": {
        // a [B, T] averaging matrix: one product instead of B slices and sums
        const m = new Float32Array(B * T);
        for (let i = 0; i < B; i++) {
          const s0 = seqStart[i]!;
          const n = seqStart[i + 1]! - s0;
          m.fill(1 / n, i * T + s0, i * T + s0 + n);
        }
        return be.matmul(be.fromArray(m, [B, T], "f32"), h);
      }
      case "max": {
        const x = be.toFloat32(h);
        const out = new Float32Array(B * D).fill(-Infinity);
        for (let i = 0; i < B; i++) {
          for (let t = seqStart[i]!; t < seqStart[i + 1]!; t++) {
            for (let d = 0; d < D; d++) out[i * D + d] = Math.max(out[i * D + d]!, x[t * D + d]!);
          }
        }
        return be.fromArray(out, [B, D], "f32");
      }
    }
  }
}

export function l2normalize(v: Float32Array): void {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  // sentence-transformers' F.normalize: the norm is clamped below at 1e-12
  const inv = 1 / Math.max(Math.sqrt(s), 1e-12);
  for (let i = 0; i < v.length; i++) v[i]! *= inv;
}
