// What `rmlx info` reports about a model directory, computed from its files alone (no backend involved).
import { kvCodecBytes, kvCodecProblem, parseKvCodec, type KvCodec } from "../quant/kv_codec.ts";
import { configFamily, type LayerKvLayout, type LayerType, type ModelConfig, type RopeConfig } from "./config.ts";
import type { ModelDir } from "./model_dir.ts";
import { describeSpec, quantSpecFor } from "./quant_config.ts";
import { numel, type TensorEntry } from "./safetensors.ts";

const KV_CONTEXTS = [4096, 32768] as const;
/** The KV codecs whose cache size `rmlx info` reports (bf16 is the size of f16, f32 twice it). */
export const INFO_KV_CODECS = ["f16", "q8", "fp8", "k8v4", "q4", "turbo4", "turbo3"] as const;

export interface ModelSummary {
  model_type: string;
  architecture: string;
  parameters: number;
  layers: number;
  layer_types?: Partial<Record<LayerType, number>>;
  hidden_size: number;
  heads: number;
  kv_heads: number;
  head_dim: number;
  intermediate_size: number;
  experts?: number;
  experts_per_token?: number;
  vocab_size: number;
  context_length: number;
  rope: RopeSummary;
  local_rope?: RopeSummary;
  sliding_window?: number;
  /** One line, e.g. "attention/mlp: affine 4-bit g64; embed_tokens: affine 6-bit g64; norms: bf16". */
  quantization: string;
  /** Tensor class -> (format -> number of tensors). */
  quantization_classes: Record<string, Record<string, number>>;
  /** Weight files on disk, headers included. */
  size_bytes: number;
  /** Tensor bytes: what the mmapped weights occupy once resident. */
  weights_bytes: number;
  /** f16 KV cache bytes for one sequence of this many tokens. */
  kv_cache_bytes: Record<string, number>;
  /**
   * Recurrent state of the linear-attention (Gated DeltaNet) layers for one sequence: their conv inputs and
   * delta-rule state, f32 as the state slots hold it; the same at any context length.
   */
  recurrent_state_bytes?: number;
  /** Multi-token-prediction weights (`mtp.*`) the checkpoint carries (counted in the totals; --draft-kind mtp drafts with them). */
  mtp?: { layers: number; parameters: number; bytes: number };
  /**
   * KV cache bytes for one sequence, per --kv-quant codec (INFO_KV_CODECS) and number of tokens; null where the
   * codec cannot store a layer's head_dim.
   */
  kv_cache_bytes_by_codec: Record<string, Record<string, number | null>>;
  /** Gemma 4's per-layer embedding table: a large share of the weights, read a few rows per token. */
  per_layer_embeddings?: { parameters: number; bytes: number };
  tokenizer: boolean;
  chat_template: boolean;
}

export interface RopeSummary {
  type: string;
  base: number;
  factor?: number;
  partial_rotary_factor?: number;
}

function ropeSummary(r: RopeConfig): RopeSummary {
  const s: RopeSummary = { type: r.type, base: r.theta };
  if (r.factor !== undefined) s.factor = r.factor;
  if (r.partialRotaryFactor !== undefined && r.partialRotaryFactor !== 1) s.partial_rotary_factor = r.partialRotaryFactor;
  return s;
}

const CLASS_ORDER = ["attention", "mlp", "router", "embed_tokens", "embed_tokens_per_layer", "lm_head", "norms", "bias", "other"];

/** The tensor class a parameter name belongs to, for the quantization summary. */
export function tensorClass(name: string): string {
  const parts = name.split(".");
  const leaf = parts.at(-1) ?? "";
  const module = parts.at(-2) ?? "";
  if (leaf === "bias") return "bias";
  if (/norm/.test(module) || /norm/.test(leaf)) return "norms";
  if (parts.includes("embed_tokens") || module === "wte") return "embed_tokens";
  if (parts.includes("embed_tokens_per_layer")) return "embed_tokens_per_layer";
  if (parts.includes("lm_head")) return "lm_head";
  if (parts.includes("router") || module === "gate" || module === "shared_expert_gate") return "router";
  if (parts.some((p) => p === "self_attn" || p === "attn" || p === "attention" || p === "linear_attn")) return "attention";
  if (parts.some((p) => p === "mlp" || p === "experts" || p === "feed_forward" || p === "switch_mlp")) return "mlp";
  return "other";
}

function baseOf(name: string): string {
  const i = name.lastIndexOf(".");
  return i < 0 ? "" : name.slice(0, i);
}

interface Counted {
  parameters: number;
  classes: Map<string, Map<string, number>>;
}

