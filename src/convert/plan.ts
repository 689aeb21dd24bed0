// What a conversion writes, decided from the source headers and config alone before any data moves: mlx-lm's
// weight names after sanitize, which modules get quantized and how, every output tensor's dtype and shape, and
// the quantization block of the new config.json.
import { join } from "node:path";
import { RmlxError } from "../errors.ts";
import { textConfigOf } from "../io/config.ts";
import { parseQuantConfig, type QuantConfig } from "../io/quant_config.ts";
import type { StDType } from "../io/safetensors.ts";
import { type WriteEntry, entryBytes } from "../io/safetensors_write.ts";
import { type FloatDType, isFloatDType } from "../quant/dtype.ts";
import { type RecipeName, recipePredicate } from "../quant/recipes.ts";
import { type QSpec, type QuantMode, defaultSpec, validateSpec } from "../quant/spec.ts";
import type { Family, Sanitizer } from "../models/family.ts";
import { CONVERTIBLE_MODEL_TYPES, checkpointSanitizer, familyFor } from "../models/registry.ts";
import type { SourceModel, SourceTensor } from "./source.ts";

export interface ConvertOptions {
  quantize: boolean;
  mode: QuantMode;
  bits?: number;
  groupSize?: number;
  recipe?: RecipeName;
  dtype?: FloatDType;
  dequantize: boolean;
}

export type Input =
  /** Bytes copied as they are. */
  | { kind: "raw"; src: SourceTensor }
  /**
   * Float tensors, stacked along a new first axis when there are several (MoE experts); with `rows`, a range of
   * one tensor's rows (a part of a split tensor).
   */
  | { kind: "float"; srcs: SourceTensor[]; addOne?: boolean; rows?: RowSelect }
  /** A module MLX already quantized. */
  | { kind: "quantized"; weight: SourceTensor; scales: SourceTensor; biases?: SourceTensor; spec: QSpec };

/**
 * Rows of a tensor (every axis but the last flattened) taken in runs: output row r is source row
 * floor(r / count) * period + offset + r % count.
 */
export interface RowSelect {
  period: number;
  offset: number;
  count: number;
}

/** The rows of a split part: [start, end) along `axis` of a tensor of this shape. */
function rowSelect(shape: readonly number[], axis: number, start: number, end: number): RowSelect {
  const inner = shape.slice(axis + 1, -1).reduce((a, b) => a * b, 1);
  return { period: shape[axis]! * inner, offset: start * inner, count: (end - start) * inner };
}

export type Output =
  | { kind: "raw"; name: string; dtype: StDType; shape: number[] }
  | { kind: "float"; name: string; dtype: FloatDType; shape: number[] }
  /** `shape` is the float weight's; the tensors written are <path>.weight, .scales and (affine) .biases. */
  | { kind: "quant"; path: string; spec: QSpec; scaleDtype: FloatDType; shape: number[] };

export interface Job {
  input: Input;
  output: Output;
}

export interface Plan {
  jobs: Job[];
  entries: WriteEntry[];
  /** Which job writes each entry. */
  entryJob: Map<string, Job>;
  /** The quantization block for config.json, or null for a float model. */
  quantization: Record<string, unknown> | null;
  totalParameters: number;
  totalBytes: number;
}

const FLOAT_NAMES: Record<string, FloatDType> = { float16: "F16", bfloat16: "BF16", float32: "F32" };

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Numeric-aware name order, so that layer 10 follows layer 9 (shards then hold neighbouring layers). */
function naturalCompare(a: string, b: string): number {
  const ra = a.split(/(\d+)/);
  const rb = b.split(/(\d+)/);
  for (let i = 0; i < Math.min(ra.length, rb.length); i++) {
    const x = ra[i]!;
    const y = rb[i]!;
    if (x === y) continue;
    if (i % 2 === 1) return Number(x) - Number(y) || (x < y ? -1 : 1);
    return x < y ? -1 : 1;
  }
  return ra.length - rb.length;
}

/** The dtype float parameters are saved in: the flag, else the config's torch_dtype, else each tensor's own. */
function targetDtype(config: Record<string, unknown>, flag?: FloatDType): FloatDType | undefined {
  if (flag) return flag;
  const text = isObj(config.text_config) ? config.text_config : {};
  for (const v of [config.torch_dtype, config.dtype, text.torch_dtype, text.dtype]) {
    if (typeof v === "string" && FLOAT_NAMES[v]) return FLOAT_NAMES[v];
  }
  return undefined;
}

