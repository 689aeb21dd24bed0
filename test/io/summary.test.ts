import { describe, expect, test } from "bun:test";
import { openModelDir } from "../../src/io/model_dir.ts";
// config parsing learns the model families from the registry
import "../../src/models/registry.ts";
import { parseKvCodec } from "../../src/quant/kv_codec.ts";
import { describeClasses, kvCacheBytes, recurrentStateBytes, summarize, tensorClass, unsupportedReason } from "../../src/io/summary.ts";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  llamaConfig,
  llamaModules,
  llamaParamCount,
  llamaTensors,
  tempDir,
  TINY,
  writeModelDir,
  type QuantChoice,
  type TensorSpec,
} from "./helpers.ts";

function quantRecipe(path: string): QuantChoice {
  if (path === "model.embed_tokens") return { bits: 6, group: 64 };
  if (path === "model.layers.0.self_attn.v_proj") return { bits: 8, group: 64 };
  return { bits: 4, group: 64 };
}

function quantizedDir(): string {
  return writeModelDir(
    tempDir(),
    llamaConfig({
      quantization: {
        group_size: 64,
        bits: 4,
        "model.embed_tokens": { group_size: 64, bits: 6 },
        "model.layers.0.self_attn.v_proj": { group_size: 64, bits: 8 },
      },
    }),
    llamaTensors({ quant: quantRecipe }),
  );
}

