// config.json -> ModelConfig: what every decoder's config says (sizes, rope, layer kinds, vocabulary, eos). Reads
// both the legacy keys (rope_theta, rope_scaling) and the transformers-5 form (rope_parameters, possibly one entry
// per layer type), and configs that nest the language model under text_config. What a family adds (its own args,
// the values its configs leave out) lives in its file under src/models/.
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { RmlxError } from "../errors.ts";

export type RopeType = "default" | "linear" | "dynamic" | "llama3" | "yarn" | "longrope" | "proportional";

export interface RopeConfig {
  /** "proportional" is gemma4's global-layer rope: rotary frequencies spread over the full head dim. */
  type: RopeType;
  theta: number;
  factor?: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
  betaFast?: number;
  betaSlow?: number;
  mscale?: number;
  mscaleAllDim?: number;
  attentionFactor?: number;
  partialRotaryFactor?: number;
}

export type LayerType = "full_attention" | "sliding_attention" | "linear_attention";

export interface ModelConfig {
  /** The directory's model_type, e.g. "qwen3", "gemma3" (the outer one when the config nests text_config). */
  modelType: string;
  /** architectures[0], e.g. "Qwen3ForCausalLM"; "" when absent. */
  architecture: string;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  contextLength: number;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  /** The global / full-attention rope. */
  rope: RopeConfig;
  /** The sliding-window layers' rope (gemma3 rope_local_base_freq, rope_parameters.sliding_attention). */
  localRope?: RopeConfig;
  /** One entry per layer, from layer_types or derived from sliding_window_pattern / full_attention_interval. */
  layerTypes?: LayerType[];
  slidingWindow?: number;
  numExperts?: number;
  numExpertsPerTok?: number;
  eosTokenIds: number[];
  bosTokenId?: number;
  /** The text config as read: top-level keys overlaid by text_config's when the config nests one. */
  raw: Record<string, unknown>;
}

/**
 * One layer's KV cache as its family lays it out: K/V heads and head size, sliding window (0 = full attention),
 * and `source`, the earlier layer whose cache it reads instead of keeping one (Gemma 4's KV-shared layers).
 */
export interface LayerKvLayout {
  kvHeads: number;
  headDim: number;
  window: number;
  source?: number;
}

/** What a family adds to parsing: the values its configs leave out, and what only it knows about them. */
export interface FamilyConfigRules {
  defaults: Readonly<Record<string, unknown>>;
  /** Checks and fixes the family applies to the parsed config, as its reference implementation does. */
  adjust?: (cfg: ModelConfig, r: ConfigReader) => void;
  /**
   * Per-layer KV geometry when layers differ in more than window (Gemma 4: global layers of their own head size,
   * layers that share an earlier layer's cache); null for a layer that keeps no KV (linear attention).
   */
  kvLayout?: (cfg: ModelConfig) => (LayerKvLayout | null)[];
}

/**
 * What parsing needs from the model registry: whether a model_type is known at all, and the config.json values its
 * family's published configs leave out. The registry (src/models/registry.ts) sits above io and hands its lookup
 * over as it loads.
 */
export type ConfigFamilies = (modelType: string) => FamilyConfigRules | undefined;

let families: ConfigFamilies | undefined;

export function setConfigFamilies(lookup: ConfigFamilies): void {
  families = lookup;
}

/** The family rules of a parsed config's text model (undefined before the registry is loaded). */
export function configFamily(cfg: ModelConfig): FamilyConfigRules | undefined {
  const t = cfg.raw.model_type;
  return families?.(typeof t === "string" ? t : cfg.modelType);
}

const ROPE_TYPES: Record<string, RopeType> = {
  default: "default",
  linear: "linear",
  dynamic: "dynamic",
  llama3: "llama3",
  yarn: "yarn",
  longrope: "longrope",
  su: "longrope",
  proportional: "proportional",
  // Multimodal rope sections collapse to plain rope when every position id is the text position.
  mrope: "default",
};

