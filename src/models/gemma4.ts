// Gemma 4 (text), as transformers' Gemma4ForCausalLM computes it:
//  - RMSNorm with the weight used as is (not 1 + w, unlike Gemma 2/3), four norms per block; q and k normed per
//    head, v normed without a weight; attention scale 1;
//  - sliding layers (head_dim, default rope) and full layers (global_head_dim, proportional rope that turns only
//    the first pairs of the whole head), the full layers of some models with keys equal to values (attention_k_eq_v:
//    no v_proj, the value is the raw k_proj output normed without weight) and kv heads of their own;
//  - per-layer embeddings (PLE): a second embedding table gives each layer a small input of its own, mixed with a
//    projection of the embeddings and gated into the residual after the feed-forward;
//  - a learned scalar multiplying the whole residual at the end of each layer;
//  - the last num_kv_shared_layers layers read the K/V of the last earlier layer of their type instead of their own
//    (they keep no cache, and their MLP may be twice as wide);
//  - optionally a mixture of experts beside the dense MLP: the router sees the residual, normed without weight,
//    scaled, softmaxed; top-k renormalised, times a per-expert scale;
//  - embeddings times sqrt(hidden), tied output head, final tanh soft-cap.
// Checkpoints: transformers' Gemma4ForCausalLM (model.*, fused experts.gate_up_proj) and Gemma4ForConditionalGeneration
// (model.language_model.*, vision and audio towers left unloaded), mlx-lm / mlx-vlm snapshots (language_model.model.*,
// experts split into switch_glu); the k/v weights some checkpoints store for KV-shared layers are ignored.
import { isQuantized, type Backend, type Tensor, type Weight } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import { ConfigReader, type LayerKvLayout, type ModelConfig, type RopeConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { textModelName, type Family, type SanitizeContext, type Sanitizer } from "./family.ts";
import {
  embed,
  expertStacks,
  gatedMlp,
  mixExperts,
  mlpWeights,
  runLayer,
  selectRows,
  stackEnds,
  stepTokens,
  type ExpertStacks,
  type MlpWeights,
  type StackEnds,
} from "./layers.ts";
import type { ForwardStep, LayerCacheSpec, Model } from "./model.ts";
import { checkPositions, ropeSetup, type RopeSetup } from "./rope.ts";
import type { ModelWeights } from "./weights.ts";

/** transformers' Gemma4TextConfig defaults, for configs that leave a field out. */
const DEFAULTS = {
  vocab_size: 262144,
  hidden_size: 2304,
  intermediate_size: 9216,
  num_hidden_layers: 30,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 256,
  hidden_activation: "gelu_pytorch_tanh",
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-6,
  pad_token_id: 0,
  eos_token_id: 1,
  bos_token_id: 2,
  tie_word_embeddings: true,
  sliding_window: 512,
  // Without layer_types: five sliding layers to one full one (and the last layer full, see adjustConfig).
  sliding_window_pattern: 6,
  vocab_size_per_layer_input: 262144,
  hidden_size_per_layer_input: 256,
  attention_k_eq_v: false,
  num_kv_shared_layers: 0,
  enable_moe_block: false,
  use_double_wide_mlp: false,
  global_head_dim: 512,
  rope_parameters: {
    sliding_attention: { rope_type: "default", rope_theta: 10_000 },
    full_attention: { rope_type: "proportional", partial_rotary_factor: 0.25, rope_theta: 1_000_000 },
  },
};

const ROPE_TYPES = new Set(["default", "linear", "dynamic", "llama3", "yarn", "proportional"]);

/** transformers' checks and fixes: the last layer is always full attention; what this build cannot run is named. */
function adjustConfig(c: ModelConfig, r: ConfigReader): void {
  const types = c.layerTypes ? [...c.layerTypes] : Array<"full_attention">(c.numLayers).fill("full_attention");
  const linear = types.indexOf("linear_attention");
  if (linear >= 0) r.bad(`layer_types[${linear}]: Gemma 4 has no linear_attention layers`);
  if (types.length > 0) types[types.length - 1] = "full_attention";
  c.layerTypes = types;
  const act = r.get("hidden_activation");
  if (act !== "gelu_pytorch_tanh")
    throw new RmlxError("unsupported", `${r.source}: hidden_activation '${String(act)}' is not supported (gelu_pytorch_tanh is)`);
  if (r.get("use_bidirectional_attention") === "all")
    throw new RmlxError("unsupported", `${r.source}: use_bidirectional_attention 'all' (an encoder) is not supported`);
  const check = (rope: RopeConfig | undefined, where: string) => {
    if (rope && !ROPE_TYPES.has(rope.type))
      throw new RmlxError("unsupported", `${r.source}: rope type '${rope.type}' (${where}.rope_type) is not supported for Gemma 4`);
  };
  check(c.rope, "rope_parameters.full_attention");
  check(c.localRope, "rope_parameters.sliding_attention");
}

/** One layer's attention geometry. */
interface LayerGeometry {
  sliding: boolean;
  headDim: number;
  kvHeads: number;
  /** Sliding window (0 = full). */
  window: number;
  /** Keys equal values: no v_proj. */
  kEqV: boolean;
  /** The layer whose K/V this one reads (KV-shared layers). */
  kvSource?: number;
}

function perLayerOverrides(r: ConfigReader, c: ModelConfig): Map<number, { headDim?: number; kvHeads?: number }> {
  const out = new Map<number, { headDim?: number; kvHeads?: number }>();
  const plc = r.get("per_layer_config");
  const posInt = (v: unknown, where: string) => {
    if (v === undefined || v === null) return undefined;
    if (!Number.isInteger(v) || (v as number) < 1) r.bad(`${where} is not a positive integer`);
    return v as number;
  };
  if (plc !== undefined) {
    // transformers >= 5.17 writes the global layers' sizes as per-layer overrides.
    if (typeof plc !== "object" || Array.isArray(plc)) r.bad("per_layer_config is not an object");
    for (const [k, v] of Object.entries(plc as Record<string, unknown>)) {
      const i = Number(k);
      if (!Number.isInteger(i) || i < 0 || i >= c.numLayers) r.bad(`per_layer_config: '${k}' is not a layer index below ${c.numLayers}`);
      if (typeof v !== "object" || v === null || Array.isArray(v)) r.bad(`per_layer_config.${k} is not an object`);
      const o = v as Record<string, unknown>;
      const headDim = posInt(o.head_dim, `per_layer_config.${k}.head_dim`);
      const kvHeads = posInt(o.num_key_value_heads, `per_layer_config.${k}.num_key_value_heads`);
      out.set(i, { ...(headDim ? { headDim } : {}), ...(kvHeads ? { kvHeads } : {}) });
    }
    return out;
  }
  // Google's configs: global_head_dim for the full layers, and their own kv heads only with attention_k_eq_v.
  const headDim = r.optInt("global_head_dim") || undefined;
  const kvHeads = r.optBool("attention_k_eq_v") ? r.optInt("num_global_key_value_heads") || undefined : undefined;
  c.layerTypes!.forEach((t, i) => {
    if (t === "full_attention") out.set(i, { ...(headDim ? { headDim } : {}), ...(kvHeads ? { kvHeads } : {}) });
  });
  return out;
}

function layerGeometry(c: ModelConfig, r: ConfigReader): LayerGeometry[] {
  const types = c.layerTypes!;
  const L = c.numLayers;
  const shared = r.optInt("num_kv_shared_layers") ?? 0;
  if (shared > L) r.bad(`num_kv_shared_layers ${shared} is more than num_hidden_layers ${L}`);
  const first = L - shared;
  const kEqV = r.optBool("attention_k_eq_v") ?? false;
  const overrides = perLayerOverrides(r, c);
  return types.map((t, i) => {
    const sliding = t === "sliding_attention";
    const o = overrides.get(i) ?? {};
    const g: LayerGeometry = {
      sliding,
      headDim: o.headDim ?? c.headDim,
      kvHeads: o.kvHeads ?? c.numKvHeads,
      window: sliding ? (c.slidingWindow ?? DEFAULTS.sliding_window) : 0,
      kEqV: kEqV && !sliding,
    };
    if (c.numHeads % g.kvHeads !== 0) r.bad(`layer ${i}: num_attention_heads ${c.numHeads} is not a multiple of its ${g.kvHeads} kv heads`);
    if (i >= first) {
      let src = -1;
      for (let j = first - 1; j >= 0 && src < 0; j--) if (types[j] === t) src = j;
      if (src < 0) r.bad(`num_kv_shared_layers ${shared}: layer ${i} (${t}) has no earlier layer of its type to share`);
      g.kvSource = src;
    }
    return g;
  });
}

/** Each layer's KV cache, for `rmlx info` (the model's own layer specs are the same). */
function kvLayout(c: ModelConfig): LayerKvLayout[] {
  const r = new ConfigReader(c.raw, DEFAULTS, "config.json");
  return layerGeometry(c, r).map((g) => ({
    kvHeads: g.kvHeads,
    headDim: g.headDim,
    window: g.window,
    ...(g.kvSource !== undefined ? { source: g.kvSource } : {}),
  }));
}

/**
 * transformers casts the embedding scales to the table's dtype before multiplying, which is the float32 value in
 * the float32 computation the references use (bf16 rounding of sqrt(8) alone moves logits by 1e-3 of their scale).
 * Activations here are f32, so the scales are too.
 */
function embedScale(dim: number): number {
  return Math.fround(Math.sqrt(dim));
}

interface AttentionWeights {
  q: Weight;
  o: Weight;
  qNorm: Tensor;
  /** Absent on KV-shared layers. */
  k?: Weight;
  /** Absent on KV-shared layers and where keys equal values. */
  v?: Weight;
  kNorm?: Tensor;
  qBias?: Tensor;
  kBias?: Tensor;
  vBias?: Tensor;
  oBias?: Tensor;
}

interface MoeWeights extends ExpertStacks {
  proj: Weight;
  scale: Tensor;
  perExpertScale: Tensor;
  preNorm2: Tensor;
  postNorm1: Tensor;
  postNorm2: Tensor;
}

interface PleWeights {
  gate: Weight;
  proj: Weight;
  norm: Tensor;
}

interface Block {
  geom: LayerGeometry;
  rope: RopeSetup;
  inputNorm: Tensor;
  postAttnNorm: Tensor;
  preFfnNorm: Tensor;
  postFfnNorm: Tensor;
  attn: AttentionWeights;
  mlp: MlpWeights;
  moe?: MoeWeights;
  ple?: PleWeights;
  layerScalar: number;
}

interface Moe {
  numExperts: number;
  topK: number;
  intermediate: number;
}

function attentionWeights(w: ModelWeights, p: string, g: LayerGeometry): AttentionWeights {
  const a: AttentionWeights = {
    q: w.linear(`${p}.q_proj`),
    o: w.linear(`${p}.o_proj`),
    qNorm: w.tensor(`${p}.q_norm.weight`),
  };
  if (g.kvSource === undefined) {
    a.k = w.linear(`${p}.k_proj`);
    a.kNorm = w.tensor(`${p}.k_norm.weight`);
    if (!g.kEqV) a.v = w.linear(`${p}.v_proj`);
  }
  const biases = { qBias: "q_proj", kBias: "k_proj", vBias: "v_proj", oBias: "o_proj" } as const;
  for (const [k, mod] of Object.entries(biases)) {
    if ((k === "kBias" && !a.k) || (k === "vBias" && !a.v)) continue;
    const b = w.optTensor(`${p}.${mod}.bias`);
    if (b) a[k as keyof typeof biases] = b;
  }
  return a;
}

function moeWeights(w: ModelWeights, p: string, moe: Moe): MoeWeights {
  const base = {
    proj: w.linear(`${p}.router.proj`),
    scale: w.tensor(`${p}.router.scale`),
    perExpertScale: w.tensor(`${p}.router.per_expert_scale`),
    preNorm2: w.tensor(`${p}.pre_feedforward_layernorm_2.weight`),
    postNorm1: w.tensor(`${p}.post_feedforward_layernorm_1.weight`),
    postNorm2: w.tensor(`${p}.post_feedforward_layernorm_2.weight`),
  };
  return { ...base, ...expertStacks(w, p, `${p}.experts.switch_glu`, moe.numExperts) };
}

function weightRows(wt: Weight): number {
  return (isQuantized(wt) ? wt.scales : wt).shape[0]!;
}

class Gemma4Model implements Model {
  readonly config: ModelConfig;
  readonly layers: LayerCacheSpec[];
  readonly vocabSize: number;
  private readonly eps: number;
  private readonly hidden: number;
  private readonly ends: StackEnds;
  private readonly embedScale: number;
  private readonly finalSoftcap: number | undefined;
  private readonly moe: Moe | undefined;
  private readonly ple:
    | { dim: number; vocab: number; table: Weight; scale: number; proj: Weight; norm: Tensor }
    | undefined;
  private readonly blocks: Block[] = [];

  constructor(
    readonly backend: Backend,
    md: ModelDir,
    w: ModelWeights,
  ) {
    const c = md.config;
    const source = `${md.dir}/config.json`;
    const r: ConfigReader = new ConfigReader(c.raw, DEFAULTS, source);
    const geometry = layerGeometry(c, r);
    this.config = c;
    this.eps = c.rmsNormEps;
    this.hidden = c.hiddenSize;
    this.vocabSize = c.vocabSize;
    this.ends = stackEnds(w);
    this.embedScale = embedScale(c.hiddenSize);
    this.finalSoftcap = r.optNum("final_logit_softcapping") || undefined;

    const pleDim = r.optInt("hidden_size_per_layer_input") ?? 0;
    if (pleDim > 0) {
      const table = w.linear("model.embed_tokens_per_layer");
      const vocab = r.optInt("vocab_size_per_layer_input") ?? c.vocabSize;
      if (weightRows(table) !== vocab)
        throw new RmlxError("bad_model", `${md.dir}: embed_tokens_per_layer has ${weightRows(table)} rows where vocab_size_per_layer_input is ${vocab}`);
      this.ple = {
        dim: pleDim,
        vocab,
        table,
        scale: embedScale(pleDim),
        proj: w.linear("model.per_layer_model_projection"),
        norm: w.tensor("model.per_layer_projection_norm.weight"),
      };
    }
    if (r.optBool("enable_moe_block")) {
      const numExperts = r.optInt("num_experts");
      const topK = r.optInt("top_k_experts");
      const intermediate = r.optInt("moe_intermediate_size");
      if (!numExperts || !topK || !intermediate)
        r.bad("enable_moe_block needs num_experts, top_k_experts and moe_intermediate_size");
      if (topK > numExperts) r.bad(`top_k_experts ${topK} is more than num_experts ${numExperts}`);
      this.moe = { numExperts, topK, intermediate };
    }

    const ropes = new Map<string, RopeSetup>();
    const ropeFor = (g: LayerGeometry) => {
      const key = `${g.sliding}/${g.headDim}`;
      let s = ropes.get(key);
      if (!s) {
        const rope: RopeConfig = g.sliding ? (c.localRope ?? { type: "default", theta: 10_000 }) : c.rope;
        s = ropeSetup(rope, g.headDim, c.contextLength);
        ropes.set(key, s);
      }
      return s;
    };
    geometry.forEach((g, i) => {
      const p = `model.layers.${i}`;
      const b: Block = {
        geom: g,
        rope: ropeFor(g),
        inputNorm: w.tensor(`${p}.input_layernorm.weight`),
        postAttnNorm: w.tensor(`${p}.post_attention_layernorm.weight`),
        preFfnNorm: w.tensor(`${p}.pre_feedforward_layernorm.weight`),
        postFfnNorm: w.tensor(`${p}.post_feedforward_layernorm.weight`),
        attn: attentionWeights(w, `${p}.self_attn`, g),
        mlp: mlpWeights(w, `${p}.mlp`),
        layerScalar: w.has(`${p}.layer_scalar`) ? w.value(`${p}.layer_scalar`) : 1,
      };
      if (this.moe) b.moe = moeWeights(w, p, this.moe);
      if (this.ple) {
        b.ple = {
          gate: w.linear(`${p}.per_layer_input_gate`),
          proj: w.linear(`${p}.per_layer_projection`),
          norm: w.tensor(`${p}.post_per_layer_input_norm.weight`),
        };
      }
      this.blocks.push(b);
    });
    this.layers = geometry.map((g) => ({
      kvHeads: g.kvHeads,
      headDim: g.headDim,
      window: g.window,
      ...(g.kvSource !== undefined ? { kvSource: g.kvSource } : {}),
    }));
  }

  /** Each layer's own input [T, L, P]: its row of the PLE table mixed with a projection of the embeddings h0. */
  private perLayerInputs(h0: Tensor, step: ForwardStep): Tensor {
    const be = this.backend;
    const ple = this.ple!;
    const T = step.tokens.length;
    const L = this.blocks.length;
    // mlx-lm's rule for ids past the table (the multimodal tokens of a smaller table): row 0. Ids still on the
    // device were picked by this model's head, below a table at least as large as its vocabulary; a smaller table
    // needs them on the host first.
    const device = step.tokenIds;
    const ids =
      device && ple.vocab >= this.vocabSize ? device : (device ? be.toInt32(device) : step.tokens).map((t) => (t < ple.vocab ? t : 0));
    const tok = be.reshape(be.scale(embed(be, ple.table, ids), ple.scale), [T, L, ple.dim]);
    const proj = be.reshape(be.scale(be.linear(h0, ple.proj), 1 / Math.sqrt(this.hidden)), [T, L, ple.dim]);
    return be.scale(be.add(be.rmsNorm(proj, ple.norm, this.eps), tok), Math.SQRT1_2);
  }

  private attention(x: Tensor, b: Block, step: ForwardStep, layer: number): Tensor {
    const be = this.backend;
    const { geom: g, attn: w, rope } = b;
    const T = x.shape[0]!;
    const heads = this.config.numHeads;
    const positions = step.batch.positions;
    checkPositions(rope, positions);
    let q = be.reshape(be.linear(x, w.q, w.qBias), [T, heads, g.headDim]);
    q = be.rope(be.rmsNorm(q, w.qNorm, this.eps), positions, rope.opts);
    const pool = step.pools[g.kvSource ?? layer]!;
    // Sliding layers of a windowed cache keep only their window, in blocks of their own.
    const view = g.window > 0 && step.windowed ? step.windowed : step;
    if (w.k) {
      const kRaw = be.reshape(be.linear(x, w.k, w.kBias), [T, g.kvHeads, g.headDim]);
      const vRaw = w.v ? be.reshape(be.linear(x, w.v, w.vBias), [T, g.kvHeads, g.headDim]) : kRaw;
      const k = be.rope(be.rmsNorm(kRaw, w.kNorm!, this.eps), positions, rope.opts);
      be.kvWrite(pool, k, be.rmsNorm(vRaw, null, this.eps), view.slots);
    }
    const a = be.pagedAttention(q, pool, view.batch, g.window > 0 ? { scale: 1, window: g.window } : { scale: 1 });
    return be.linear(be.reshape(a, [T, heads * g.headDim]), w.o, w.oBias);
  }

  /** The experts' part of the feed-forward, routed by the residual h. */
  private experts(h: Tensor, m: MoeWeights): Tensor {
    const be = this.backend;
    const { numExperts: E, topK: k, intermediate: I } = this.moe!;
    const T = h.shape[0]!;
    const scores = be.linear(be.scale(be.rmsNorm(h, m.scale, this.eps), 1 / Math.sqrt(this.hidden)), m.proj);
    // The renormalised top-k of the softmax is the softmax over the top-k scores.
    const top = be.topk(scores, k);
    const perExpert = be.reshape(be.take(be.reshape(m.perExpertScale, [E, 1]), top.indices), [T, k]);
    const weights = be.mul(be.softmax(top.values, -1), perExpert);
    return mixExperts(be, be.rmsNorm(h, m.preNorm2, this.eps), m, top.indices, weights, I, "gelu_tanh");
  }

  forward(step: ForwardStep): Tensor {
    const be = this.backend;
    const eps = this.eps;
    const T = step.tokens.length;
    let h = be.scale(embed(be, this.ends.embed, stepTokens(step)), this.embedScale);
    const ple = this.ple ? this.perLayerInputs(h, step) : undefined;
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i]!;
      const x = h;
      h = runLayer(be, step, () => {
        const a = this.attention(be.rmsNorm(x, b.inputNorm, eps), b, step, i);
        const y = be.add(x, be.rmsNorm(a, b.postAttnNorm, eps));
        let f = gatedMlp(be, be.rmsNorm(y, b.preFfnNorm, eps), b.mlp, "gelu_tanh");
        if (b.moe) f = be.add(be.rmsNorm(f, b.moe.postNorm1, eps), be.rmsNorm(this.experts(y, b.moe), b.moe.postNorm2, eps));
        let z = be.add(y, be.rmsNorm(f, b.postFfnNorm, eps));
        if (b.ple && ple) {
          const mine = be.reshape(be.slice(ple, 1, i, i + 1), [T, this.ple!.dim]);
          const gated = be.mul(be.geluTanh(be.linear(z, b.ple.gate)), mine);
          z = be.add(z, be.rmsNorm(be.linear(gated, b.ple.proj), b.ple.norm, eps));
        }
        return b.layerScalar === 1 ? z : be.scale(z, b.layerScalar);
      });
    }
    h = selectRows(be, h, step.logitRows);
    const logits = be.linear(be.rmsNorm(h, this.ends.norm, eps), this.ends.head);
    return this.finalSoftcap ? be.softcap(logits, this.finalSoftcap) : logits;
  }
}