describe("summarize", () => {
  test("bf16 llama: parameters, sizes, KV cache", () => {
    const md = openModelDir(writeModelDir(tempDir(), llamaConfig(), llamaTensors()));
    const s = summarize(md);
    expect(s.parameters).toBe(llamaParamCount());
    expect(s.weights_bytes).toBe(llamaParamCount() * 2);
    expect(s.size_bytes).toBeGreaterThan(s.weights_bytes);
    expect(s.quantization).toBe("attention/mlp/embed_tokens/lm_head/norms: bf16");
    // f16 K and V: 2 layers * 2 kv heads * 16 dims * 2 (K, V) * 2 bytes = 256 bytes per token.
    expect(s.kv_cache_bytes).toEqual({ "4096": 256 * 4096, "32768": 256 * 32768 });
    // head_dim 16: no group of 32 or 64 divides it, so the packed codecs cannot store it.
    expect(s.kv_cache_bytes_by_codec.f16).toEqual(s.kv_cache_bytes);
    expect(s.kv_cache_bytes_by_codec.q8).toEqual({ "4096": null, "32768": null });
    expect(s).toMatchObject({ layers: 2, heads: 4, kv_heads: 2, head_dim: 16, vocab_size: 256, context_length: 2048 });
    expect(s.rope).toEqual({ type: "default", base: 10000 });
  });

  test("4-bit MLX model with per-module overrides: logical parameters, per-class formats", () => {
    const md = openModelDir(quantizedDir());
    const s = summarize(md);
    // Packed words hold 32/bits values each; scales and biases are not parameters.
    expect(s.parameters).toBe(llamaParamCount());
    let bytes = 2 * (2 * TINY.layers + 1) * TINY.hidden; // bf16 norms
    for (const [path, out, inp] of llamaModules()) {
      const q = quantRecipe(path);
      bytes += (out * inp * q.bits) / 8 + 2 * 2 * (out * inp) / q.group;
    }
    expect(s.weights_bytes).toBe(bytes);
    expect(s.quantization).toBe(
      "attention: affine 4-bit g64 (7), affine 8-bit g64 (1); mlp/lm_head: affine 4-bit g64; embed_tokens: affine 6-bit g64; norms: bf16",
    );
    expect(s.quantization_classes.attention).toEqual({ "affine 4-bit g64": 7, "affine 8-bit g64": 1 });
  });

  test("sharded dir gives the same answers as a single file", () => {
    const one = summarize(openModelDir(writeModelDir(tempDir(), llamaConfig(), llamaTensors())));
    const three = summarize(openModelDir(writeModelDir(tempDir(), llamaConfig(), llamaTensors(), { shards: 3 })));
    expect(three.parameters).toBe(one.parameters);
    expect(three.weights_bytes).toBe(one.weights_bytes);
  });

  test("gemma3 KV cache: sliding layers capped at the window", () => {
    const cfg = {
      model_type: "gemma3",
      architectures: ["Gemma3ForConditionalGeneration"],
      text_config: {
        model_type: "gemma3_text",
        hidden_size: 64,
        num_hidden_layers: 6,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 32,
        intermediate_size: 128,
        vocab_size: 300,
        sliding_window: 512,
      },
    };
    const md = openModelDir(writeModelDir(tempDir(), cfg, { "language_model.model.norm.weight": { dtype: "BF16", shape: [64] } }));
    // Per token per layer: 2 * 1 head * 32 dims * 2 bytes = 128 bytes. Layers 0-4 sliding, layer 5 global.
    expect(kvCacheBytes(md, 4096)).toBe(5 * 512 * 128 + 4096 * 128);
    expect(kvCacheBytes(md, 100)).toBe(6 * 100 * 128);
    // Per codec (head_dim 32 takes groups of 32): q8 stores 32 codes + 1 f16 scale + 1 f16 bias per row = 36 bytes,
    // q4 20, fp8 34 (no bias), k8v4 36 + 20; K and V of 1 head per layer.
    expect(kvCacheBytes(md, 4096, parseKvCodec("q8"))).toBe((5 * 512 + 4096) * 72);
    expect(kvCacheBytes(md, 4096, parseKvCodec("q4"))).toBe((5 * 512 + 4096) * 40);
    expect(kvCacheBytes(md, 4096, parseKvCodec("fp8"))).toBe((5 * 512 + 4096) * 68);
    expect(kvCacheBytes(md, 4096, parseKvCodec("k8v4"))).toBe((5 * 512 + 4096) * 56);
    expect(kvCacheBytes(md, 4096, parseKvCodec("q4g64"))).toBeNull();
    expect(summarize(md).kv_cache_bytes_by_codec.q4!["4096"]).toBe((5 * 512 + 4096) * 40);
    const s = summarize(md);
    expect(s.layer_types).toEqual({ sliding_attention: 5, full_attention: 1 });
    expect(s.local_rope).toEqual({ type: "default", base: 10000 });
    expect(s.rope).toEqual({ type: "default", base: 1000000 });
    expect(unsupportedReason(md, ["gemma3_text"])).toBeNull();
    expect(unsupportedReason(md, ["gemma3"])).toBe("the gemma3_text architecture is not implemented yet");
  });

  test("runnability", () => {
    const qn = openModelDir(
      writeModelDir(tempDir(), { ...llamaConfig(), model_type: "qwen3_next", full_attention_interval: 2 }, llamaTensors()),
    );
    expect(unsupportedReason(qn, ["llama"])).toBe("the qwen3_next architecture is not implemented yet");
    // Linear-attention layers keep no KV cache.
    expect(kvCacheBytes(qn, 10)).toBe(10 * 2 * TINY.kvHeads * TINY.headDim * 2);
    expect(kvCacheBytes(qn, 10, parseKvCodec("f32"))).toBe(10 * 2 * TINY.kvHeads * TINY.headDim * 4);
    const bitnet = openModelDir(
      writeModelDir(tempDir(), { ...llamaConfig(), model_type: "llama", quantization_config: { quant_method: "awq" } }, llamaTensors()),
    );
    expect(unsupportedReason(bitnet, ["llama"])).toBe("awq checkpoints must first be converted with 'rmlx convert'");
  });
});