const LAYER_TYPES: ReadonlySet<string> = new Set(["full_attention", "sliding_attention", "linear_attention"]);

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Typed reads of a config's keys, falling back on a family's defaults; errors name the file. */
export class ConfigReader {
  constructor(
    readonly raw: Record<string, unknown>,
    readonly defaults: Readonly<Record<string, unknown>>,
    readonly source: string,
  ) {}

  bad(problem: string): never {
    throw new RmlxError("bad_model", `${this.source}: ${problem}`);
  }

  get(key: string): unknown {
    // An explicit null means "none" (e.g. final_logit_softcapping: null); only an absent key takes the default.
    const v = this.raw[key];
    return v === undefined ? this.defaults[key] : v === null ? undefined : v;
  }

  /** Whether the config or the defaults name the key (an explicit null counts). */
  has(key: string): boolean {
    return this.raw[key] !== undefined || this.defaults[key] !== undefined;
  }

  optNum(key: string): number | undefined {
    const v = this.get(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v)) this.bad(`${key} is not a number`);
    return v;
  }

  optInt(key: string): number | undefined {
    const v = this.optNum(key);
    if (v !== undefined && (!Number.isInteger(v) || v < 0)) this.bad(`${key} is not a non-negative integer`);
    return v;
  }

  int(key: string): number {
    const v = this.optInt(key);
    if (v === undefined) this.bad(`missing ${key}`);
    return v;
  }

  optBool(key: string): boolean | undefined {
    const v = this.get(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "boolean") this.bad(`${key} is not true or false`);
    return v;
  }
}

function numField(r: ConfigReader, obj: Record<string, unknown>, key: string, where: string): number | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v)) r.bad(`${where}.${key} is not a number`);
  return v;
}

/** One rope block (rope_scaling or a rope_parameters entry); thetaFallback covers a legacy top-level rope_theta. */
function parseRope(r: ConfigReader, p: Record<string, unknown>, where: string, thetaFallback: number | undefined): RopeConfig {
  const typeName = p.rope_type ?? p.type ?? "default";
  if (typeof typeName !== "string") r.bad(`${where}.rope_type is not a string`);
  const type = ROPE_TYPES[typeName];
  if (!type) throw new RmlxError("unsupported", `${r.source}: unknown rope type '${typeName}' (${where}.rope_type)`);
  const theta = numField(r, p, "rope_theta", where) ?? thetaFallback ?? 10_000;
  const rope: RopeConfig = { type, theta };
  const fields: [keyof RopeConfig, string][] = [
    ["factor", "factor"],
    ["lowFreqFactor", "low_freq_factor"],
    ["highFreqFactor", "high_freq_factor"],
    ["originalMaxPositionEmbeddings", "original_max_position_embeddings"],
    ["betaFast", "beta_fast"],
    ["betaSlow", "beta_slow"],
    ["mscale", "mscale"],
    ["mscaleAllDim", "mscale_all_dim"],
    ["attentionFactor", "attention_factor"],
    ["partialRotaryFactor", "partial_rotary_factor"],
  ];
  for (const [k, key] of fields) {
    const v = numField(r, p, key, where);
    if (v !== undefined) (rope as unknown as Record<string, number>)[k] = v;
  }

  if (rope.originalMaxPositionEmbeddings === undefined && (type === "yarn" || type === "longrope" || type === "llama3")) {
    const omp = r.optInt("original_max_position_embeddings");
    if (omp !== undefined) rope.originalMaxPositionEmbeddings = omp;
  }
  const need = (k: keyof RopeConfig, key: string) => {
    if (rope[k] === undefined) r.bad(`${where}: ${typeName} rope needs ${key}`);
  };
  if (type === "linear" || type === "dynamic" || type === "yarn" || type === "llama3") need("factor", "factor");
  if (type === "llama3") {
    need("lowFreqFactor", "low_freq_factor");
    need("highFreqFactor", "high_freq_factor");
    need("originalMaxPositionEmbeddings", "original_max_position_embeddings");
  }
  return rope;
}

