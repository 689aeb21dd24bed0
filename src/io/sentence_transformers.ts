// What a sentence-transformers model directory says about turning hidden states into one embedding: modules.json
// (the pipeline: Transformer, Pooling, Dense..., Normalize), 1_Pooling/config.json, each N_Dense/config.json,
// sentence_bert_config.json (max_seq_length) and config_sentence_transformers.json (prompts). An embedding model's
// config.json can be a chat model's (Qwen3-Embedding says Qwen3ForCausalLM), so these files, not model_type,
// tell an embedding model.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { RmlxError } from "../errors.ts";
import { readJsonFile } from "./config.ts";

export type Pooling = "mean" | "cls" | "lasttoken" | "max";

export interface DenseSpec {
  /** The module's folder (weights in model.safetensors: linear.weight, linear.bias). */
  dir: string;
  inFeatures: number;
  outFeatures: number;
  bias: boolean;
  activation: "identity" | "tanh";
}

export interface EmbeddingSpec {
  pooling: Pooling;
  dense: DenseSpec[];
  /** A Normalize module ends the pipeline: the embedding is L2-normalised. */
  normalize: boolean;
  /** Named prompts, prepended to the text (config_sentence_transformers.json). */
  prompts: Record<string, string>;
  defaultPromptName?: string;
  /** sentence_bert_config.json's max_seq_length. */
  maxSeqLength?: number;
}

const MARKERS = ["modules.json", "config_sentence_transformers.json", join("1_Pooling", "config.json")];

/** Whether a model directory is a sentence-transformers model (an embedding model). */
export function isEmbeddingDir(dir: string): boolean {
  return MARKERS.some((f) => existsSync(join(dir, f)));
}

function obj(path: string): Record<string, unknown> {
  const v = readJsonFile(path);
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new RmlxError("bad_model", `${path}: not a JSON object`);
  return v as Record<string, unknown>;
}

interface ModuleEntry {
  kind: string;
  path: string;
}

/** modules.json's entries by the last part of their type (sentence_transformers.models.Pooling -> Pooling). */
function modulesOf(dir: string): ModuleEntry[] {
  const path = join(dir, "modules.json");
  if (!existsSync(path)) {
    // older exports: the transformer, a pooling folder, and a Normalize folder when there is one
    const found = [{ kind: "Transformer", path: "" }, { kind: "Pooling", path: "1_Pooling" }];
    if (existsSync(join(dir, "2_Normalize"))) found.push({ kind: "Normalize", path: "2_Normalize" });
    return found;
  }
  const v = readJsonFile(path);
  if (!Array.isArray(v)) throw new RmlxError("bad_model", `${path}: not a list of modules`);
  return v.map((m, i) => {
    const e = m as Record<string, unknown>;
    if (typeof e?.type !== "string") throw new RmlxError("bad_model", `${path}: module ${i} has no type`);
    return { kind: e.type.split(".").pop()!, path: typeof e.path === "string" ? e.path : "" };
  });
}

const POOLING_FLAGS: Record<string, Pooling | null> = {
  pooling_mode_cls_token: "cls",
  pooling_mode_mean_tokens: "mean",
  pooling_mode_max_tokens: "max",
  pooling_mode_lasttoken: "lasttoken",
  pooling_mode_mean_sqrt_len_tokens: null,
  pooling_mode_weightedmean_tokens: null,
};

const POOLING_NAMES: Record<string, Pooling> = { mean: "mean", cls: "cls", max: "max", lasttoken: "lasttoken" };

function poolingOf(path: string): Pooling {
  const c = obj(path);
  if (c.include_prompt === false) throw new RmlxError("unsupported", `${path}: include_prompt false (pooling without the prompt's tokens) is not supported`);
  // sentence-transformers 6 writes one name; earlier versions one flag per mode
  if (typeof c.pooling_mode === "string") {
    const p = POOLING_NAMES[c.pooling_mode];
    if (!p) throw new RmlxError("unsupported", `${path}: pooling_mode '${c.pooling_mode}' is not supported (mean, cls, max, lasttoken)`);
    return p;
  }
  const on = Object.keys(POOLING_FLAGS).filter((k) => c[k] === true);
  if (on.length !== 1) throw new RmlxError("unsupported", `${path}: ${on.length === 0 ? "no pooling mode" : `several pooling modes (${on.join(", ")})`}; one of mean, cls, max, lasttoken is supported`);
  const p = POOLING_FLAGS[on[0]!];
  if (!p) throw new RmlxError("unsupported", `${path}: ${on[0]} is not supported (mean, cls, max, lasttoken)`);
  return p;
}

