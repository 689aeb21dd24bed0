// MLX quantization as config.json states it: a global block under "quantization" (or "quantization_config"),
// per-module overrides as extra keys of that block, and the legacy quant_method of other toolchains.
import { RmlxError } from "../errors.ts";
import type { WeightStore } from "./weights.ts";

export type QuantMode = "affine" | "mxfp4" | "mxfp8" | "nvfp4";

export interface QuantSpec {
  mode: QuantMode;
  bits: number;
  groupSize: number;
}

export interface QuantConfig {
  global: QuantSpec | null;
  /** Module path -> its own spec, or false when the module is left float. */
  overrides: Map<string, QuantSpec | false>;
  /** quant_method of a non-MLX quantized checkpoint (bitnet, mxfp4, compressed-tensors, awq, gptq). */
  legacyMethod?: string;
}

const VALID: Record<QuantMode, { bits: readonly number[]; groups: readonly number[] }> = {
  affine: { bits: [2, 3, 4, 5, 6, 8], groups: [32, 64, 128] },
  mxfp4: { bits: [4], groups: [32] },
  mxfp8: { bits: [8], groups: [32] },
  nvfp4: { bits: [4], groups: [16] },
};

const SPEC_KEYS = new Set(["group_size", "bits", "mode"]);

function bad(problem: string): never {
  throw new RmlxError("bad_model", `config.json: ${problem}`);
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function parseSpec(o: Record<string, unknown>, where: string): QuantSpec {
  const modeName = o.mode ?? "affine";
  if (typeof modeName !== "string" || !Object.hasOwn(VALID, modeName))
    bad(`${where}: unknown quantization mode '${String(modeName)}'`);
  const mode = modeName as QuantMode;
  const v = VALID[mode];
  const bits = o.bits ?? (v.bits.length === 1 ? v.bits[0] : 4);
  const groupSize = o.group_size ?? (v.groups.length === 1 ? v.groups[0] : 64);
  if (typeof bits !== "number" || !v.bits.includes(bits)) bad(`${where}: ${mode} does not support bits=${String(bits)}`);
  if (typeof groupSize !== "number" || !v.groups.includes(groupSize))
    bad(`${where}: ${mode} does not support group_size=${String(groupSize)}`);
  return { mode, bits, groupSize };
}

/** The quantization of a model from its top-level config.json object; null when it is not quantized. */
export function parseQuantConfig(rawConfig: Record<string, unknown>): QuantConfig | null {
  const mlx = rawConfig.quantization;
  const hf = rawConfig.quantization_config;
  const block = isObj(mlx) ? mlx : isObj(hf) ? hf : undefined;
  if (!block) {
    if ((mlx !== undefined && mlx !== null) || (hf !== undefined && hf !== null)) bad("quantization is not an object");
    return null;
  }
  const where = block === mlx ? "quantization" : "quantization_config";
  const method = block.quant_method;
  if (method !== undefined && typeof method !== "string") bad(`${where}.quant_method is not a string`);
  if (method !== undefined && !("bits" in block && "group_size" in block))
    return { global: null, overrides: new Map(), legacyMethod: method };

  const hasGlobal = "bits" in block || "group_size" in block || "mode" in block;
  const qc: QuantConfig = { global: hasGlobal ? parseSpec(block, where) : null, overrides: new Map() };
  if (method !== undefined) qc.legacyMethod = method;
  for (const [key, value] of Object.entries(block)) {
    if (SPEC_KEYS.has(key) || key === "quant_method") continue;
    if (value === false) qc.overrides.set(key, false);
    else if (isObj(value)) qc.overrides.set(key, parseSpec(value, `${where}["${key}"]`));
  }
  return qc;
}

/**
 * The spec for a module path (e.g. "model.layers.0.self_attn.q_proj"), or null when it is float. Uses overrides,
 * then the presence of `<path>.scales` in the store, then the global spec.
 */
export function quantSpecFor(qc: QuantConfig | null, path: string, weights: WeightStore): QuantSpec | null {
  const override = qc?.overrides.get(path);
  if (override !== undefined) return override === false ? null : override;
  if (!weights.has(`${path}.scales`)) return null;
  if (!qc?.global) throw new RmlxError("bad_model", `${weights.dir}: ${path} is quantized but config.json has no quantization`);
  return qc.global;
}

/** "affine 4-bit g64" */
export function describeSpec(s: QuantSpec): string {
  return `${s.mode} ${s.bits}-bit g${s.groupSize}`;
}