function textConfigValue(config: Record<string, unknown>, key: string): unknown {
  if (config[key] !== undefined) return config[key];
  return isObj(config.text_config) ? config.text_config[key] : undefined;
}

/** What convert takes from the checkpoint's family: the sanitize that loading uses too, and mlx-lm's layout. */
interface FamilyRules {
  sanitizer: Sanitizer;
  /** Where mlx-lm keeps the text model's weights for this model_type ("" but for multimodal wrappers). */
  prefix: string;
  quantOverride: NonNullable<Family["quantOverride"]>;
}

function familyRules(src: SourceModel): FamilyRules {
  const source = join(src.dir, "config.json");
  const text = textConfigOf(src.config, source);
  const type = typeof text.model_type === "string" ? text.model_type : "";
  const family = familyFor(type);
  const sanitizer = family && checkpointSanitizer(family, text, [...src.tensors.keys()], source);
  if (!family || !sanitizer)
    throw new RmlxError(
      "unsupported",
      `model_type '${type || "(missing)"}' cannot be converted yet (supported: ${CONVERTIBLE_MODEL_TYPES.join(", ")})`,
    );
  return {
    sanitizer,
    prefix: family.nested?.[String(src.config.model_type)] ?? "",
    quantOverride: family.quantOverride ?? (() => null),
  };
}

interface Logical {
  name: string;
  input: Input;
  /** dtype of the float values this input yields (before any cast). */
  floatDtype?: FloatDType;
  shape: number[];
}

/**
 * Group source tensors into logical tensors with their mlx-lm names. Modules MLX already quantized keep their
 * stored names, which MLX wrote.
 */
function logicalTensors(src: SourceModel, quant: QuantConfig | null, rules: FamilyRules): Logical[] {
  const { sanitizer, prefix } = rules;
  const out: Logical[] = [];
  const taken = new Set<string>();

  for (const t of src.tensors.values()) {
    if (!t.name.endsWith(".scales")) continue;
    const path = t.name.slice(0, -".scales".length);
    const w = src.tensors.get(`${path}.weight`);
    if (!w || w.dtype !== "U32") continue;
    if (sanitizer.rename(w.name) === null) {
      // a quantized module sanitize drops (a tower of a multimodal snapshot, a tied head, unused k/v weights)
      for (const n of [w.name, t.name, `${path}.biases`]) taken.add(n);
      continue;
    }
    const ov = quant?.overrides.get(path);
    const spec = ov ? ov : quant?.global;
    if (!spec) throw new RmlxError("bad_model", `${src.dir}: ${path} is quantized but config.json has no quantization`);
    const b = src.tensors.get(`${path}.biases`);
    if (spec.mode === "affine" && !b) throw new RmlxError("bad_model", `${src.dir}: ${path} is affine-quantized but has no biases`);
    const k = t.shape[t.shape.length - 1]! * spec.groupSize;
    if (w.shape[w.shape.length - 1]! * 32 !== k * spec.bits)
      throw new RmlxError("bad_model", `${src.dir}: ${path}: weight and scales shapes do not match ${spec.mode} ${spec.bits}-bit g${spec.groupSize}`);
    const floatDtype: FloatDType = spec.mode === "affine" ? (t.dtype as FloatDType) : "BF16";
    if (spec.mode === "affine" && !isFloatDType(t.dtype))
      throw new RmlxError("bad_model", `${src.dir}: ${path}.scales has dtype ${t.dtype}, expected a float type`);
    const input: Input = { kind: "quantized", weight: w, scales: t, spec };
    if (b && spec.mode === "affine") input.biases = b;
    out.push({ name: `${path}.weight`, input, floatDtype, shape: [...t.shape.slice(0, -1), k] });
    taken.add(w.name).add(t.name);
    if (b) taken.add(b.name);
  }

  const experts = new Map<string, SourceTensor[]>();
  for (const t of src.tensors.values()) {
    if (taken.has(t.name)) continue;
    const r = sanitizer.rename(t.name);
    if (r === null) continue;
    if (t.dtype === "F8_E4M3" || t.dtype === "F8_E5M2")
      throw new RmlxError("unsupported", `${src.dir}: tensor '${t.name}' is ${t.dtype}; fp8 checkpoints are not supported`);
    const name = prefix + r.name;
    if (r.expert !== undefined) {
      if (!isFloatDType(t.dtype)) throw new RmlxError("bad_model", `${src.dir}: expert tensor '${t.name}' is ${t.dtype}, not a float`);
      const list = experts.get(name) ?? [];
      list[r.expert] = t;
      experts.set(name, list);
      continue;
    }
    const parts = sanitizer.split?.(r.name, t.shape);
    if (parts) {
      if (!isFloatDType(t.dtype)) throw new RmlxError("bad_model", `${src.dir}: tensor '${t.name}' is ${t.dtype}, not a float`);
      for (const part of parts) {
        if (part.axis < 0 || part.axis >= t.shape.length - 1 || part.start < 0 || part.end > t.shape[part.axis]! || part.start >= part.end)
          throw new RmlxError("internal", `${t.name}: split part ${part.name} is outside the tensor`);
        const shape = [...t.shape];
        shape[part.axis] = part.end - part.start;
        const input: Input = { kind: "float", srcs: [t], rows: rowSelect(t.shape, part.axis, part.start, part.end) };
        out.push({ name: prefix + part.name, input, floatDtype: t.dtype, shape });
      }
      continue;
    }
    const shape = sanitizer.reshape?.(r.name, t.shape) ?? [...t.shape];
    if (isFloatDType(t.dtype) || t.dtype === "F64") {
      const dt: FloatDType = t.dtype === "F64" ? "F32" : t.dtype;
      const input: Input = { kind: "float", srcs: [t] };
      if (sanitizer.addOne?.(r.name, t.shape)) input.addOne = true;
      out.push({ name, input, floatDtype: dt, shape });
    } else {
      out.push({ name, input: { kind: "raw", src: t }, shape });
    }
  }
  for (const [name, list] of experts) {
    const first = list[0];
    // a missing expert leaves a hole, which some() and every() would skip
    if (!first || Array.from(list).includes(undefined as unknown as SourceTensor))
      throw new RmlxError("bad_model", `${src.dir}: experts of ${name} are not numbered 0..${list.length - 1}`);
    for (const t of list) {
      if (t.dtype !== first.dtype || t.shape.join() !== first.shape.join())
        throw new RmlxError("bad_model", `${src.dir}: experts of ${name} differ in shape or dtype`);
    }
    out.push({
      name,
      input: { kind: "float", srcs: list },
      floatDtype: first.dtype as FloatDType,
      shape: [list.length, ...first.shape],
    });
  }
  return out.sort((a, b) => naturalCompare(a.name, b.name));
}

