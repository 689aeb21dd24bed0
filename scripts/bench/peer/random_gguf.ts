// GGUF files of random weights with the shapes of the models the generate benchmark uses, in llama.cpp's tensor
// names and metadata keys for its "llama" and "qwen3" architectures. The tokenizer is declared as "none" with
// <arch>.vocab_size set: llama.cpp then loads dummy tokens, which is all llama-bench needs (it feeds random ids).
import { type GgmlFloatType, type GgufTensor, type GgufValue, writeGguf } from "./gguf.ts";

export interface ModelShape {
  arch: "llama" | "qwen3";
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  vocab: number;
  ropeTheta: number;
  rmsEps: number;
  context: number;
}

/** The benchmark models (their config.json values); both tie the output head to the embeddings. */
export const MODELS = {
  "qwen3-0.6b": {
    arch: "qwen3", hidden: 1024, layers: 28, heads: 16, kvHeads: 8, headDim: 128, intermediate: 3072,
    vocab: 151936, ropeTheta: 1e6, rmsEps: 1e-6, context: 40960,
  },
  "llama-3.2-1b": {
    arch: "llama", hidden: 2048, layers: 16, heads: 32, kvHeads: 8, headDim: 64, intermediate: 8192,
    vocab: 128256, ropeTheta: 5e5, rmsEps: 1e-5, context: 131072,
  },
} as const satisfies Record<string, ModelShape>;
export type PeerModel = keyof typeof MODELS;

/** llama.cpp's general.file_type (enum llama_ftype) for a file whose matrices are all of one float type. */
const FILE_TYPE: Record<"f16" | "bf16", number> = { f16: 1, bf16: 32 };

function f32ToF16Bits(v: number): number {
  const f = new Float32Array([v]);
  const x = new Uint32Array(f.buffer)[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 127 + 15;
  const mant = x & 0x7fffff;
  if (exp <= 0) return sign | Math.round((mant | 0x800000) / 2 ** (14 - exp)); // subnormal
  if (exp >= 31) return sign | 0x7c00;
  let h = sign | (exp << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++;
  return h;
}

function f32ToBf16Bits(v: number): number {
  const x = new Uint32Array(new Float32Array([v]).buffer)[0]!;
  return (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
}

/** 4096 samples of N(0, std) in the target encoding; tensors draw from it with a cheap per-element generator. */
function normalTable(type: "f16" | "bf16", std: number): Uint16Array {
  const t = new Uint16Array(4096);
  let s = 0x9e3779b9;
  const uni = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) + 1) / 2 ** 32;
  };
  for (let i = 0; i < t.length; i++) {
    const z = Math.sqrt(-2 * Math.log(uni())) * Math.cos(2 * Math.PI * uni());
    t[i] = type === "f16" ? f32ToF16Bits(z * std) : f32ToBf16Bits(z * std);
  }
  return t;
}

function randomFill(table: Uint16Array, seed: number): GgufTensor["fill"] {
  return (out, start) => {
    const h = new Uint16Array(out.buffer, out.byteOffset, out.byteLength >>> 1);
    let s = (seed ^ Math.imul(start + 1, 0x85ebca6b)) | 1;
    for (let i = 0; i < h.length; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      h[i] = table[s >>> 20]!;
    }
  };
}

const ones: GgufTensor["fill"] = (out) => new Float32Array(out.buffer, out.byteOffset, out.byteLength >>> 2).fill(1);

/** Tensor list of a model in llama.cpp's GGUF names; matrices in `type`, norm weights f32 (as llama.cpp keeps them). */
export function modelTensors(m: ModelShape, type: "f16" | "bf16"): GgufTensor[] {
  const table = normalTable(type, 0.02);
  let seed = 1;
  const mat = (name: string, out: number, inp: number): GgufTensor => ({
    name, shape: [out, inp], type: type as GgmlFloatType, fill: randomFill(table, Math.imul(seed++, 0x9e3779b1)),
  });
  const norm = (name: string, n: number): GgufTensor => ({ name, shape: [n], type: "f32", fill: ones });
  const q = m.heads * m.headDim;
  const kv = m.kvHeads * m.headDim;
  const tensors = [mat("token_embd.weight", m.vocab, m.hidden), norm("output_norm.weight", m.hidden)];
  // Llama 3.2's rope scaling reaches llama.cpp as per-frequency divisors; ones cost the same as the real factors.
  if (m.arch === "llama") tensors.push(norm("rope_freqs.weight", m.headDim / 2));
  for (let i = 0; i < m.layers; i++) {
    const b = `blk.${i}.`;
    tensors.push(
      norm(`${b}attn_norm.weight`, m.hidden),
      mat(`${b}attn_q.weight`, q, m.hidden),
      mat(`${b}attn_k.weight`, kv, m.hidden),
      mat(`${b}attn_v.weight`, kv, m.hidden),
      mat(`${b}attn_output.weight`, m.hidden, q),
      norm(`${b}ffn_norm.weight`, m.hidden),
      mat(`${b}ffn_gate.weight`, m.intermediate, m.hidden),
      mat(`${b}ffn_up.weight`, m.intermediate, m.hidden),
      mat(`${b}ffn_down.weight`, m.hidden, m.intermediate),
    );
    if (m.arch === "qwen3") tensors.push(norm(`${b}attn_q_norm.weight`, m.headDim), norm(`${b}attn_k_norm.weight`, m.headDim));
  }
  return tensors;
}

export function modelMetadata(name: string, m: ModelShape, type: "f16" | "bf16"): [string, GgufValue][] {
  const a = m.arch;
  return [
    ["general.architecture", a],
    ["general.name", `random ${name}`],
    ["general.file_type", { u32: FILE_TYPE[type] }],
    [`${a}.context_length`, { u32: m.context }],
    [`${a}.embedding_length`, { u32: m.hidden }],
    [`${a}.block_count`, { u32: m.layers }],
    [`${a}.feed_forward_length`, { u32: m.intermediate }],
    [`${a}.attention.head_count`, { u32: m.heads }],
    [`${a}.attention.head_count_kv`, { u32: m.kvHeads }],
    [`${a}.attention.key_length`, { u32: m.headDim }],
    [`${a}.attention.value_length`, { u32: m.headDim }],
    [`${a}.rope.dimension_count`, { u32: m.headDim }],
    [`${a}.rope.freq_base`, { f32: m.ropeTheta }],
    [`${a}.attention.layer_norm_rms_epsilon`, { f32: m.rmsEps }],
    [`${a}.vocab_size`, { u32: m.vocab }],
    ["tokenizer.ggml.model", "none"],
  ];
}

/** Writes the random-weight GGUF of `name` in f16 or bf16; returns its size in bytes. */
export function writeRandomModel(path: string, name: PeerModel, type: "f16" | "bf16"): number {
  const m = MODELS[name];
  return writeGguf(path, modelMetadata(name, m, type), modelTensors(m, type));
}
