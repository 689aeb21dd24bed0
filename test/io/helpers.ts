// Tiny synthetic model directories for the io and info tests: a minimal safetensors writer (able to write broken
// headers on purpose) and builders for small llama-like checkpoints, float or MLX-quantized.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ST_DTYPE_SIZE, type StDType } from "../../src/io/safetensors.ts";

export interface TensorSpec {
  dtype: StDType;
  shape: number[];
  /** Defaults to zeros of the right length. */
  data?: Uint8Array;
}

const made: string[] = [];

/** Removes every directory tempDir made; the test preload runs it once after all files (bun test fires no process "exit"). */
export function removeTempDirs(): void {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** A fresh directory, removed after the whole run (see removeTempDirs). */
export function tempDir(prefix = "rmlx-io-"): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

function frame(header: unknown, data: Uint8Array, headerLength?: bigint): Uint8Array {
  const h = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLength ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** A well-formed safetensors file, tensors laid out back to back in the given order. */
export function safetensorsBytes(tensors: Record<string, TensorSpec>, metadata: Record<string, string> = { format: "mlx" }): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const len = t.shape.reduce((a, b) => a * b, 1) * ST_DTYPE_SIZE[t.dtype];
    const data = t.data ?? new Uint8Array(len);
    if (data.length !== len) throw new Error(`test tensor ${name}: ${data.length} bytes, expected ${len}`);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + len] };
    chunks.push(data);
    offset += len;
  }
  const data = new Uint8Array(offset);
  let at = 0;
  for (const c of chunks) {
    data.set(c, at);
    at += c.length;
  }
  return frame(header, data);
}

/** A file with exactly this header (object or raw text) and `dataBytes` bytes of data; for broken-file tests. */
export function rawSafetensors(header: unknown, dataBytes: number, headerLength?: bigint): Uint8Array {
  return frame(header, new Uint8Array(dataBytes), headerLength);
}

export const TINY = { hidden: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 16, inter: 128, vocab: 256 } as const;

export function llamaConfig(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: TINY.hidden,
    num_hidden_layers: TINY.layers,
    num_attention_heads: TINY.heads,
    num_key_value_heads: TINY.kvHeads,
    intermediate_size: TINY.inter,
    vocab_size: TINY.vocab,
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: "bfloat16",
    ...extra,
  };
}

export interface QuantChoice {
  bits: number;
  group: number;
}

/** The [out, in] matrices of a tiny llama, keyed by module path. */
export function llamaModules(tied = false): [string, number, number][] {
  const { hidden: H, heads, kvHeads, headDim: D, inter: I, vocab: V, layers } = TINY;
  const mods: [string, number, number][] = [["model.embed_tokens", V, H]];
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}`;
    mods.push(
      [`${p}.self_attn.q_proj`, heads * D, H],
      [`${p}.self_attn.k_proj`, kvHeads * D, H],
      [`${p}.self_attn.v_proj`, kvHeads * D, H],
      [`${p}.self_attn.o_proj`, H, heads * D],
      [`${p}.mlp.gate_proj`, I, H],
      [`${p}.mlp.up_proj`, I, H],
      [`${p}.mlp.down_proj`, H, I],
    );
  }
  if (!tied) mods.push(["lm_head", V, H]);
  return mods;
}

/** Tiny llama tensors; `quant` picks, per module path, MLX affine quantization or null for float. */
export function llamaTensors(opts: { tied?: boolean; quant?: (path: string) => QuantChoice | null } = {}): Record<string, TensorSpec> {
  const t: Record<string, TensorSpec> = {};
  for (const [path, out, inp] of llamaModules(opts.tied)) {
    const q = opts.quant?.(path) ?? null;
    if (q) {
      t[`${path}.weight`] = { dtype: "U32", shape: [out, (inp * q.bits) / 32] };
      t[`${path}.scales`] = { dtype: "BF16", shape: [out, inp / q.group] };
      t[`${path}.biases`] = { dtype: "BF16", shape: [out, inp / q.group] };
    } else {
      t[`${path}.weight`] = { dtype: "BF16", shape: [out, inp] };
    }
  }
  for (let i = 0; i < TINY.layers; i++) {
    t[`model.layers.${i}.input_layernorm.weight`] = { dtype: "BF16", shape: [TINY.hidden] };
    t[`model.layers.${i}.post_attention_layernorm.weight`] = { dtype: "BF16", shape: [TINY.hidden] };
  }
  t["model.norm.weight"] = { dtype: "BF16", shape: [TINY.hidden] };
  return t;
}

/** Logical parameter count of the tiny llama, from its dimensions. */
export function llamaParamCount(tied = false): number {
  const { hidden: H, heads, kvHeads, headDim: D, inter: I, vocab: V, layers: L } = TINY;
  const perLayer = H * heads * D * 2 + H * kvHeads * D * 2 + 3 * H * I + 2 * H;
  return V * H * (tied ? 1 : 2) + L * perLayer + H;
}

/**
 * Writes config.json and the weight files. One file -> model.safetensors; several -> shards plus
 * model.safetensors.index.json. `extra` adds other files (tokenizer, templates) by name.
 */
export function writeModelDir(
  dir: string,
  config: unknown,
  tensors: Record<string, TensorSpec>,
  opts: { shards?: number; extra?: Record<string, string | Uint8Array> } = {},
): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), typeof config === "string" ? config : JSON.stringify(config, null, 2));
  const shards = opts.shards ?? 1;
  if (shards === 1) {
    writeFileSync(join(dir, "model.safetensors"), safetensorsBytes(tensors));
  } else {
    const names = Object.keys(tensors);
    const per = Math.ceil(names.length / shards);
    const weightMap: Record<string, string> = {};
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`;
      const part: Record<string, TensorSpec> = {};
      for (const n of names.slice(s * per, (s + 1) * per)) {
        part[n] = tensors[n]!;
        weightMap[n] = file;
      }
      writeFileSync(join(dir, file), safetensorsBytes(part));
    }
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  }
  for (const [name, content] of Object.entries(opts.extra ?? {})) writeFileSync(join(dir, name), content);
  return dir;
}