/** Modules mlx-lm's quantize visits: Linear and Embedding weights (2-D) and stacked experts (3-D switch_mlp / switch_glu). */
function quantizable(l: Logical): boolean {
  if (!l.name.endsWith(".weight") || l.floatDtype === undefined) return false;
  if (/norm|conv1d/.test(l.name)) return false;
  if (l.shape.length === 2) return true;
  return l.shape.length === 3 && /\.switch_(mlp|glu)\./.test(l.name);
}

function scaleEntries(path: string, spec: QSpec, scaleDtype: FloatDType, shape: number[]): WriteEntry[] {
  const rows = shape.slice(0, -1);
  const k = shape[shape.length - 1]!;
  const e: WriteEntry[] = [
    { name: `${path}.weight`, dtype: "U32", shape: [...rows, (k * spec.bits) / 32] },
    { name: `${path}.scales`, dtype: spec.mode === "affine" ? scaleDtype : "U8", shape: [...rows, k / spec.groupSize] },
  ];
  if (spec.mode === "affine") e.push({ name: `${path}.biases`, dtype: scaleDtype, shape: [...rows, k / spec.groupSize] });
  return e;
}

function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function makePlan(src: SourceModel, opts: ConvertOptions): Plan {
  const cfg = src.config;
  const quant = parseQuantConfig(cfg);
  if (quant?.legacyMethod)
    throw new RmlxError(
      "unsupported",
      `${src.dir}: checkpoints quantized with '${quant.legacyMethod}' cannot be converted; start from the float model`,
    );
  if (opts.quantize && opts.dequantize) throw new RmlxError("invalid_argument", "choose either --quantize or --dequantize, not both");
  if (opts.recipe && opts.mode !== "affine") throw new RmlxError("invalid_argument", "recipes only support affine quantization");
  const target = targetDtype(cfg, opts.dtype);
  const global = defaultSpec(opts.mode, opts.bits, opts.groupSize);
  if (opts.quantize) validateSpec(global);

  const rules = familyRules(src);
  const logical = logicalTensors(src, quant, rules);
  const modulePaths = logical.filter(quantizable).map((l) => l.name.slice(0, -".weight".length));
  const numLayers = Number(textConfigValue(cfg, "num_hidden_layers") ?? 0);
  const recipe = opts.recipe ? recipePredicate(opts.recipe, modulePaths, numLayers, global.groupSize) : undefined;

  const quantization: Record<string, unknown> | null = opts.quantize
    ? { group_size: global.groupSize, bits: global.bits, mode: global.mode }
    : opts.dequantize || !quant
      ? null
      : (cfg.quantization as Record<string, unknown>) ?? (cfg.quantization_config as Record<string, unknown>);

  const jobs: Job[] = [];
  for (const l of logical) {
    const castTo = (d: FloatDType): FloatDType => (l.name.endsWith("A_log") ? d : (target ?? d));
    if (l.input.kind === "raw") {
      jobs.push({ input: l.input, output: { kind: "raw", name: l.name, dtype: l.input.src.dtype, shape: l.shape } });
      continue;
    }
    const fdt = castTo(l.floatDtype!);
    if (opts.quantize && quantizable(l)) {
      const path = l.name.slice(0, -".weight".length);
      const k = l.shape[l.shape.length - 1]!;
      let spec: QSpec | null = global;
      if (k % global.groupSize !== 0) spec = null;
      else if (recipe) {
        spec = recipe(path);
        quantization![path] = { group_size: spec.groupSize, bits: spec.bits, mode: spec.mode };
      } else {
        const o = rules.quantOverride(path);
        if (o) {
          spec = { mode: "affine", ...o };
          quantization![path] = { group_size: o.groupSize, bits: o.bits };
        }
      }
      if (spec && k % spec.groupSize === 0) {
        jobs.push({ input: l.input, output: { kind: "quant", path, spec, scaleDtype: fdt, shape: l.shape } });
        continue;
      }
    }
    if (l.input.kind === "quantized" && !opts.quantize && !opts.dequantize) {
      const { weight, scales, biases, spec } = l.input;
      jobs.push({ input: { kind: "raw", src: weight }, output: { kind: "raw", name: weight.name, dtype: "U32", shape: weight.shape } });
      const sdt = spec.mode === "affine" ? castTo(scales.dtype as FloatDType) : undefined;
      for (const t of biases ? [scales, biases] : [scales]) {
        const name = t.name;
        jobs.push(
          sdt
            ? { input: { kind: "float", srcs: [t] }, output: { kind: "float", name, dtype: sdt, shape: t.shape } }
            : { input: { kind: "raw", src: t }, output: { kind: "raw", name, dtype: t.dtype, shape: t.shape } },
        );
      }
      continue;
    }
    jobs.push({ input: l.input, output: { kind: "float", name: l.name, dtype: fdt, shape: l.shape } });
  }

  const entries: WriteEntry[] = [];
  const entryJob = new Map<string, Job>();
  let totalParameters = 0;
  let totalBytes = 0;
  const quantBits = new Map<string, number>();
  if (!opts.quantize && !opts.dequantize && quant) {
    for (const l of logical) if (l.input.kind === "quantized") quantBits.set(l.input.weight.name, l.input.spec.bits);
  }
  for (const j of jobs) {
    const o = j.output;
    const es = o.kind === "quant" ? scaleEntries(o.path, o.spec, o.scaleDtype, o.shape) : [{ name: o.name, dtype: o.dtype, shape: o.shape }];
    for (const e of es) {
      entries.push(e);
      entryJob.set(e.name, j);
    }
    if (o.kind === "quant") totalParameters += numelOf(o.shape);
    else if (quantBits.has(o.name)) totalParameters += (numelOf(o.shape) * 32) / quantBits.get(o.name)!;
    else if (!(quantBits.size > 0 && /\.(scales|biases)$/.test(o.name) && quantBits.has(o.name.replace(/\.(scales|biases)$/, ".weight"))))
      totalParameters += numelOf(o.shape);
  }
  for (const e of entries) totalBytes += entryBytes(e);
  entries.sort((a, b) => naturalCompare(a.name, b.name));
  return { jobs, entries, entryJob, quantization, totalParameters, totalBytes };
}
