// Tiny Hugging Face style checkpoints written with our own safetensors writer, and a runner for the CLI.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { StDType } from "../../src/io/safetensors.ts";
import { SafetensorsWriter, type WriteEntry } from "../../src/io/safetensors_write.ts";
import { type FloatDType, encodeFloats } from "../../src/quant/dtype.ts";

export const ROOT = join(import.meta.dir, "..", "..");
const BUN = join(ROOT, "node_modules", ".bin", "bun");
const MAIN = join(ROOT, "test", "convert", "convert_cli.ts");

/** Scratch directories of the running test file, all under one root that `cleanupScratch` removes. */
let scratch: string | undefined;

export function tmp(prefix = "t-"): string {
  scratch ??= mkdtempSync(join(tmpdir(), "rmlx-convert-"));
  return mkdtempSync(join(scratch, prefix));
}

export function cleanupScratch(): void {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
  scratch = undefined;
}

/** Deterministic values: a small LCG, so tests need no fixtures on disk. */
export function randomValues(n: number, seed: number, scale = 0.05): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

export interface Tensor {
  dtype: StDType;
  shape: number[];
  values?: Float32Array;
  bytes?: Uint8Array;
}

export function writeTensors(path: string, tensors: Record<string, Tensor>, metadata: Record<string, string> = { format: "pt" }): void {
  const entries: WriteEntry[] = Object.entries(tensors).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }));
  const w = SafetensorsWriter.create(path, entries, metadata);
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = t.bytes ?? encodeFloats(t.dtype as FloatDType, t.values!);
    w.write(name, bytes);
  }
  w.close();
}

export interface TinyModel {
  modelType?: string;
  layers?: number;
  hidden?: number;
  inter?: number;
  vocab?: number;
  heads?: number;
  kvHeads?: number;
  headDim?: number;
  dtype?: FloatDType;
  experts?: number;
  tie?: boolean;
  torchDtype?: string | null;
  extra?: Record<string, Tensor>;
}

/** A llama/qwen3-shaped checkpoint with transformers' names; experts one by one when `experts` is set. */
export function makeHfModel(dir: string, m: TinyModel = {}): Record<string, Tensor> {
  const L = m.layers ?? 2;
  const H = m.hidden ?? 64;
  const I = m.inter ?? 128;
  const V = m.vocab ?? 96;
  const nh = m.heads ?? 2;
  const nkv = m.kvHeads ?? 1;
  const hd = m.headDim ?? 32;
  const dtype = m.dtype ?? "BF16";
  const modelType = m.modelType ?? (m.experts ? "qwen3_moe" : "qwen3");
  mkdirSync(dir, { recursive: true });
  let seed = 1;
  const t = (shape: number[], scale = 0.05): Tensor => ({ dtype, shape, values: randomValues(shape.reduce((a, b) => a * b, 1), seed++, scale) });
  const ones = (n: number): Tensor => ({ dtype, shape: [n], values: new Float32Array(n).fill(1) });
  const w: Record<string, Tensor> = { "model.embed_tokens.weight": t([V, H], 1) };
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    w[`${p}.self_attn.q_proj.weight`] = t([nh * hd, H]);
    w[`${p}.self_attn.k_proj.weight`] = t([nkv * hd, H]);
    w[`${p}.self_attn.v_proj.weight`] = t([nkv * hd, H]);
    w[`${p}.self_attn.o_proj.weight`] = t([H, nh * hd]);
    w[`${p}.self_attn.q_norm.weight`] = ones(hd);
    w[`${p}.self_attn.k_norm.weight`] = ones(hd);
    w[`${p}.self_attn.rotary_emb.inv_freq`] = { dtype: "F32", shape: [hd / 2], values: randomValues(hd / 2, 99, 1) };
    w[`${p}.input_layernorm.weight`] = ones(H);
    w[`${p}.post_attention_layernorm.weight`] = ones(H);
    if (m.experts) {
      w[`${p}.mlp.gate.weight`] = t([m.experts, H]);
      for (let e = 0; e < m.experts; e++) {
        w[`${p}.mlp.experts.${e}.gate_proj.weight`] = t([I, H]);
        w[`${p}.mlp.experts.${e}.up_proj.weight`] = t([I, H]);
        w[`${p}.mlp.experts.${e}.down_proj.weight`] = t([H, I]);
      }
    } else {
      w[`${p}.mlp.gate_proj.weight`] = t([I, H]);
      w[`${p}.mlp.up_proj.weight`] = t([I, H]);
      w[`${p}.mlp.down_proj.weight`] = t([H, I]);
    }
  }
  w["model.norm.weight"] = ones(H);
  if (!m.tie) w["lm_head.weight"] = t([V, H]);
  Object.assign(w, m.extra ?? {});
  writeTensors(join(dir, "model.safetensors"), w);

  const torchDtype = m.torchDtype === undefined ? { BF16: "bfloat16", F16: "float16", F32: "float32" }[dtype] : m.torchDtype;
  const config: Record<string, unknown> = {
    architectures: [modelType === "qwen3_moe" ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM"],
    model_type: modelType,
    _name_or_path: "tiny",
    hidden_size: H,
    intermediate_size: I,
    num_hidden_layers: L,
    num_attention_heads: nh,
    num_key_value_heads: nkv,
    head_dim: hd,
    vocab_size: V,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    max_position_embeddings: 512,
    tie_word_embeddings: Boolean(m.tie),
    ...(torchDtype ? { torch_dtype: torchDtype } : {}),
    ...(m.experts
      ? { num_experts: m.experts, num_experts_per_tok: 2, moe_intermediate_size: I, decoder_sparse_step: 1, norm_topk_prob: true, mlp_only_layers: [] }
      : {}),
  };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ model_max_length: 512 }));
  writeFileSync(join(dir, "chat_template.jinja"), "{{ messages }}");
  writeFileSync(join(dir, "README.md"), "not copied");
  return w;
}

export function runCli(...args: string[]): { code: number; out: string; err: string } {
  const p = Bun.spawnSync([BUN, MAIN, ...args], { stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
  return { code: p.exitCode ?? -1, out: p.stdout.toString(), err: p.stderr.toString() };
}

export { BUN, MAIN };