describe("tensor classes", () => {
  test("names map to classes", () => {
    expect(tensorClass("model.layers.0.self_attn.q_proj.weight")).toBe("attention");
    expect(tensorClass("model.layers.0.self_attn.q_proj.bias")).toBe("bias");
    expect(tensorClass("model.layers.0.self_attn.q_norm.weight")).toBe("norms");
    expect(tensorClass("model.layers.0.mlp.switch_mlp.gate_proj.weight")).toBe("mlp");
    expect(tensorClass("model.layers.0.mlp.gate.weight")).toBe("router");
    expect(tensorClass("model.layers.0.linear_attn.in_proj_qkvz.weight")).toBe("attention");
    expect(tensorClass("language_model.model.embed_tokens.weight")).toBe("embed_tokens");
    expect(tensorClass("lm_head.weight")).toBe("lm_head");
    expect(tensorClass("model.norm.weight")).toBe("norms");
  });

  test("classes with the same format are merged", () => {
    const m = new Map([
      ["attention", new Map([["affine 4-bit g64", 4]])],
      ["norms", new Map([["bf16", 3]])],
      ["mlp", new Map([["affine 4-bit g64", 3]])],
    ]);
    expect(describeClasses(m)).toBe("attention/mlp: affine 4-bit g64; norms: bf16");
  });
});

describe("rope summary", () => {
  test("scaling factor and partial rotary are reported", () => {
    const md = openModelDir(
      writeModelDir(
        tempDir(),
        llamaConfig({ model_type: "qwen3_next", partial_rotary_factor: 0.25, rope_scaling: { rope_type: "yarn", factor: 4 } }),
        llamaTensors(),
      ),
    );
    expect(summarize(md).rope).toEqual({ type: "yarn", base: 10000, factor: 4, partial_rotary_factor: 0.25 });
  });
});