/** The multimodal wrappers' parts besides the language model (vision is dropped by textModelName). */
const TOWERS = /(^|\.)(audio_tower|embed_audio|embed_vision|vision_embedder)\./;
const SHARED_KV = /^model\.layers\.(\d+)\.self_attn\.(k_proj|v_proj|k_norm|v_norm)\./;

/**
 * Names of transformers' Gemma4ForCausalLM / Gemma4ForConditionalGeneration and of mlx-lm / mlx-vlm snapshots, as
 * mlx-lm's text model has them: towers dropped, the k/v weights of KV-shared layers dropped (Google's checkpoints
 * store them, nothing reads them). transformers' fused expert stacks load as they are; convert writes them as
 * mlx-lm's switch_glu stacks (gate_up split in two).
 */
function sanitize({ tied, config }: SanitizeContext): Sanitizer {
  const layers = config.int("num_hidden_layers");
  const firstShared = layers - (config.optInt("num_kv_shared_layers") ?? 0);
  return {
    rename(name) {
      if (TOWERS.test(name)) return null;
      const n = textModelName(name, tied);
      if (n === null) return null;
      const shared = SHARED_KV.exec(n);
      if (shared && Number(shared[1]) >= firstShared) return null;
      return { name: n };
    },
    split(name, shape) {
      if (shape.length !== 3) return null;
      if (name.endsWith(".experts.down_proj")) {
        return [{ name: `${name.slice(0, -".down_proj".length)}.switch_glu.down_proj.weight`, axis: 1, start: 0, end: shape[1]! }];
      }
      if (!name.endsWith(".experts.gate_up_proj") || shape[1]! % 2 !== 0) return null;
      const base = name.slice(0, -".gate_up_proj".length);
      const I = shape[1]! / 2;
      return [
        { name: `${base}.switch_glu.gate_proj.weight`, axis: 1, start: 0, end: I },
        { name: `${base}.switch_glu.up_proj.weight`, axis: 1, start: I, end: 2 * I },
      ];
    },
  };
}

export const gemma4: Family = {
  modelTypes: ["gemma4_text", "gemma4"],
  configDefaults: DEFAULTS,
  adjustConfig,
  kvLayout,
  sanitize,
  nested: { gemma4: "language_model." },
  // mlx-lm's quant_predicate: the routers at 8 bits.
  quantOverride: (path) => (path.endsWith("router.proj") ? { bits: 8, groupSize: 64 } : null),
  load: (backend, md, w) => new Gemma4Model(backend, md, w),
};
