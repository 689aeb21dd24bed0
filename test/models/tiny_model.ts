// Writes tiny random model directories (config.json + model.safetensors, HF names) for tests that check the
// model code's consistency (batched vs single, chunked vs whole prefill) without reference fixtures.
import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { affineQuantize } from "../../src/quant/affine.ts";

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 - 0.5;
  };
}

type Entry = { shape: number[]; data: Float32Array | Uint32Array; dtype?: "F32" | "U32" };

function writeSafetensors(path: string, tensors: Record<string, Entry>): void {
  const header: Record<string, unknown> = {};
  let off = 0;
  const names = Object.keys(tensors);
  for (const n of names) {
    const bytes = tensors[n]!.data.length * 4;
    header[n] = { dtype: tensors[n]!.dtype ?? "F32", shape: tensors[n]!.shape, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += " ";
  const hbytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hbytes.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hbytes.length), true);
  out.set(hbytes, 8);
  let p = 8 + hbytes.length;
  for (const n of names) {
    const d = tensors[n]!.data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), p);
    p += d.byteLength;
  }
  writeFileSync(path, out);
}

export interface TinySpec {
  modelType: "llama" | "qwen3" | "qwen3_moe" | "gemma3_text" | "gemma4_text";
  layers?: number;
  vocab?: number;
  /** MLX affine quantization of every Linear and the embeddings, experts stacked as switch_mlp. */
  quant?: { bits: number; groupSize: number };
  extra?: Record<string, unknown>;
}

