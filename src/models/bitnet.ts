// BitNet b1.58 (BitNetForCausalLM): the Llama layout with an RMSNorm on the heads' outputs before o_proj
// (attn_sub_norm) and on the MLP's product before down_proj (ffn_sub_norm), and a squared-ReLU gate. Its linears
// take every form transformers runs:
//  - no quantization_config: plain float (or MLX-quantized) Linears, computed as stored;
//  - quant_method "bitnet" with packed weights (uint8 [out/4, in], four output blocks per byte) and a weight_scale:
//    linear_class "bitlinear" divides by the scale, "autobitlinear" multiplies by it;
//  - quantization_mode "online" with autobitlinear: float master weights, ternarised here at load time as
//    transformers' WeightQuant does (absmean per tensor);
//  - use_rms_norm: an RMSNorm of its own inside each converted linear, before its input is quantized.
// Converted linears quantize their input to int8 per token (absmax), as transformers does, so tokens match it;
// with the bitnetActivations option "float" they take float activations as mlx-lm does (x @ (t * scale)^T, the
// codes repacked at load into MLX's affine 2-bit format). lm_head and modules_to_not_convert stay plain. MLX
// snapshots (mlx-lm) store the same tensors.
import type { Backend, Tensor, TernaryWeight, Weight } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { ModelConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { decodeFloats, isFloatDType } from "../quant/dtype.ts";
import { textModelSanitizer, type BitnetActivations, type Family, type ModelOptions } from "./family.ts";
import { attend, embed, gqaParams, runLayer, selectRows, stackEnds, stepTokens, type AttentionParams, type StackEnds } from "./layers.ts";
import type { ForwardStep, LayerCacheSpec, Model } from "./model.ts";
import { loadTimeWeight, type ModelWeights } from "./weights.ts";

/** What quantization_config says about the linears (transformers' BitNetQuantConfig and its defaults). */
interface BitnetScheme {
  linearClass: "bitlinear" | "autobitlinear";
  online: boolean;
  /** Eps of the per-linear RMSNorm, or null without one. */
  normEps: number | null;
  notConverted: string[];
}

/**
 * One linear as BitNet runs it: float; ternary with int8 activations; or ternary codes as a weight of the values t
 * times `factor`, with float activations. The ternary forms apply their own norm first, if any.
 */
type BitLinear = { float: Weight } | ({ ternary: TernaryWeight } | { codes: Weight; factor: number }) & { norm?: Tensor; normEps: number };

/** Each projection's module under model.layers.N. */
const MODULE = {
  q_proj: "self_attn",
  k_proj: "self_attn",
  v_proj: "self_attn",
  o_proj: "self_attn",
  gate_proj: "mlp",
  up_proj: "mlp",
  down_proj: "mlp",
} as const;
type Projection = keyof typeof MODULE;

interface Block {
  inputNorm: Tensor;
  postNorm: Tensor;
  attnSubNorm: Tensor;
  ffnSubNorm: Tensor;
  lin: Record<Projection, BitLinear>;
}

function bad(md: ModelDir, problem: string): never {
  throw new RmlxError("bad_model", `${md.dir}/config.json: ${problem}`);
}

function scheme(md: ModelDir): BitnetScheme | null {
  const qc = md.config.raw.quantization_config;
  if (typeof qc !== "object" || qc === null || (qc as Record<string, unknown>).quant_method !== "bitnet") return null;
  const o = qc as Record<string, unknown>;
  const linearClass = o.linear_class ?? "bitlinear";
  if (linearClass !== "bitlinear" && linearClass !== "autobitlinear")
    bad(md, `quantization_config.linear_class '${String(linearClass)}' is neither bitlinear nor autobitlinear`);
  const mode = o.quantization_mode ?? "offline";
  if (mode !== "offline" && mode !== "online") bad(md, `quantization_config.quantization_mode '${String(mode)}' is neither offline nor online`);
  const eps = o.rms_norm_eps ?? 1e-6;
  if (typeof eps !== "number") bad(md, "quantization_config.rms_norm_eps is not a number");
  const skip = o.modules_to_not_convert ?? [];
  if (!Array.isArray(skip) || skip.some((s) => typeof s !== "string")) bad(md, "quantization_config.modules_to_not_convert is not a list of names");
  return {
    linearClass,
    // transformers quantizes master weights online only through AutoBitLinear; BitLinear always reads packed weights
    online: mode === "online" && linearClass === "autobitlinear",
    normEps: o.use_rms_norm === true ? eps : null,
    notConverted: skip as string[],
  };
}

/** [out, in] of a projection, from the config. */
function projShape(c: ModelConfig, p: Projection): [number, number] {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const shapes: Record<Projection, [number, number]> = {
    q_proj: [q, c.hiddenSize],
    k_proj: [kv, c.hiddenSize],
    v_proj: [kv, c.hiddenSize],
    o_proj: [c.hiddenSize, q],
    gate_proj: [c.intermediateSize, c.hiddenSize],
    up_proj: [c.intermediateSize, c.hiddenSize],
    down_proj: [c.hiddenSize, c.intermediateSize],
  };
  return shapes[p];
}

/** transformers' WeightQuant, f32: s = 1 / max(mean|W|, 1e-5), t = clamp(round half even (W*s), -1, 1), packed. */
export function ternarise(values: Float32Array, out: number, inDim: number): { packed: Uint8Array; scale: number } {
  const fr = Math.fround;
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += Math.abs(values[i]!);
  const s = fr(1 / Math.max(fr(sum / values.length), fr(1e-5)));
  const rows = out / 4;
  const packed = new Uint8Array(rows * inDim);
  for (let n = 0; n < out; n++) {
    const r = n % rows;
    const shift = 2 * Math.floor(n / rows);
    for (let k = 0; k < inDim; k++) {
      const v = fr(values[n * inDim + k]! * s);
      let t = Math.round(v);
      if (t - v === 0.5 && t % 2 !== 0) t -= 1;
      packed[r * inDim + k]! |= (Math.max(-1, Math.min(1, t)) + 1) << shift;
    }
  }
  // the ternary weights are t / s, each rounded to f32
  return { packed, scale: fr(1 / s) };
}

/**
 * Packed codes (uint8 [out/4, in], as transformers packs them) repacked as a Linear weight of the values t: MLX's
 * affine 2-bit format with scale 1 and bias -1, so that code t + 1 decodes to exactly t (2.25 bits a weight at
 * group 128, against 2 packed), or f32 [out, in] where no group size divides in_features. The arrays it makes are
 * handed to `keep`: the tensors read them in place.
 */
export function ternaryCodesWeight(be: Backend, packed: Uint8Array, out: number, inDim: number, keep: (bytes: Uint8Array) => void): Weight {
  const rows = out / 4;
  const group = [128, 64, 32].find((g) => inDim % g === 0);
  if (group === undefined) {
    const values = new Float32Array(out * inDim);
    for (let n = 0; n < out; n++) {
      const src = (n % rows) * inDim;
      const shift = 2 * Math.floor(n / rows);
      for (let k = 0; k < inDim; k++) values[n * inDim + k] = ((packed[src + k]! >> shift) & 3) - 1;
    }
    return loadTimeWeight(be, new Uint8Array(values.buffer), [out, inDim], "f32", keep);
  }
  // 16 codes a word, the first in the lowest bits; each packed byte feeds the same word of its four rows.
  const perRow = inDim / 16;
  const block = rows * perRow;
  const words = new Uint32Array(out * perRow);
  let at = 0;
  for (let j = 0; j < block; j++) {
    let w0 = 0;
    let w1 = 0;
    let w2 = 0;
    let w3 = 0;
    for (let c = 0; c < 32; c += 2) {
      const b = packed[at++]!;
      w0 |= (b & 3) << c;
      w1 |= ((b >> 2) & 3) << c;
      w2 |= ((b >> 4) & 3) << c;
      w3 |= (b >> 6) << c;
    }
    words[j] = w0;
    words[j + block] = w1;
    words[j + 2 * block] = w2;
    words[j + 3 * block] = w3;
  }
  const groups = (out * inDim) / group;
  // bf16 1 and -1
  const scales = new Uint16Array(groups).fill(0x3f80);
  const biases = new Uint16Array(groups).fill(0xbf80);
  return {
    w: loadTimeWeight(be, new Uint8Array(words.buffer), [out, perRow], "u32", keep),
    scales: loadTimeWeight(be, new Uint8Array(scales.buffer), [out, inDim / group], "bf16", keep),
    biases: loadTimeWeight(be, new Uint8Array(biases.buffer), [out, inDim / group], "bf16", keep),
    mode: "affine",
    bits: 2,
    groupSize: group,
  };
}

class BitnetModel implements Model {
  readonly config: ModelConfig;
  readonly layers: LayerCacheSpec[];
  readonly vocabSize: number;
  private readonly eps: number;
  private readonly ends: StackEnds;
  private readonly attn: AttentionParams;
  private readonly blocks: Block[] = [];
  /** Arrays made at load time (online quantization, float activations), which the tensors wrap without owning. */
  private readonly keepAlive: Uint8Array[] = [];

  constructor(
    readonly backend: Backend,
    private readonly md: ModelDir,
    private readonly w: ModelWeights,
    private readonly activations: BitnetActivations,
  ) {
    const c = md.config;
    this.config = c;
    this.eps = c.rmsNormEps;
    this.vocabSize = c.vocabSize;
    if (c.numHeads * c.headDim !== c.hiddenSize)
      bad(md, `attn_sub_norm needs num_attention_heads * head_dim (${c.numHeads * c.headDim}) = hidden_size (${c.hiddenSize})`);
    this.ends = stackEnds(w);
    this.attn = gqaParams(c, 0);
    const sch = scheme(md);
    for (let i = 0; i < c.numLayers; i++) {
      const p = `model.layers.${i}`;
      const lin = {} as Record<Projection, BitLinear>;
      for (const proj of Object.keys(MODULE) as Projection[]) lin[proj] = this.bitLinear(`${p}.${MODULE[proj]}.${proj}`, projShape(c, proj), sch);
      this.blocks.push({
        inputNorm: w.tensor(`${p}.input_layernorm.weight`),
        postNorm: w.tensor(`${p}.post_attention_layernorm.weight`),
        attnSubNorm: w.tensor(`${p}.self_attn.attn_sub_norm.weight`),
        ffnSubNorm: w.tensor(`${p}.mlp.ffn_sub_norm.weight`),
        lin,
      });
    }
    this.layers = this.blocks.map(() => ({ kvHeads: c.numKvHeads, headDim: c.headDim, window: 0 }));
  }

  private bitLinear(path: string, [out, inDim]: [number, number], sch: BitnetScheme | null): BitLinear {
    const w = this.w;
    if (!sch || sch.notConverted.some((m) => path.includes(m))) return { float: w.linear(path) };
    const e = w.entry(`${path}.weight`);
    let packed: Uint8Array;
    let scale: number;
    let divide = false;
    if (sch.online) {
      if (!isFloatDType(e.dtype)) throw new RmlxError("bad_model", `${this.md.dir}: ${e.name} is ${e.dtype}; online quantization reads float master weights`);
      if (e.shape.join() !== `${out},${inDim}`)
        throw new RmlxError("bad_model", `${this.md.dir}: ${e.name} is [${e.shape.join(", ")}] where config.json gives [${out}, ${inDim}]`);
      if (out % 4) throw new RmlxError("bad_model", `${this.md.dir}: ${e.name} has ${out} rows, which do not pack four to a byte`);
      ({ packed, scale } = ternarise(decodeFloats(e.dtype, e.bytes), out, inDim));
    } else {
      if (e.dtype !== "U8" || e.shape.join() !== `${out / 4},${inDim}`)
        throw new RmlxError(
          "bad_model",
          `${this.md.dir}: ${e.name} is ${e.dtype} [${e.shape.join(", ")}] where config.json's [${out}, ${inDim}] packs to uint8 [${out / 4}, ${inDim}]`,
        );
      packed = e.bytes;
      scale = w.value(`${path}.weight_scale`);
      divide = sch.linearClass === "bitlinear";
    }
    const keep = (b: Uint8Array) => this.keepAlive.push(b);
    let form: { ternary: TernaryWeight } | { codes: Weight; factor: number };
    if (this.activations === "float") {
      form = { codes: ternaryCodesWeight(this.backend, packed, out, inDim, keep), factor: divide ? 1 / scale : scale };
    } else if (sch.online) {
      form = { ternary: { packed: loadTimeWeight(this.backend, packed, [out / 4, inDim], "u8", keep), scale, divide } };
    } else {
      form = { ternary: { packed: w.tensor(`${path}.weight`), scale, divide } };
    }
    if (sch.normEps === null) return { ...form, normEps: 0 };
    return { ...form, norm: w.tensor(`${path}.rms_norm.weight`), normEps: sch.normEps };
  }

  private apply(x: Tensor, l: BitLinear): Tensor {
    const be = this.backend;
    if ("float" in l) return be.linear(x, l.float);
    const input = l.norm ? be.rmsNorm(x, l.norm, l.normEps) : x;
    return "codes" in l ? be.scale(be.linear(input, l.codes), l.factor) : be.ternaryLinear(input, l.ternary);
  }

  forward(step: ForwardStep): Tensor {
    const be = this.backend;
    const s = this.attn;
    let h = embed(be, this.ends.embed, stepTokens(step));
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i]!;
      const x = h;
      h = runLayer(be, step, () => {
        const T = x.shape[0]!;
        const a = be.rmsNorm(x, b.inputNorm, this.eps);
        const q = be.reshape(this.apply(a, b.lin.q_proj), [T, s.heads, s.headDim]);
        const k = be.reshape(this.apply(a, b.lin.k_proj), [T, s.kvHeads, s.headDim]);
        const v = be.reshape(this.apply(a, b.lin.v_proj), [T, s.kvHeads, s.headDim]);
        const heads = be.rmsNorm(attend(be, q, k, v, s, step, i), b.attnSubNorm, this.eps);
        const y = be.add(x, this.apply(heads, b.lin.o_proj));
        const m = be.rmsNorm(y, b.postNorm, this.eps);
        const f = be.relu2Mul(this.apply(m, b.lin.gate_proj), this.apply(m, b.lin.up_proj));
        return be.add(y, this.apply(be.rmsNorm(f, b.ffnSubNorm, this.eps), b.lin.down_proj));
      });
    }
    h = selectRows(be, h, step.logitRows);
    return be.linear(be.rmsNorm(h, this.ends.norm, this.eps), this.ends.head);
  }
}

export const bitnet: Family = {
  modelTypes: ["bitnet"],
  sanitize: textModelSanitizer,
  load: (backend, md, w, opts: ModelOptions) => new BitnetModel(backend, md, w, opts.bitnetActivations ?? "int8"),
};