const ACTIVATIONS: Record<string, DenseSpec["activation"]> = {
  "torch.nn.modules.linear.Identity": "identity",
  "torch.nn.modules.activation.Tanh": "tanh",
};

function denseOf(dir: string): DenseSpec {
  const path = join(dir, "config.json");
  const c = obj(path);
  const act = typeof c.activation_function === "string" ? c.activation_function : "torch.nn.modules.activation.Tanh";
  const activation = ACTIVATIONS[act];
  if (!activation) throw new RmlxError("unsupported", `${path}: activation_function '${act}' is not supported (Identity, Tanh)`);
  const inFeatures = c.in_features;
  const outFeatures = c.out_features;
  if (!Number.isInteger(inFeatures) || !Number.isInteger(outFeatures)) throw new RmlxError("bad_model", `${path}: in_features and out_features must be integers`);
  return { dir, inFeatures: inFeatures as number, outFeatures: outFeatures as number, bias: c.bias !== false, activation };
}

/** The embedding pipeline of a sentence-transformers model directory. */
export function readEmbeddingSpec(dir: string): EmbeddingSpec {
  const modules = modulesOf(dir);
  const where = existsSync(join(dir, "modules.json")) ? `${dir}/modules.json` : dir;
  if (modules[0]?.kind !== "Transformer") throw new RmlxError("unsupported", `${where}: the first module is not a Transformer`);
  const poolAt = modules.findIndex((m) => m.kind === "Pooling");
  if (poolAt !== 1) throw new RmlxError("unsupported", `${where}: a Pooling module must follow the Transformer`);
  const spec: EmbeddingSpec = { pooling: poolingOf(join(dir, modules[1]!.path, "config.json")), dense: [], normalize: false, prompts: {} };
  for (const m of modules.slice(2)) {
    if (spec.normalize) throw new RmlxError("unsupported", `${where}: a ${m.kind} module after Normalize is not supported`);
    if (m.kind === "Dense") spec.dense.push(denseOf(join(dir, m.path)));
    else if (m.kind === "Normalize") spec.normalize = true;
    else throw new RmlxError("unsupported", `${where}: module ${m.kind} is not supported (Transformer, Pooling, Dense, Normalize)`);
  }
  const stPath = join(dir, "config_sentence_transformers.json");
  if (existsSync(stPath)) {
    const c = obj(stPath);
    if (c.prompts && typeof c.prompts === "object") {
      for (const [k, v] of Object.entries(c.prompts as Record<string, unknown>)) if (typeof v === "string") spec.prompts[k] = v;
    }
    if (typeof c.default_prompt_name === "string") spec.defaultPromptName = c.default_prompt_name;
  }
  const bertPath = join(dir, "sentence_bert_config.json");
  if (existsSync(bertPath)) {
    const m = obj(bertPath).max_seq_length;
    if (Number.isInteger(m) && (m as number) > 0) spec.maxSeqLength = m as number;
  }
  return spec;
}

/** An embedding model as `rmlx info` describes it. */
export interface EmbeddingSummary {
  pooling: Pooling;
  /** Width of the embedding: the last Dense layer's, or the encoder's hidden size. */
  dimension: number;
  normalize: boolean;
  /** The widths through the Dense layers, hidden size first (empty without Dense layers). */
  dense: number[];
  prompts: string[];
  max_seq_length?: number;
}

export function summarizeEmbedding(dir: string, hiddenSize: number): EmbeddingSummary {
  const spec = readEmbeddingSpec(dir);
  const dense = spec.dense.length ? [hiddenSize, ...spec.dense.map((d) => d.outFeatures)] : [];
  const s: EmbeddingSummary = {
    pooling: spec.pooling,
    dimension: dense.length ? dense[dense.length - 1]! : hiddenSize,
    normalize: spec.normalize,
    dense,
    prompts: Object.keys(spec.prompts),
  };
  if (spec.maxSeqLength !== undefined) s.max_seq_length = spec.maxSeqLength;
  return s;
}