function countTensors(md: ModelDir): Counted {
  const { weights, quant } = md;
  const classes = new Map<string, Map<string, number>>();
  let parameters = 0;
  const note = (cls: string, fmt: string) => {
    const m = classes.get(cls) ?? new Map<string, number>();
    m.set(fmt, (m.get(fmt) ?? 0) + 1);
    classes.set(cls, m);
  };
  for (const t of weights.entries()) {
    const base = baseOf(t.name);
    const leaf = t.name.slice(base.length + 1);
    const quantized = weights.has(`${base}.scales`);
    // Quantization side data is not a parameter of the model.
    if (quantized && (leaf === "scales" || leaf === "biases" || leaf === "global_scale")) continue;
    if (leaf === "weight_scale" && weights.has(`${base}.weight`)) continue;
    const spec = quantized && leaf === "weight" ? quantSpecFor(quant, base, weights) : null;
    parameters += logicalParams(t, spec?.bits, weights.has(`${base}.weight_scale`) && t.dtype === "U8");
    note(tensorClass(t.name), spec ? describeSpec(spec) : t.dtype === "U8" && leaf === "weight" ? "ternary" : t.dtype.toLowerCase());
  }
  return { parameters, classes };
}

function logicalParams(t: TensorEntry, bits: number | undefined, ternary: boolean): number {
  const n = numel(t.shape);
  if (bits !== undefined) return (n * 32) / bits;
  // Ternary bitnet weights pack four values per byte.
  if (ternary) return n * 4;
  return n;
}

/** "attention/mlp: affine 4-bit g64; embed_tokens: affine 6-bit g64; norms: bf16" */
export function describeClasses(classes: Map<string, Map<string, number>>): string {
  const groups = new Map<string, string[]>();
  const ordered = [...classes.keys()].sort((a, b) => CLASS_ORDER.indexOf(a) - CLASS_ORDER.indexOf(b));
  for (const cls of ordered) {
    const fmts = [...classes.get(cls)!.entries()].sort((a, b) => b[1] - a[1]);
    const desc = fmts.length === 1 ? fmts[0]![0] : fmts.map(([f, n]) => `${f} (${n})`).join(", ");
    groups.set(desc, [...(groups.get(desc) ?? []), cls]);
  }
  return [...groups.entries()].map(([desc, cls]) => `${cls.join("/")}: ${desc}`).join("; ");
}

/** Each layer's KV as the config's common sizes say: sliding layers keep their window, linear-attention layers none. */
function plainKvLayout(c: ModelConfig): (LayerKvLayout | null)[] {
  return Array.from({ length: c.numLayers }, (_, i) => {
    const type: LayerType = c.layerTypes?.[i] ?? "full_attention";
    if (type === "linear_attention") return null;
    return { kvHeads: c.numKvHeads, headDim: c.headDim, window: type === "sliding_attention" ? (c.slidingWindow ?? 0) : 0 };
  });
}

/**
 * K and V for one sequence of `tokens` tokens in a KV codec (f16 unless named), as the family lays its caches out
 * (Gemma 4: global layers of their own head size, the last layers reading an earlier layer's cache): sliding layers
 * capped at the window, layers sharing another's cache and linear-attention layers none. null when the codec
 * cannot store some layer's head_dim.
 */
export function kvCacheBytes(md: ModelDir, tokens: number): number;
export function kvCacheBytes(md: ModelDir, tokens: number, codec: KvCodec): number | null;
export function kvCacheBytes(md: ModelDir, tokens: number, codec: KvCodec = parseKvCodec("f16")): number | null {
  const c = md.config;
  const layout = configFamily(c)?.kvLayout?.(c) ?? plainKvLayout(c);
  let total = 0;
  for (const l of layout) {
    if (!l || l.source !== undefined) continue;
    if (kvCodecProblem(codec, l.headDim)) return null;
    const len = l.window > 0 ? Math.min(tokens, l.window) : tokens;
    total += kvCodecBytes(codec, l.kvHeads, l.headDim) * len;
  }
  return total;
}

/**
 * Bytes of one sequence's Gated DeltaNet state over all linear-attention layers: per layer (K - 1) conv inputs of
 * 2·Hk·Dk + Hv·Dv values and an Hv × Dk × Dv delta-rule state, all f32. Undefined for models without such layers.
 */
export function recurrentStateBytes(c: ModelConfig): number | undefined {
  const linear = c.layerTypes?.filter((t) => t === "linear_attention").length ?? 0;
  if (linear === 0) return undefined;
  const num = (k: string, d?: number) => (typeof c.raw[k] === "number" ? (c.raw[k] as number) : d);
  const hk = num("linear_num_key_heads");
  const hv = num("linear_num_value_heads");
  const dk = num("linear_key_head_dim");
  const dv = num("linear_value_head_dim");
  const kernel = num("linear_conv_kernel_dim", 4)!;
  if (hk === undefined || hv === undefined || dk === undefined || dv === undefined) return undefined;
  const convDim = 2 * hk * dk + hv * dv;
  return linear * 4 * (Math.max(1, kernel - 1) * convDim + hv * dk * dv);
}