describe("parameter counting beyond dense layers", () => {
  test("qwen3_moe: stacked 4-bit experts and an 8-bit router", () => {
    const E = 8;
    const H = 64;
    const M = 32;
    const t: Record<string, TensorSpec> = {
      "model.embed_tokens.weight": { dtype: "BF16", shape: [256, H] },
      "model.layers.0.mlp.gate.weight": { dtype: "U32", shape: [E, H / 4] },
      "model.layers.0.mlp.gate.scales": { dtype: "BF16", shape: [E, 1] },
      "model.layers.0.mlp.gate.biases": { dtype: "BF16", shape: [E, 1] },
      "model.layers.0.mlp.switch_mlp.gate_proj.weight": { dtype: "U32", shape: [E, M, H / 8] },
      "model.layers.0.mlp.switch_mlp.gate_proj.scales": { dtype: "BF16", shape: [E, M, 1] },
      "model.layers.0.mlp.switch_mlp.gate_proj.biases": { dtype: "BF16", shape: [E, M, 1] },
      "model.layers.0.mlp.switch_mlp.down_proj.weight": { dtype: "U32", shape: [E, H, M / 8] },
      "model.layers.0.mlp.switch_mlp.down_proj.scales": { dtype: "BF16", shape: [E, H, 1] },
      "model.layers.0.mlp.switch_mlp.down_proj.biases": { dtype: "BF16", shape: [E, H, 1] },
    };
    // down_proj's input (32) is below the group of 64: a real converter would leave it float; here it carries its own override.
    const cfg = llamaConfig({
      model_type: "qwen3_moe",
      num_hidden_layers: 1,
      num_experts: E,
      num_experts_per_tok: 2,
      moe_intermediate_size: M,
      quantization: {
        group_size: 64,
        bits: 4,
        "model.layers.0.mlp.gate": { group_size: 64, bits: 8 },
        "model.layers.0.mlp.switch_mlp.down_proj": { group_size: 32, bits: 4 },
      },
    });
    const s = summarize(openModelDir(writeModelDir(tempDir(), cfg, t)));
    expect(s.parameters).toBe(256 * H + E * H + E * M * H + E * H * M);
    expect(s.experts).toBe(E);
    expect(s.experts_per_token).toBe(2);
    expect(s.quantization).toBe(
      "mlp: affine 4-bit g64 (1), affine 4-bit g32 (1); router: affine 8-bit g64; embed_tokens: bf16",
    );
  });

  test("bitnet: ternary weights packed four per byte", () => {
    const t: Record<string, TensorSpec> = {
      "model.layers.0.self_attn.q_proj.weight": { dtype: "U8", shape: [16, 64] },
      "model.layers.0.self_attn.q_proj.weight_scale": { dtype: "BF16", shape: [1] },
      "model.norm.weight": { dtype: "BF16", shape: [64] },
    };
    const cfg = llamaConfig({ model_type: "bitnet", num_hidden_layers: 1 });
    const s = summarize(openModelDir(writeModelDir(tempDir(), cfg, t)));
    expect(s.parameters).toBe(64 * 64 + 64);
    expect(s.quantization).toBe("attention: ternary; norms: bf16");
  });

  test("gemma4: shared-KV layers own no cache, global layers use their own head_dim", () => {
    const cfg = {
      model_type: "gemma4_text",
      hidden_size: 64,
      num_hidden_layers: 10,
      intermediate_size: 128,
      num_attention_heads: 2,
      num_key_value_heads: 1,
      head_dim: 32,
      global_head_dim: 64,
      num_kv_shared_layers: 4,
      sliding_window: 16,
    };
    const md = openModelDir(writeModelDir(tempDir(), cfg, { "model.norm.weight": { dtype: "BF16", shape: [64] } }));
    // transformers' default pattern: layer 5 global, and the last (9) forced global. Layers 6-9 share earlier
    // caches. Own caches: sliding 0-4; global 5.
    const tokens = 100;
    expect(kvCacheBytes(md, tokens)).toBe(5 * 16 * (2 * 1 * 32 * 2) + tokens * (2 * 1 * 64 * 2));
  });

  describe("hybrids (Qwen3.5): KV in the full-attention layers only, recurrent state, MTP weights", () => {
    const HYBRID = join(import.meta.dir, "..", "fixtures", "models", "hybrid");
    // The fixtures: 4 layers (linear, full, linear, full); full attention 2 KV heads x 32; Gated DeltaNet
    // Hk 2 x Dk 16, Hv 4 x Dv 16, conv kernel 4 -> conv_dim 2*2*16 + 4*16 = 128.
    const kvPerToken = 2 * (2 * 32 * 2 * 2);
    const statePerLayer = 4 * (3 * 128 + 4 * 16 * 16);

    test("a text checkpoint without MTP weights", () => {
      const s = summarize(openModelDir(join(HYBRID, "qwen3_5_moe")));
      expect(s.layer_types).toEqual({ linear_attention: 2, full_attention: 2 });
      expect(s.kv_cache_bytes).toEqual({ "4096": kvPerToken * 4096, "32768": kvPerToken * 32768 });
      expect(s.recurrent_state_bytes).toBe(2 * statePerLayer);
      expect(s.mtp).toBeUndefined();
    });

    test("a checkpoint that keeps its mtp.* tensors (nested text_config)", () => {
      const s = summarize(openModelDir(join(HYBRID, "qwen3_5_vl")));
      expect(s.recurrent_state_bytes).toBe(2 * statePerLayer);
      // mtp.fc [64, 128], one layer's input norm [64] and q_proj [256, 64], and three norms [64], all bf16.
      const params = 64 * 128 + 64 + 256 * 64 + 3 * 64;
      expect(s.mtp).toEqual({ layers: 1, parameters: params, bytes: 2 * params });
    });

    test("layer types from full_attention_interval when the config does not list them", () => {
      const dir = tempDir();
      for (const f of ["model.safetensors", "tokenizer.json"]) copyFileSync(join(HYBRID, "qwen3_5_dense", f), join(dir, f));
      const cfg = JSON.parse(readFileSync(join(HYBRID, "qwen3_5_dense", "config.json"), "utf8"));
      delete cfg.layer_types;
      cfg.full_attention_interval = 4;
      writeFileSync(join(dir, "config.json"), JSON.stringify(cfg));
      const md = openModelDir(dir);
      expect(kvCacheBytes(md, 10)).toBe(10 * kvPerToken / 2);
      expect(recurrentStateBytes(md.config)).toBe(3 * statePerLayer);
      expect(summarize(md).layer_types).toEqual({ linear_attention: 3, full_attention: 1 });
    });

    test("models without linear-attention layers report no recurrent state", () => {
      expect(summarize(openModelDir(writeModelDir(tempDir(), llamaConfig(), llamaTensors()))).recurrent_state_bytes).toBeUndefined();
    });
  });
});