function parseRopes(r: ConfigReader): { rope: RopeConfig; localRope?: RopeConfig } {
  const partial = r.optNum("partial_rotary_factor");
  const withPartial = (rope: RopeConfig): RopeConfig =>
    partial !== undefined && rope.partialRotaryFactor === undefined ? { ...rope, partialRotaryFactor: partial } : rope;
  const legacyTheta = r.optNum("rope_theta");
  const rp = r.raw.rope_parameters ?? r.defaults.rope_parameters;
  if (rp !== undefined) {
    if (!isObj(rp)) r.bad("rope_parameters is not an object");
    const perType = Object.keys(rp).some((k) => LAYER_TYPES.has(k));
    if (perType) {
      const full = rp.full_attention;
      const sliding = rp.sliding_attention;
      if (full !== undefined && !isObj(full)) r.bad("rope_parameters.full_attention is not an object");
      if (sliding !== undefined && !isObj(sliding)) r.bad("rope_parameters.sliding_attention is not an object");
      const rope = withPartial(parseRope(r, full ?? {}, "rope_parameters.full_attention", legacyTheta));
      const localRope = sliding ? parseRope(r, sliding, "rope_parameters.sliding_attention", undefined) : undefined;
      return localRope ? { rope, localRope } : { rope };
    }
    return { rope: withPartial(parseRope(r, rp, "rope_parameters", legacyTheta)) };
  }
  const scaling = r.raw.rope_scaling;
  if (scaling !== undefined && scaling !== null && !isObj(scaling)) r.bad("rope_scaling is not an object");
  const rope = withPartial(parseRope(r, scaling ?? {}, "rope_scaling", legacyTheta));
  // gemma3's legacy key for the sliding layers' rope base
  const localTheta = r.optNum("rope_local_base_freq");
  return localTheta !== undefined ? { rope, localRope: { type: "default", theta: localTheta } } : { rope };
}

/** layer_types, or the legacy keys that imply it (the same rule in every transformers config that has them). */
function parseLayerTypes(r: ConfigReader, numLayers: number): LayerType[] | undefined {
  const lt = r.raw.layer_types;
  if (lt !== undefined && lt !== null) {
    if (!Array.isArray(lt) || lt.length !== numLayers)
      r.bad(`layer_types must list ${numLayers} entries, one per layer`);
    for (const t of lt) if (typeof t !== "string" || !LAYER_TYPES.has(t)) r.bad(`unknown layer type '${String(t)}'`);
    return lt as LayerType[];
  }
  if (r.has("sliding_window_pattern")) {
    const pattern = r.int("sliding_window_pattern");
    if (pattern < 1) r.bad("sliding_window_pattern must be at least 1");
    return Array.from({ length: numLayers }, (_, i) => ((i + 1) % pattern === 0 ? "full_attention" : "sliding_attention"));
  }
  if (r.has("full_attention_interval")) {
    const every = r.int("full_attention_interval");
    if (every < 1) r.bad("full_attention_interval must be at least 1");
    return Array.from({ length: numLayers }, (_, i) => ((i + 1) % every === 0 ? "full_attention" : "linear_attention"));
  }
  return undefined;
}

function tokenIds(r: ConfigReader, key: string): number[] {
  const v = r.get(key);
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  if (!list.every((x) => Number.isInteger(x) && x >= 0)) r.bad(`${key} is not a token id or a list of them`);
  return list as number[];
}

/**
 * The text model's config: the top-level keys overlaid by text_config's when the config nests one, without the
 * other modalities' sub-configs.
 */
export function textConfigOf(raw: Record<string, unknown>, source: string): Record<string, unknown> {
  const textConfig = raw.text_config;
  if (textConfig !== undefined && textConfig !== null && !isObj(textConfig))
    throw new RmlxError("bad_model", `${source}: text_config is not an object`);
  const merged: Record<string, unknown> = { ...raw };
  delete merged.text_config;
  delete merged.vision_config;
  delete merged.audio_config;
  if (textConfig) Object.assign(merged, textConfig);
  return merged;
}