/** The `mtp.*` tensors: decoder layers (by index, else as the config states), logical parameters and bytes. */
function mtpWeights(md: ModelDir): { layers: number; parameters: number; bytes: number } | undefined {
  const { weights, quant } = md;
  const layers = new Set<string>();
  let parameters = 0;
  let bytes = 0;
  for (const t of weights.entries()) {
    if (!/(^|\.)mtp\./.test(t.name)) continue;
    bytes += t.bytes.byteLength;
    const layer = /(?:^|\.)mtp\.layers\.(\d+)\./.exec(t.name);
    if (layer) layers.add(layer[1]!);
    const base = baseOf(t.name);
    const leaf = t.name.slice(base.length + 1);
    const quantized = weights.has(`${base}.scales`);
    if (quantized && (leaf === "scales" || leaf === "biases")) continue;
    const spec = quantized && leaf === "weight" ? quantSpecFor(quant, base, weights) : null;
    parameters += logicalParams(t, spec?.bits, false);
  }
  if (bytes === 0) return undefined;
  const stated = md.config.raw.mtp_num_hidden_layers;
  return { layers: layers.size > 0 ? layers.size : typeof stated === "number" ? stated : 0, parameters, bytes };
}

/**
 * Why a KV codec cannot hold this model's cache (a layer with a cache of its own whose head_dim the codec's group
 * does not divide), or null. The same layout as kvCacheBytes, from the config alone.
 */
export function kvCodecProblemFor(c: ModelConfig, codec: KvCodec): string | null {
  const layout = configFamily(c)?.kvLayout?.(c) ?? plainKvLayout(c);
  for (const l of layout) {
    if (!l || l.source !== undefined) continue;
    const why = kvCodecProblem(codec, l.headDim);
    if (why) return why;
  }
  return null;
}

/** Parameters and bytes of the per-layer embedding table (weights and their quantization scales), if there is one. */
function perLayerEmbeddings(md: ModelDir): { parameters: number; bytes: number } | undefined {
  const { weights, quant } = md;
  let parameters = 0;
  let bytes = 0;
  for (const t of weights.entries()) {
    if (!/(^|\.)embed_tokens_per_layer\./.test(t.name)) continue;
    bytes += t.bytes.byteLength;
    const base = baseOf(t.name);
    if (!t.name.endsWith(".weight")) continue;
    const spec = weights.has(`${base}.scales`) ? quantSpecFor(quant, base, weights) : null;
    parameters += logicalParams(t, spec?.bits, false);
  }
  return bytes > 0 ? { parameters, bytes } : undefined;
}

export function summarize(md: ModelDir): ModelSummary {
  const c = md.config;
  const { parameters, classes } = countTensors(md);
  const s: ModelSummary = {
    model_type: c.modelType,
    architecture: c.architecture,
    parameters,
    layers: c.numLayers,
    hidden_size: c.hiddenSize,
    heads: c.numHeads,
    kv_heads: c.numKvHeads,
    head_dim: c.headDim,
    intermediate_size: c.intermediateSize,
    vocab_size: c.vocabSize,
    context_length: c.contextLength,
    rope: ropeSummary(c.rope),
    quantization: describeClasses(classes),
    quantization_classes: Object.fromEntries([...classes].map(([k, m]) => [k, Object.fromEntries(m)])),
    size_bytes: md.weights.fileBytes,
    weights_bytes: md.weights.totalBytes,
    kv_cache_bytes: Object.fromEntries(KV_CONTEXTS.map((n) => [String(n), kvCacheBytes(md, n)])),
    kv_cache_bytes_by_codec: Object.fromEntries(
      INFO_KV_CODECS.map((name) => [name, Object.fromEntries(KV_CONTEXTS.map((n) => [String(n), kvCacheBytes(md, n, parseKvCodec(name))]))]),
    ),
    tokenizer: md.tokenizerJson !== undefined,
    chat_template: md.chatTemplate !== undefined,
  };
  if (c.layerTypes) {
    const counts: Partial<Record<LayerType, number>> = {};
    for (const t of c.layerTypes) counts[t] = (counts[t] ?? 0) + 1;
    s.layer_types = counts;
  }
  if (c.numExperts !== undefined) s.experts = c.numExperts;
  if (c.numExpertsPerTok !== undefined) s.experts_per_token = c.numExpertsPerTok;
  if (c.localRope) s.local_rope = ropeSummary(c.localRope);
  if (c.slidingWindow !== undefined) s.sliding_window = c.slidingWindow;
  const state = recurrentStateBytes(c);
  if (state !== undefined) s.recurrent_state_bytes = state;
  const mtp = mtpWeights(md);
  if (mtp) s.mtp = mtp;
  const ple = perLayerEmbeddings(md);
  if (ple) s.per_layer_embeddings = ple;
  return s;
}

/**
 * Why this build cannot run the model, or null when it can. `supported` lists the model_types that have a forward
 * pass; the text config's model_type decides when the config nests one.
 */
export function unsupportedReason(md: ModelDir, supported: readonly string[]): string | null {
  const textType = typeof md.config.raw.model_type === "string" ? md.config.raw.model_type : md.config.modelType;
  if (!supported.includes(textType)) return `the ${textType} architecture is not implemented yet`;
  // BitNet's own family runs its ternary checkpoints as they are
  if (md.quant?.legacyMethod && !md.quant.global && !(md.quant.legacyMethod === "bitnet" && textType === "bitnet"))
    return `${md.quant.legacyMethod} checkpoints must first be converted with 'rmlx convert'`;
  return null;
}
