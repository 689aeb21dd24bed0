// Qwen3.5 / Qwen3.6 (dense and MoE) and Qwen3-Next: hybrids of Gated DeltaNet linear attention and gated full
// attention (layer_types, else every full_attention_interval-th layer full). The full layers are Qwen3's attention
// with a per-head output gate (q_proj gives query and gate) and partial rotary; the linear layers project q|k|v
// (Qwen3-Next: one fused projection grouped per key head), run a depthwise causal conv, then the gated delta rule
// over a per-sequence f32 state, and gate the per-head RMS-normed output with silu(z). Feed-forward: SwiGLU, or a
// routed mixture of experts beside a sigmoid-gated shared expert.
//
// Norms: transformers stores the zero-centred ones (x * (1 + w)); MLX snapshots store them shifted by one. A
// checkpoint is in transformers' layout when its conv1d weights are [C, 1, K] (MLX: [C, K, 1]).
import { isQuantized, type Backend, type StateSpec, type Tensor, type Weight } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import { ConfigReader, type ModelConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { stackedExpert, textModelName, type Family, type SanitizeContext, type Sanitizer } from "./family.ts";
import { embed, gatedMlp, mlpWeights, runLayer, selectRows, stepTokens, type MlpWeights } from "./layers.ts";
import type { ForwardStep, LayerCacheSpec, Model, MtpHead } from "./model.ts";
import { moe, moeWeights, type MoeWeights, type Qwen3MoeArgs } from "./qwen3_moe.ts";
import { checkPositions, ropeSetup, type RopeSetup } from "./rope.ts";
import type { ModelWeights } from "./weights.ts";

/** The zero-centred norms (transformers) that mlx-lm's sanitize shifts by one. */
const SHIFTED_NORMS = [
  ".input_layernorm.weight",
  ".post_attention_layernorm.weight",
  "model.norm.weight",
  ".q_norm.weight",
  ".k_norm.weight",
  "mtp.norm.weight",
  ".pre_fc_norm_embedding.weight",
  ".pre_fc_norm_hidden.weight",
];

/**
 * The sanitize of both families: the text model lifted out of the multimodal wrappers, the vision tower dropped,
 * experts stacked, MTP weights kept (the built-in drafter of --draft-kind mtp); on a checkpoint in transformers' layout,
 * convert shifts the zero-centred norms and moves the conv kernel axis last, as mlx-lm does.
 */
export function hybridSanitize({ tied, names }: SanitizeContext): Sanitizer {
  const hfLayout = !names.some((n) => n.startsWith("language_model.") || n.includes(".switch_mlp."));
  return {
    rename(name) {
      if (name.startsWith("mtp.")) return stackedExpert(name);
      const n = textModelName(name, tied);
      return n === null ? null : stackedExpert(n);
    },
    addOne: (name, shape) => hfLayout && shape.length === 1 && SHIFTED_NORMS.some((k) => name.endsWith(k)),
    reshape(name, s) {
      if (!(name.endsWith("conv1d.weight") && s.length === 3 && s[2] !== 1)) return [...s];
      if (s[1] !== 1) throw new RmlxError("bad_model", `${name}: conv1d weight ${JSON.stringify(s)} is not depthwise ([C, 1, K] expected)`);
      return [s[0]!, s[2]!, s[1]!];
    },
  };
}

interface HybridArgs {
  layerTypes: ("linear" | "full")[];
  state: StateSpec;
  /** Qwen3-Next's fused in_proj_qkvz / in_proj_ba. */
  fused: boolean;
  moe: Qwen3MoeArgs | null;
  sharedIntermediate: number;
}

function hybridArgs(c: ModelConfig, source: string, fused: boolean, moeModel: boolean): HybridArgs {
  const r = new ConfigReader(c.raw, {}, source);
  const n = c.numLayers;
  let layerTypes: ("linear" | "full")[];
  if (c.layerTypes && c.layerTypes.length === n) {
    layerTypes = c.layerTypes.map((t) => (t === "linear_attention" ? "linear" : "full"));
  } else {
    const interval = r.optInt("full_attention_interval") ?? 4;
    layerTypes = Array.from({ length: n }, (_, i) => ((i + 1) % interval === 0 ? "full" : "linear"));
  }
  const keyHeads = r.int("linear_num_key_heads");
  const valueHeads = r.int("linear_num_value_heads");
  const keyDim = r.int("linear_key_head_dim");
  const valueDim = r.int("linear_value_head_dim");
  const kernel = r.optInt("linear_conv_kernel_dim") ?? 4;
  if (valueHeads % keyHeads !== 0) r.bad(`linear_num_value_heads ${valueHeads} is not a multiple of linear_num_key_heads ${keyHeads}`);
  const state: StateSpec = { convDim: 2 * keyHeads * keyDim + valueHeads * valueDim, kernel, keyHeads, valueHeads, keyDim, valueDim };
  let moeArgs: Qwen3MoeArgs | null = null;
  if (moeModel && c.numExperts && c.numExpertsPerTok) {
    const mlpOnly = r.get("mlp_only_layers") ?? [];
    if (!Array.isArray(mlpOnly) || !mlpOnly.every((x) => Number.isInteger(x) && x >= 0 && x < n)) r.bad("mlp_only_layers is not a list of layer indices");
    moeArgs = {
      numExperts: c.numExperts,
      numExpertsPerTok: c.numExpertsPerTok,
      moeIntermediateSize: r.optInt("moe_intermediate_size") ?? c.intermediateSize,
      // Qwen3.5 always renormalises the top-k weights; Qwen3-Next when norm_topk_prob (default true)
      normTopkProb: fused ? (r.optBool("norm_topk_prob") ?? true) : true,
      decoderSparseStep: r.optInt("decoder_sparse_step") ?? 1,
      mlpOnlyLayers: mlpOnly as number[],
    };
  }
  return { layerTypes, state, fused, moe: moeArgs, sharedIntermediate: r.optInt("shared_expert_intermediate_size") ?? 0 };
}

interface LinearWeights {
  qkv?: Weight;
  z?: Weight;
  b?: Weight;
  a?: Weight;
  qkvz?: Weight;
  ba?: Weight;
  conv: Tensor;
  /** -exp(A_log), f32 [Hv]. */
  negA: Tensor;
  dtBias: Tensor;
  norm: Tensor;
  out: Weight;
}

interface FullWeights {
  q: Weight;
  k: Weight;
  v: Weight;
  o: Weight;
  qNorm: Tensor;
  kNorm: Tensor;
}

interface Ffn {
  dense?: MlpWeights;
  moe?: MoeWeights;
  shared?: MlpWeights;
  sharedGate?: Weight;
}

interface Block {
  inputNorm: Tensor;
  postNorm: Tensor;
  linear?: LinearWeights;
  full?: FullWeights;
  ffn: Ffn;
}

function outRows(w: Weight): number {
  return (isQuantized(w) ? w.w : w).shape[isQuantized(w) ? w.w.shape.length - 2 : 0]!;
}

class HybridModel implements Model {
  readonly config: ModelConfig;
  readonly layers: LayerCacheSpec[];
  readonly vocabSize: number;
  private readonly args: HybridArgs;
  private readonly eps: number;
  /** transformers' layout: zero-centred norms applied as (1 + w). */
  private readonly onePlus: boolean;
  private readonly embedTable: Weight;
  private readonly head: Weight;
  private readonly finalNorm: Tensor;
  private readonly rope: RopeSetup;
  private readonly blocks: Block[] = [];
  /** The MTP head's tensor names. */
  readonly mtpTensors: string[];
  private mtp: MtpHead | undefined;

  constructor(
    readonly backend: Backend,
    private readonly md: ModelDir,
    private readonly w: ModelWeights,
    fused: boolean,
    moeModel: boolean,
  ) {
    const c = md.config;
    const src = `${md.dir}/config.json`;
    const args = hybridArgs(c, src, fused, moeModel);
    this.config = c;
    this.args = args;
    this.eps = c.rmsNormEps;
    this.embedTable = w.linear("model.embed_tokens");
    this.vocabSize = c.vocabSize;
    this.head = w.optLinear("lm_head") ?? this.embedTable;
    this.finalNorm = w.tensor("model.norm.weight");
    this.rope = ropeSetup({ ...c.rope, partialRotaryFactor: c.rope.partialRotaryFactor ?? 0.25 }, c.headDim, c.contextLength);
    this.mtpTensors = md.weights.names().filter((n) => n.startsWith("mtp."));
    const s = args.state;
    let layout: "hf" | "mlx" | undefined;
    for (let i = 0; i < c.numLayers; i++) {
      const p = `model.layers.${i}`;
      const sparse = args.moe !== null && !args.moe.mlpOnlyLayers.includes(i) && (i + 1) % args.moe.decoderSparseStep === 0;
      const ffn = this.ffnWeights(`${p}.mlp`, sparse);
      const block: Block = {
        inputNorm: w.tensor(`${p}.input_layernorm.weight`),
        postNorm: w.tensor(`${p}.post_attention_layernorm.weight`),
        ffn,
      };
      if (args.layerTypes[i] === "linear") {
        const a = `${p}.linear_attn`;
        const conv = w.tensor(`${a}.conv1d.weight`);
        const cs = conv.shape;
        const here = cs.length === 3 && cs[0] === s.convDim && cs[1] === 1 && cs[2] === s.kernel ? "hf" : cs.length === 3 && cs[0] === s.convDim && cs[1] === s.kernel && cs[2] === 1 ? "mlx" : undefined;
        if (!here) {
          throw new RmlxError("bad_model", `${md.dir}: ${a}.conv1d.weight is [${cs.join(", ")}], expected [${s.convDim}, 1, ${s.kernel}] (transformers) or [${s.convDim}, ${s.kernel}, 1] (MLX)`);
        }
        if (layout && layout !== here) throw new RmlxError("bad_model", `${md.dir}: conv1d weights mix transformers' and MLX's layouts`);
        layout = here;
        const aLog = backend.toFloat32(w.tensor(`${a}.A_log`));
        if (aLog.length !== s.valueHeads) throw new RmlxError("bad_model", `${md.dir}: ${a}.A_log has ${aLog.length} values, expected ${s.valueHeads}`);
        const lw: LinearWeights = {
          conv: backend.astype(backend.reshape(conv, [s.convDim, s.kernel]), "f32"),
          negA: backend.fromArray(Float32Array.from(aLog, (x) => -Math.exp(x)), [s.valueHeads], "f32"),
          dtBias: w.tensor(`${a}.dt_bias`),
          norm: w.tensor(`${a}.norm.weight`),
          out: w.linear(`${a}.out_proj`),
        };
        if (fused) {
          lw.qkvz = w.linear(`${a}.in_proj_qkvz`);
          lw.ba = w.linear(`${a}.in_proj_ba`);
        } else {
          lw.qkv = w.linear(`${a}.in_proj_qkv`);
          lw.z = w.linear(`${a}.in_proj_z`);
          lw.b = w.linear(`${a}.in_proj_b`);
          lw.a = w.linear(`${a}.in_proj_a`);
          if (outRows(lw.qkv) !== s.convDim) throw new RmlxError("bad_model", `${md.dir}: ${a}.in_proj_qkv has ${outRows(lw.qkv)} outputs, expected ${s.convDim}`);
        }
        block.linear = lw;
      } else {
        block.full = fullWeights(w, `${p}.self_attn`);
      }
      this.blocks.push(block);
    }
    this.onePlus = layout !== "mlx";
    this.layers = args.layerTypes.map((t) =>
      t === "linear" ? { kvHeads: 0, headDim: 0, window: 0, state: s } : { kvHeads: c.numKvHeads, headDim: c.headDim, window: 0 },
    );
  }

  private ffnWeights(p: string, sparse: boolean): Ffn {
    const w = this.w;
    if (!sparse) return { dense: mlpWeights(w, p) };
    const ffn: Ffn = { moe: moeWeights(w, p, this.args.moe!) };
    if (w.has(`${p}.shared_expert.gate_proj.weight`) || w.has(`${p}.shared_expert.gate_proj.scales`)) {
      ffn.shared = mlpWeights(w, `${p}.shared_expert`);
      ffn.sharedGate = w.linear(`${p}.shared_expert_gate`);
    }
    return ffn;
  }

  private norm(x: Tensor, w: Tensor): Tensor {
    return this.backend.rmsNorm(x, w, this.eps, this.onePlus);
  }

  private fullAttention(x: Tensor, w: FullWeights, step: ForwardStep, layer: number, positions = step.batch.positions): Tensor {
    const be = this.backend;
    const c = this.config;
    const T = x.shape[0]!;
    const H = c.numHeads;
    const D = c.headDim;
    const qg = be.reshape(be.linear(x, w.q), [T, H, 2 * D]);
    let q = be.slice(qg, 2, 0, D);
    const gate = be.reshape(be.slice(qg, 2, D, 2 * D), [T, H * D]);
    let k = be.reshape(be.linear(x, w.k), [T, c.numKvHeads, D]);
    const v = be.reshape(be.linear(x, w.v), [T, c.numKvHeads, D]);
    q = be.rmsNorm(q, w.qNorm, this.eps, this.onePlus);
    k = be.rmsNorm(k, w.kNorm, this.eps, this.onePlus);
    checkPositions(this.rope, positions);
    q = be.rope(q, positions, this.rope.opts);
    k = be.rope(k, positions, this.rope.opts);
    const pool = step.pools[layer]!;
    be.kvWrite(pool, k, v, step.slots);
    const att = be.pagedAttention(q, pool, step.batch, { scale: 1 / Math.sqrt(D) });
    return be.linear(be.mul(be.reshape(att, [T, H * D]), be.sigmoid(gate)), w.o);
  }

  private linearAttention(x: Tensor, w: LinearWeights, step: ForwardStep, layer: number): Tensor {
    const be = this.backend;
    const { keyHeads: Hk, valueHeads: Hv, keyDim: Dk, valueDim: Dv, convDim } = this.args.state;
    const T = x.shape[0]!;
    const pool = step.states?.[layer];
    if (!pool || !step.recurrent) throw new RmlxError("internal", `layer ${layer} is linear attention but the step carries no recurrent state`);
    let qkv: Tensor;
    let z: Tensor;
    let b: Tensor;
    let a: Tensor;
    if (w.qkvz) {
      // grouped per key head: [q Dk | k Dk | v rep*Dv | z rep*Dv], and [b rep | a rep]
      const rep = Hv / Hk;
      const g = be.reshape(be.linear(x, w.qkvz), [T, Hk, 2 * Dk + 2 * rep * Dv]);
      const part = (lo: number, hi: number, width: number) => be.reshape(be.slice(g, 2, lo, hi), [T, width]);
      qkv = be.concatenate(
        [part(0, Dk, Hk * Dk), part(Dk, 2 * Dk, Hk * Dk), part(2 * Dk, 2 * Dk + rep * Dv, Hv * Dv)],
        1,
      );
      z = part(2 * Dk + rep * Dv, 2 * Dk + 2 * rep * Dv, Hv * Dv);
      const ba = be.reshape(be.linear(x, w.ba!), [T, Hk, 2 * rep]);
      b = be.reshape(be.slice(ba, 2, 0, rep), [T, Hv]);
      a = be.reshape(be.slice(ba, 2, rep, 2 * rep), [T, Hv]);
    } else {
      qkv = be.linear(x, w.qkv!);
      z = be.linear(x, w.z!);
      b = be.linear(x, w.b!);
      a = be.linear(x, w.a!);
    }
    const conv = be.silu(be.causalConv1d(qkv, w.conv, pool, step.recurrent));
    const kd = Hk * Dk;
    // l2norm(x) = x * rsqrt(sum x^2 + 1e-6) = rms_norm(x, eps 1e-6 / D) / sqrt(D); q is also scaled by D^-1/2
    let q = be.reshape(be.slice(conv, 1, 0, kd), [T, Hk, Dk]);
    let k = be.reshape(be.slice(conv, 1, kd, 2 * kd), [T, Hk, Dk]);
    const v = be.reshape(be.slice(conv, 1, 2 * kd, convDim), [T, Hv, Dv]);
    q = be.scale(be.rmsNorm(q, null, 1e-6 / Dk), 1 / Dk);
    k = be.scale(be.rmsNorm(k, null, 1e-6 / Dk), 1 / Math.sqrt(Dk));
    const beta = be.sigmoid(b);
    const g = be.mul(be.softplus(be.add(a, w.dtBias)), w.negA);
    const o = be.gatedDelta(q, k, v, g, beta, pool, step.recurrent);
    const normed = be.rmsNorm(o, w.norm, this.eps);
    const gated = be.mul(be.reshape(normed, [T, Hv * Dv]), be.silu(z));
    return be.linear(gated, w.out);
  }

  private ffn(x: Tensor, f: Ffn): Tensor {
    const be = this.backend;
    if (f.dense) return gatedMlp(be, x, f.dense, "silu");
    let y = moe(be, x, f.moe!, this.args.moe!);
    if (f.shared) y = be.add(y, be.mul(gatedMlp(be, x, f.shared, "silu"), be.sigmoid(be.linear(x, f.sharedGate!))));
    return y;
  }

  private block(x: Tensor, b: Block, step: ForwardStep, i: number, positions?: Int32Array): Tensor {
    const be = this.backend;
    const n = this.norm(x, b.inputNorm);
    const mixed = b.linear ? this.linearAttention(n, b.linear, step, i) : this.fullAttention(n, b.full!, step, i, positions);
    const y = be.add(x, mixed);
    return be.add(y, this.ffn(this.norm(y, b.postNorm), b.ffn));
  }

  /** The last layer's output for every token of the step, before the final norm. */
  private trunk(step: ForwardStep): Tensor {
    let h = embed(this.backend, this.embedTable, stepTokens(step));
    for (let i = 0; i < this.blocks.length; i++) {
      const x = h;
      h = runLayer(this.backend, step, () => this.block(x, this.blocks[i]!, step, i));
    }
    return h;
  }

  forward(step: ForwardStep): Tensor {
    const h = selectRows(this.backend, this.trunk(step), step.logitRows);
    return this.backend.linear(this.norm(h, this.finalNorm), this.head);
  }

  forwardHidden(step: ForwardStep, hiddenRows: Int32Array): { logits: Tensor; hidden: Tensor } {
    const be = this.backend;
    const h = this.trunk(step);
    const logits = be.linear(this.norm(selectRows(be, h, step.logitRows), this.finalNorm), this.head);
    return { logits, hidden: this.norm(selectRows(be, h, hiddenRows), this.finalNorm) };
  }

  mtpHead(): MtpHead {
    this.mtp ??= this.loadMtp();
    return this.mtp;
  }

  /**
   * mtp.*: fc [H, 2H] over the normed embedding of the token at t + 1 and the normed trunk hidden state at t,
   * one full-attention layer of the trunk's kind (dense or MoE feed-forward), a final norm, the shared head.
   */
  private loadMtp(): MtpHead {
    const w = this.w;
    const dir = this.md.dir;
    if (this.mtpTensors.length === 0) throw new RmlxError("invalid_argument", `${dir}: the checkpoint has no MTP head (no mtp.* weights)`);
    const layers = new Set(this.mtpTensors.map((n) => /^mtp\.layers\.(\d+)\./.exec(n)?.[1]).filter((x) => x !== undefined));
    const stated = this.config.raw.mtp_num_hidden_layers;
    if (layers.size > 1 || (typeof stated === "number" && stated > 1)) {
      throw new RmlxError("invalid_argument", `${dir}: an MTP head of ${Math.max(layers.size, Number(stated))} layers is not supported (one layer is)`);
    }
    let parts;
    try {
      const p = "mtp.layers.0";
      const sparse = this.args.moe !== null && (w.has(`${p}.mlp.gate.weight`) || w.has(`${p}.mlp.gate.scales`));
      parts = {
        fc: w.linear("mtp.fc"),
        embNorm: w.tensor("mtp.pre_fc_norm_embedding.weight"),
        hiddenNorm: w.tensor("mtp.pre_fc_norm_hidden.weight"),
        norm: w.tensor("mtp.norm.weight"),
        block: {
          inputNorm: w.tensor(`${p}.input_layernorm.weight`),
          postNorm: w.tensor(`${p}.post_attention_layernorm.weight`),
          full: fullWeights(w, `${p}.self_attn`),
          ffn: this.ffnWeights(`${p}.mlp`, sparse),
        } satisfies Block,
      };
    } catch (e) {
      if (e instanceof RmlxError) throw new RmlxError("invalid_argument", `the MTP head is incomplete: ${e.message}`);
      throw e;
    }
    const c = this.config;
    const H = c.hiddenSize;
    const fcIn = isQuantized(parts.fc) ? (parts.fc.w.shape[1]! * 32) / parts.fc.bits : parts.fc.shape[1];
    if (outRows(parts.fc) !== H || fcIn !== 2 * H) throw new RmlxError("invalid_argument", `${dir}: mtp.fc is [${outRows(parts.fc)}, ${fcIn}], expected [${H}, ${2 * H}]`);
    const stored = (prefix: string) =>
      this.md.weights.names().reduce((n, name) => (name.startsWith(prefix) ? n + this.md.weights.require(name).bytes.byteLength : n), 0);
    const headName = w.has("lm_head.weight") ? "lm_head." : "model.embed_tokens.";
    let headBytes = 0;
    for (const s of ["weight", "scales", "biases"]) if (w.has(`${headName}${s}`)) headBytes += w.entry(`${headName}${s}`).bytes.byteLength;
    const be = this.backend;
    return {
      layers: [{ kvHeads: c.numKvHeads, headDim: c.headDim, window: 0 }],
      hiddenSize: H,
      weightBytes: stored("mtp.") + headBytes,
      forward: (step, hidden, positions) => {
        const e = this.norm(embed(be, this.embedTable, step.tokens), parts.embNorm);
        const x = be.linear(be.concatenate([e, this.norm(hidden, parts.hiddenNorm)], 1), parts.fc);
        const out = this.norm(selectRows(be, this.block(x, parts.block, step, 0, positions), step.logitRows), parts.norm);
        return { logits: be.linear(out, this.head), hidden: out };
      },
    };
  }
}

function fullWeights(w: ModelWeights, a: string): FullWeights {
  return {
    q: w.linear(`${a}.q_proj`),
    k: w.linear(`${a}.k_proj`),
    v: w.linear(`${a}.v_proj`),
    o: w.linear(`${a}.o_proj`),
    qNorm: w.tensor(`${a}.q_norm.weight`),
    kNorm: w.tensor(`${a}.k_norm.weight`),
  };
}

export function loadHybrid(backend: Backend, md: ModelDir, w: ModelWeights, fused: boolean, moeModel: boolean): Model {
  return new HybridModel(backend, md, w, fused, moeModel);
}

export const qwen3_5: Family = {
  modelTypes: ["qwen3_5_text", "qwen3_5", "qwen3_5_moe_text", "qwen3_5_moe"],
  // every fourth layer is full attention, the others linear; the MoE configs have no dense MLP size
  configDefaults: { full_attention_interval: 4, intermediate_size: 0 },
  sanitize: hybridSanitize,
  // the router and the shared expert's gate stay at 8 bits, as mlx-lm's quant_predicate has it
  quantOverride: (path) => (path.endsWith("mlp.gate") || path.endsWith("shared_expert_gate") ? { bits: 8, groupSize: 64 } : null),
  load: (backend, md, w) => loadHybrid(backend, md, w, false, md.config.numExperts !== undefined && md.config.numExperts > 0),
};