export function makeTinyModel(spec: TinySpec, seed = 1): string {
  const H = 32;
  const heads = 4;
  const kvHeads = 2;
  const headDim = 16;
  const inter = 64;
  const V = spec.vocab ?? 96;
  const L = spec.layers ?? 2;
  const r = rng(seed);
  const t: Record<string, Entry> = {};
  const rand = (name: string, shape: number[], scale = 0.3, offset = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    t[name] = { shape, data: Float32Array.from({ length: n }, () => offset + r() * 2 * scale) };
  };
  const gemma4 = spec.modelType === "gemma4_text";
  const gemma = spec.modelType === "gemma3_text" || gemma4;
  // Gemma 3 stores norm weights around 0 (used as 1 + w), Gemma 4 as they are.
  const normOffset = spec.modelType === "gemma3_text" ? 0 : 1;
  rand("model.embed_tokens.weight", [V, H], 0.5);
  rand("model.norm.weight", [H], 0.1, normOffset);
  const E = 4;
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}`;
    rand(`${p}.input_layernorm.weight`, [H], 0.1, normOffset);
    rand(`${p}.post_attention_layernorm.weight`, [H], 0.1, normOffset);
    rand(`${p}.self_attn.q_proj.weight`, [heads * headDim, H]);
    rand(`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, H]);
    rand(`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, H]);
    rand(`${p}.self_attn.o_proj.weight`, [H, heads * headDim]);
    if (spec.modelType !== "llama") {
      rand(`${p}.self_attn.q_norm.weight`, [headDim], 0.1, normOffset);
      rand(`${p}.self_attn.k_norm.weight`, [headDim], 0.1, normOffset);
    }
    if (gemma) {
      rand(`${p}.pre_feedforward_layernorm.weight`, [H], 0.1, normOffset);
      rand(`${p}.post_feedforward_layernorm.weight`, [H], 0.1, normOffset);
    }
    if (spec.modelType === "qwen3_moe" && i === 0) {
      rand(`${p}.mlp.gate.weight`, [E, H], 0.5);
      for (let e = 0; e < E; e++) {
        rand(`${p}.mlp.experts.${e}.gate_proj.weight`, [32, H]);
        rand(`${p}.mlp.experts.${e}.up_proj.weight`, [32, H]);
        rand(`${p}.mlp.experts.${e}.down_proj.weight`, [H, 32]);
      }
    } else {
      rand(`${p}.mlp.gate_proj.weight`, [inter, H]);
      rand(`${p}.mlp.up_proj.weight`, [inter, H]);
      rand(`${p}.mlp.down_proj.weight`, [H, inter]);
    }
  }
  if (spec.modelType === "llama") rand("lm_head.weight", [V, H], 0.5);
  if (spec.quant) quantizeAll(t, spec.quant.bits, spec.quant.groupSize, L, E);
  const config: Record<string, unknown> = {
    model_type: spec.modelType,
    architectures: ["Tiny"],
    hidden_size: H,
    num_hidden_layers: L,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    intermediate_size: inter,
    vocab_size: V,
    max_position_embeddings: 256,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: spec.modelType !== "llama",
    eos_token_id: 1,
    ...(spec.modelType === "qwen3_moe"
      ? { num_experts: E, num_experts_per_tok: 2, moe_intermediate_size: 32, norm_topk_prob: true, mlp_only_layers: [1], decoder_sparse_step: 1 }
      : {}),
    ...(spec.modelType === "gemma3_text" ? { sliding_window: 5, layer_types: ["sliding_attention", "full_attention"].slice(0, L), query_pre_attn_scalar: 16, rope_local_base_freq: 10000, rope_theta: 1000000 } : {}),
    ...(gemma4
      ? {
          sliding_window: 5,
          layer_types: Array.from({ length: L }, (_, i) => (i % 2 === 1 ? "full_attention" : "sliding_attention")),
          global_head_dim: headDim,
          hidden_size_per_layer_input: 0,
          final_logit_softcapping: 30,
          rope_parameters: {
            sliding_attention: { rope_type: "default", rope_theta: 10000 },
            full_attention: { rope_type: "proportional", partial_rotary_factor: 0.25, rope_theta: 1000000 },
          },
        }
      : {}),
    ...(spec.quant ? { quantization: { group_size: spec.quant.groupSize, bits: spec.quant.bits } } : {}),
    ...spec.extra,
  };
  const dir = mkdtempSync(join(tmpdir(), `rmlx-tiny-${spec.modelType}-`));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  writeSafetensors(join(dir, "model.safetensors"), t);
  return dir;
}

/** Stacks per-expert weights into switch_mlp and quantizes every 2-D/3-D weight whose rows split into groups. */
function quantizeAll(t: Record<string, Entry>, bits: number, group: number, layers: number, experts: number): void {
  for (let i = 0; i < layers; i++) {
    for (const proj of ["gate_proj", "up_proj", "down_proj"]) {
      const names = Array.from({ length: experts }, (_, e) => `model.layers.${i}.mlp.experts.${e}.${proj}.weight`);
      if (!t[names[0]!]) continue;
      const parts = names.map((n) => t[n]!);
      const data = new Float32Array(parts.reduce((a, p) => a + p.data.length, 0));
      parts.forEach((p, e) => data.set(p.data as Float32Array, e * p.data.length));
      for (const n of names) delete t[n];
      t[`model.layers.${i}.mlp.switch_mlp.${proj}.weight`] = { shape: [experts, ...parts[0]!.shape], data };
    }
  }
  for (const name of Object.keys(t)) {
    const e = t[name]!;
    const K = e.shape[e.shape.length - 1]!;
    if (!name.endsWith(".weight") || e.shape.length < 2 || K % group !== 0 || name.includes("norm")) continue;
    const q = affineQuantize(e.data as Float32Array, group, bits);
    const lead = e.shape.slice(0, -1);
    const base = name.slice(0, -".weight".length);
    t[name] = { shape: [...lead, (K * bits) / 32], data: q.weight, dtype: "U32" };
    t[`${base}.scales`] = { shape: [...lead, K / group], data: q.scales };
    t[`${base}.biases`] = { shape: [...lead, K / group], data: q.biases };
  }
}

export interface TinyHybridSpec {
  /** Routed experts with a shared expert (qwen3_5_moe_text) instead of a dense MLP, in the trunk and the MTP layer. */
  moe?: boolean;
  /** Scale of the trunk's mixer and MLP output projections; 0 makes each layer add nothing (the next token then depends on the last token alone). */
  trunkMix?: number;
  /**
   * The MTP head: absent leaves it out; "random" draws every weight; "copy" makes fc pass the normed embedding
   * of the token at t + 1 through and the head's norms those of the trunk, with its layer's output projections
   * scaled by mix (0: the head predicts what the trunk would from that token alone).
   */
  mtp?: { kind: "random" | "copy"; mix?: number };
  /** MTP tensors to leave out (an incomplete head). */
  drop?: string[];
  /** Copy tokenizer.json and tokenizer_config.json from this directory (its vocabulary must be 448 tokens). */
  tokenizerFrom?: string;
  /** max_position_embeddings (default 512). */
  contextLength?: number;
}

/**
 * A tiny random Qwen3.5 text model in transformers' layout (zero-centred norms, conv1d [C, 1, K], per-expert
 * weights): layers linear, full, linear, full; vocabulary 448. Returns the directory and its f32 tensors by
 * stored name.
 */
export function makeTinyHybrid(spec: TinyHybridSpec, seed = 1): { dir: string; tensors: Record<string, Float32Array>; config: Record<string, unknown> } {
  const H = 32;
  const heads = 4;
  const kvHeads = 2;
  const hd = 16;
  const inter = 48;
  const V = 448;
  const Hk = 2;
  const Dk = 8;
  const Hv = 4;
  const Dv = 8;
  const K = 4;
  const E = 4;
  const moeInter = 16;
  const convDim = 2 * Hk * Dk + Hv * Dv;
  const layerTypes = ["linear_attention", "full_attention", "linear_attention", "full_attention"];
  const r = rng(seed);
  const t: Record<string, Entry> = {};
  const rand = (name: string, shape: number[], scale = 0.3, offset = 0) => {
    const n = shape.reduce((a, b) => a * b, 1);
    t[name] = { shape, data: Float32Array.from({ length: n }, () => offset + r() * 2 * scale) };
  };
  const scaled = (name: string, s: number) => {
    const d = t[name]!.data as Float32Array;
    for (let i = 0; i < d.length; i++) d[i]! *= s;
  };
  const mlp = (p: string, mix: number) => {
    if (spec.moe) {
      rand(`${p}.gate.weight`, [E, H], 0.5);
      for (let e = 0; e < E; e++) {
        rand(`${p}.experts.${e}.gate_proj.weight`, [moeInter, H]);
        rand(`${p}.experts.${e}.up_proj.weight`, [moeInter, H]);
        rand(`${p}.experts.${e}.down_proj.weight`, [H, moeInter]);
        scaled(`${p}.experts.${e}.down_proj.weight`, mix);
      }
      rand(`${p}.shared_expert.gate_proj.weight`, [moeInter, H]);
      rand(`${p}.shared_expert.up_proj.weight`, [moeInter, H]);
      rand(`${p}.shared_expert.down_proj.weight`, [H, moeInter]);
      scaled(`${p}.shared_expert.down_proj.weight`, mix);
      rand(`${p}.shared_expert_gate.weight`, [1, H], 0.5);
    } else {
      rand(`${p}.gate_proj.weight`, [inter, H]);
      rand(`${p}.up_proj.weight`, [inter, H]);
      rand(`${p}.down_proj.weight`, [H, inter]);
      scaled(`${p}.down_proj.weight`, mix);
    }
  };
  const fullAttention = (p: string, mix: number) => {
    rand(`${p}.q_proj.weight`, [heads * 2 * hd, H]);
    rand(`${p}.k_proj.weight`, [kvHeads * hd, H]);
    rand(`${p}.v_proj.weight`, [kvHeads * hd, H]);
    rand(`${p}.o_proj.weight`, [H, heads * hd]);
    scaled(`${p}.o_proj.weight`, mix);
    rand(`${p}.q_norm.weight`, [hd], 0.1);
    rand(`${p}.k_norm.weight`, [hd], 0.1);
  };
  const mix = spec.trunkMix ?? 1;
  rand("model.embed_tokens.weight", [V, H], 0.5);
  rand("lm_head.weight", [V, H], 0.5);
  rand("model.norm.weight", [H], 0.1);
  layerTypes.forEach((type, i) => {
    const p = `model.layers.${i}`;
    rand(`${p}.input_layernorm.weight`, [H], 0.1);
    rand(`${p}.post_attention_layernorm.weight`, [H], 0.1);
    if (type === "full_attention") fullAttention(`${p}.self_attn`, mix);
    else {
      const a = `${p}.linear_attn`;
      rand(`${a}.in_proj_qkv.weight`, [convDim, H]);
      rand(`${a}.in_proj_z.weight`, [Hv * Dv, H]);
      rand(`${a}.in_proj_b.weight`, [Hv, H]);
      rand(`${a}.in_proj_a.weight`, [Hv, H]);
      rand(`${a}.conv1d.weight`, [convDim, 1, K], 0.5);
      rand(`${a}.A_log`, [Hv], 0.5);
      rand(`${a}.dt_bias`, [Hv], 0.5);
      rand(`${a}.norm.weight`, [Dv], 0.1, 1);
      rand(`${a}.out_proj.weight`, [H, Hv * Dv]);
      scaled(`${a}.out_proj.weight`, mix);
    }
    mlp(`${p}.mlp`, mix);
  });
  if (spec.mtp) {
    const copy = spec.mtp.kind === "copy";
    const m = spec.mtp.mix ?? 1;
    rand("mtp.fc.weight", [H, 2 * H], 0.2);
    rand("mtp.pre_fc_norm_embedding.weight", [H], 0.1);
    rand("mtp.pre_fc_norm_hidden.weight", [H], 0.1);
    rand("mtp.norm.weight", [H], 0.1);
    rand("mtp.layers.0.input_layernorm.weight", [H], 0.1);
    rand("mtp.layers.0.post_attention_layernorm.weight", [H], 0.1);
    fullAttention("mtp.layers.0.self_attn", copy ? m : 1);
    mlp("mtp.layers.0.mlp", copy ? m : 1);
    if (copy) {
      const fc = t["mtp.fc.weight"]!.data as Float32Array;
      fc.fill(0);
      for (let i = 0; i < H; i++) fc[i * 2 * H + i] = 1;
      (t["mtp.pre_fc_norm_embedding.weight"]!.data as Float32Array).fill(0);
      t["mtp.norm.weight"] = { shape: [H], data: (t["model.norm.weight"]!.data as Float32Array).slice() };
    }
    for (const d of spec.drop ?? []) delete t[d];
  }
  const config: Record<string, unknown> = {
    model_type: spec.moe ? "qwen3_5_moe_text" : "qwen3_5_text",
    architectures: [spec.moe ? "Qwen3_5MoeForCausalLM" : "Qwen3_5ForCausalLM"],
    hidden_size: H,
    num_hidden_layers: layerTypes.length,
    layer_types: layerTypes,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: hd,
    intermediate_size: inter,
    vocab_size: V,
    max_position_embeddings: spec.contextLength ?? 512,
    rms_norm_eps: 1e-6,
    partial_rotary_factor: 0.25,
    rope_parameters: { rope_type: "default", rope_theta: 10000, partial_rotary_factor: 0.25 },
    tie_word_embeddings: false,
    eos_token_id: 402,
    linear_conv_kernel_dim: K,
    linear_key_head_dim: Dk,
    linear_num_key_heads: Hk,
    linear_value_head_dim: Dv,
    linear_num_value_heads: Hv,
    ...(spec.moe ? { num_experts: E, num_experts_per_tok: 2, moe_intermediate_size: moeInter, shared_expert_intermediate_size: moeInter } : {}),
    ...(spec.mtp ? { mtp_num_hidden_layers: 1 } : {}),
  };
  const dir = mkdtempSync(join(tmpdir(), "rmlx-tiny-qwen3_5-"));
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  writeSafetensors(join(dir, "model.safetensors"), t);
  if (spec.tokenizerFrom) for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(spec.tokenizerFrom, f), join(dir, f));
  const tensors: Record<string, Float32Array> = {};
  for (const [n, e] of Object.entries(t)) tensors[n] = e.data as Float32Array;
  return { dir, tensors, config };
}