export function parseConfig(raw: unknown, source: string): ModelConfig {
  if (!isObj(raw)) throw new RmlxError("bad_model", `${source}: not a JSON object`);
  const modelType = raw.model_type;
  if (typeof modelType !== "string" || modelType === "")
    throw new RmlxError("bad_model", `${source}: missing model_type`);
  const merged = textConfigOf(raw, source);
  const textType = typeof merged.model_type === "string" ? merged.model_type : modelType;
  if (!families) throw new RmlxError("internal", "no model families known: load src/models/registry.ts before parsing configs");
  const family = families(textType);
  if (!families(modelType) || !family)
    throw new RmlxError("unsupported", `${source}: unknown architecture '${families(modelType) ? textType : modelType}'`);
  const r = new ConfigReader(merged, family.defaults, source);

  const architectures = raw.architectures;
  const architecture = Array.isArray(architectures) && typeof architectures[0] === "string" ? architectures[0] : "";
  const hiddenSize = r.int("hidden_size");
  const numLayers = r.int("num_hidden_layers");
  const numHeads = r.int("num_attention_heads");
  const numKvHeads = r.optInt("num_key_value_heads") ?? numHeads;
  if (numHeads === 0 || numKvHeads === 0 || numHeads % numKvHeads !== 0)
    r.bad(`num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  const headDim = r.optInt("head_dim") ?? hiddenSize / numHeads;
  if (!Number.isInteger(headDim) || headDim === 0) r.bad("head_dim missing and hidden_size not divisible by heads");

  const layerTypes = parseLayerTypes(r, numLayers);
  const { rope, localRope } = parseRopes(r);
  const useSliding = r.optBool("use_sliding_window");
  const slidingWindow = useSliding === false ? undefined : r.optInt("sliding_window");

  const cfg: ModelConfig = {
    modelType,
    architecture,
    hiddenSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: r.int("intermediate_size"),
    vocabSize: r.int("vocab_size"),
    contextLength: r.int("max_position_embeddings"),
    rmsNormEps: r.optNum("rms_norm_eps") ?? r.optNum("layer_norm_eps") ?? 1e-6,
    tieWordEmbeddings: r.optBool("tie_word_embeddings") ?? false,
    rope,
    eosTokenIds: tokenIds(r, "eos_token_id"),
    raw: merged,
  };
  if (localRope) cfg.localRope = localRope;
  if (layerTypes) cfg.layerTypes = layerTypes;
  if (slidingWindow !== undefined) cfg.slidingWindow = slidingWindow;
  const bos = tokenIds(r, "bos_token_id");
  if (bos.length > 0) cfg.bosTokenId = bos[0];
  // The spellings of the mixture-of-experts sizes across transformers' families.
  const numExperts = r.optInt("num_experts") ?? r.optInt("num_local_experts");
  const numExpertsPerTok = r.optInt("num_experts_per_tok") ?? r.optInt("top_k_experts");
  if (numExperts !== undefined) cfg.numExperts = numExperts;
  if (numExpertsPerTok !== undefined) cfg.numExpertsPerTok = numExpertsPerTok;
  family.adjust?.(cfg, r);
  return cfg;
}

/** Reads and parses <dir>/config.json. */
export function readJsonFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new RmlxError("bad_model", `${path}: file not found`);
    throw new RmlxError("bad_model", `${path}: cannot read (${code ?? "error"})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new RmlxError("bad_model", `${path}: invalid JSON (${(err as Error).message})`);
  }
}

/** Throws not_found unless dir is an existing directory. */
export function checkDir(dir: string): void {
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    throw new RmlxError("not_found", `${dir}: no such directory`);
  }
  if (!isDir) throw new RmlxError("not_found", `${dir}: not a directory`);
}

export function loadConfig(dir: string): ModelConfig {
  checkDir(dir);
  const path = join(dir, "config.json");
  return parseConfig(readJsonFile(path), path);
}
