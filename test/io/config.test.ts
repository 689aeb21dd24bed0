import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { RmlxError } from "../../src/errors.ts";
import { ConfigReader, loadConfig, parseConfig } from "../../src/io/config.ts";
import { gemma3Args } from "../../src/models/gemma3.ts";
import { qwen3MoeArgs } from "../../src/models/qwen3_moe.ts";
import { familyFor } from "../../src/models/registry.ts";
import { llamaConfig, tempDir } from "./helpers.ts";

const SRC = "m/config.json";

function parseError(raw: unknown): RmlxError {
  try {
    parseConfig(raw, SRC);
  } catch (err) {
    expect(err).toBeInstanceOf(RmlxError);
    return err as RmlxError;
  }
  throw new Error("expected parseConfig to fail");
}

// Shapes as published for Qwen3-0.6B (legacy keys).
const QWEN3 = {
  architectures: ["Qwen3ForCausalLM"],
  model_type: "qwen3",
  hidden_size: 1024,
  num_hidden_layers: 28,
  num_attention_heads: 16,
  num_key_value_heads: 8,
  head_dim: 128,
  intermediate_size: 3072,
  vocab_size: 151936,
  max_position_embeddings: 40960,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  rope_scaling: null,
  sliding_window: null,
  use_sliding_window: false,
  max_window_layers: 28,
  attention_bias: false,
  tie_word_embeddings: true,
  bos_token_id: 151643,
  eos_token_id: 151645,
  torch_dtype: "bfloat16",
};

// The gemma-3-4b-it layout: the language model nested under text_config with most values left at their defaults.
const GEMMA3 = {
  architectures: ["Gemma3ForConditionalGeneration"],
  model_type: "gemma3",
  eos_token_id: [1, 106],
  text_config: {
    hidden_size: 2560,
    intermediate_size: 10240,
    model_type: "gemma3_text",
    num_hidden_layers: 34,
    rope_scaling: { factor: 8.0, rope_type: "linear" },
    sliding_window: 1024,
  },
  torch_dtype: "bfloat16",
  vision_config: { hidden_size: 1152, model_type: "siglip_vision_model" },
};

describe("parseConfig", () => {
  test("qwen3 with legacy keys", () => {
    const c = parseConfig(QWEN3, SRC);
    expect(c).toMatchObject({
      modelType: "qwen3",
      architecture: "Qwen3ForCausalLM",
      hiddenSize: 1024,
      numLayers: 28,
      numHeads: 16,
      numKvHeads: 8,
      headDim: 128,
      intermediateSize: 3072,
      vocabSize: 151936,
      contextLength: 40960,
      rmsNormEps: 1e-6,
      tieWordEmbeddings: true,
      rope: { type: "default", theta: 1000000 },
      eosTokenIds: [151645],
      bosTokenId: 151643,
    });
    expect(c.slidingWindow).toBeUndefined();
    expect(c.layerTypes).toBeUndefined();
    expect(c.raw.max_window_layers).toBe(28);
  });

  test("llama defaults: kv heads = heads, head_dim = hidden / heads, llama3 rope", () => {
    const c = parseConfig(
      llamaConfig({
        num_key_value_heads: undefined,
        rope_theta: 500000,
        rope_scaling: {
          factor: 32.0,
          high_freq_factor: 4.0,
          low_freq_factor: 1.0,
          original_max_position_embeddings: 8192,
          rope_type: "llama3",
        },
      }),
      SRC,
    );
    expect(c.numKvHeads).toBe(4);
    expect(c.headDim).toBe(16);
    expect(c.rope).toEqual({
      type: "llama3",
      theta: 500000,
      factor: 32,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
  });

  test("legacy rope_scaling with 'type', yarn and longrope ('su')", () => {
    const linear = parseConfig(llamaConfig({ rope_scaling: { type: "linear", factor: 2 } }), SRC);
    expect(linear.rope).toEqual({ type: "linear", theta: 10000, factor: 2 });
    const yarn = parseConfig(
      llamaConfig({
        original_max_position_embeddings: 4096,
        rope_scaling: { type: "yarn", factor: 4, beta_fast: 32, beta_slow: 1, mscale: 0.707, mscale_all_dim: 0.707 },
      }),
      SRC,
    );
    expect(yarn.rope).toEqual({
      type: "yarn",
      theta: 10000,
      factor: 4,
      betaFast: 32,
      betaSlow: 1,
      mscale: 0.707,
      mscaleAllDim: 0.707,
      originalMaxPositionEmbeddings: 4096,
    });
    const su = parseConfig(llamaConfig({ rope_scaling: { type: "su", short_factor: [1, 1], long_factor: [2, 3] } }), SRC);
    expect(su.rope).toMatchObject({ type: "longrope" });
  });

  test("rope errors", () => {
    const unknown = parseError(llamaConfig({ rope_scaling: { rope_type: "wavelet", factor: 2 } }));
    expect(unknown.code).toBe("unsupported");
    expect(unknown.message).toBe(`${SRC}: unknown rope type 'wavelet' (rope_scaling.rope_type)`);
    expect(parseError(llamaConfig({ rope_scaling: { rope_type: "llama3", factor: 8 } })).message).toBe(
      `${SRC}: rope_scaling: llama3 rope needs low_freq_factor`,
    );
    expect(parseError(llamaConfig({ rope_scaling: { type: "linear" } })).message).toBe(
      `${SRC}: rope_scaling: linear rope needs factor`,
    );
  });

  test("transformers-5 rope_parameters (one block)", () => {
    const { rope_theta: _, rope_scaling: __, ...rest } = QWEN3;
    const c = parseConfig({ ...rest, rope_parameters: { rope_type: "default", rope_theta: 1000000 } }, SRC);
    expect(c.rope).toEqual({ type: "default", theta: 1000000 });
    const l3 = parseConfig(
      llamaConfig({
        rope_theta: undefined,
        rope_parameters: {
          rope_type: "llama3",
          rope_theta: 500000,
          factor: 8,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 8192,
        },
      }),
      SRC,
    );
    expect(l3.rope).toMatchObject({ type: "llama3", theta: 500000, factor: 8 });
  });

  test("gemma3 nested under text_config, family defaults filled in", () => {
    const c = parseConfig(GEMMA3, SRC);
    expect(c).toMatchObject({
      modelType: "gemma3",
      architecture: "Gemma3ForConditionalGeneration",
      hiddenSize: 2560,
      numLayers: 34,
      numHeads: 8,
      numKvHeads: 4,
      headDim: 256,
      intermediateSize: 10240,
      vocabSize: 262208,
      contextLength: 131072,
      tieWordEmbeddings: true,
      rope: { type: "linear", theta: 1000000, factor: 8 },
      localRope: { type: "default", theta: 10000 },
      slidingWindow: 1024,
      eosTokenIds: [1, 106],
    });
    expect(gemma3Args(c, SRC).queryPreAttnScalar).toBe(256);
    // Every sixth layer (5, 11, 17, 23, 29) is global.
    const full = c.layerTypes!.flatMap((t, i) => (t === "full_attention" ? [i] : []));
    expect(full).toEqual([5, 11, 17, 23, 29]);
    expect(c.layerTypes!.length).toBe(34);
    expect(c.raw.model_type).toBe("gemma3_text");
    expect(c.raw.vision_config).toBeUndefined();
  });

  test("gemma3 in transformers-5 form: rope_parameters per layer type and layer_types", () => {
    const layerTypes = ["sliding_attention", "full_attention", "sliding_attention"];
    const c = parseConfig(
      {
        architectures: ["Gemma3ForCausalLM"],
        model_type: "gemma3_text",
        hidden_size: 64,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        head_dim: 32,
        intermediate_size: 128,
        vocab_size: 300,
        max_position_embeddings: 32768,
        sliding_window: 512,
        layer_types: layerTypes,
        final_logit_softcapping: null,
        rope_parameters: {
          full_attention: { rope_type: "linear", factor: 8.0, rope_theta: 1000000.0 },
          sliding_attention: { rope_type: "default", rope_theta: 10000.0 },
        },
      },
      SRC,
    );
    expect(c.layerTypes).toEqual(layerTypes as never);
    expect(c.rope).toEqual({ type: "linear", theta: 1000000, factor: 8 });
    expect(c.localRope).toEqual({ type: "default", theta: 10000 });
    expect(gemma3Args(c, SRC).finalLogitSoftcapping).toBeUndefined();
  });

  test("gemma4 text: proportional global rope with partial rotary", () => {
    const c = parseConfig(
      {
        model_type: "gemma4",
        architectures: ["Gemma4ForConditionalGeneration"],
        text_config: {
          model_type: "gemma4_text",
          hidden_size: 1536,
          num_hidden_layers: 10,
          intermediate_size: 6144,
          rope_parameters: {
            full_attention: { rope_type: "proportional", rope_theta: 1000000.0, partial_rotary_factor: 0.25 },
            sliding_attention: { rope_type: "default", rope_theta: 10000.0 },
          },
        },
      },
      SRC,
    );
    expect(c.rope).toEqual({ type: "proportional", theta: 1000000, partialRotaryFactor: 0.25 });
    expect(c.localRope).toEqual({ type: "default", theta: 10000 });
    // transformers' defaults: no soft-cap unless the config has one; five sliding layers to one full, and the last
    // layer always full.
    expect(new ConfigReader(c.raw, familyFor("gemma4")!.configDefaults!, SRC).optNum("final_logit_softcapping")).toBeUndefined();
    expect(c.layerTypes!.flatMap((t, i) => (t === "full_attention" ? [i] : []))).toEqual([5, 9]);
  });

  test("qwen3_moe fields", () => {
    const c = parseConfig(
      {
        ...QWEN3,
        model_type: "qwen3_moe",
        architectures: ["Qwen3MoeForCausalLM"],
        num_experts: 128,
        num_experts_per_tok: 8,
        moe_intermediate_size: 768,
        norm_topk_prob: true,
        decoder_sparse_step: 1,
        mlp_only_layers: [0, 3],
      },
      SRC,
    );
    expect(c).toMatchObject({ numExperts: 128, numExpertsPerTok: 8 });
    expect(qwen3MoeArgs(c, SRC)).toMatchObject({
      moeIntermediateSize: 768,
      normTopkProb: true,
      decoderSparseStep: 1,
      mlpOnlyLayers: [0, 3],
    });
  });

  test("qwen3_next: linear-attention layers from full_attention_interval, partial rotary", () => {
    const c = parseConfig(
      {
        ...QWEN3,
        model_type: "qwen3_next",
        architectures: ["Qwen3NextForCausalLM"],
        num_hidden_layers: 8,
        head_dim: 256,
        full_attention_interval: 4,
        partial_rotary_factor: 0.25,
        rope_theta: 10000000,
        linear_num_value_heads: 32,
      },
      SRC,
    );
    expect(c.layerTypes).toEqual([
      "linear_attention",
      "linear_attention",
      "linear_attention",
      "full_attention",
      "linear_attention",
      "linear_attention",
      "linear_attention",
      "full_attention",
    ]);
    expect(c.rope).toEqual({ type: "default", theta: 10000000, partialRotaryFactor: 0.25 });
  });

  test("qwen3_5: text_config with layer_types and rope_parameters carrying mrope sections", () => {
    const c = parseConfig(
      {
        model_type: "qwen3_5",
        architectures: ["Qwen3_5ForConditionalGeneration"],
        text_config: {
          ...QWEN3,
          model_type: "qwen3_5_text",
          num_hidden_layers: 4,
          layer_types: ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
          rope_theta: undefined,
          rope_parameters: {
            rope_type: "default",
            rope_theta: 10000000,
            partial_rotary_factor: 0.25,
            mrope_section: [11, 11, 10],
            mrope_interleaved: true,
          },
        },
      },
      SRC,
    );
    expect(c.modelType).toBe("qwen3_5");
    expect(c.layerTypes![3]).toBe("full_attention");
    expect(c.rope).toEqual({ type: "default", theta: 10000000, partialRotaryFactor: 0.25 });
  });

  test("mistral keeps its sliding window; qwen2 drops it when use_sliding_window is off", () => {
    const m = parseConfig({ ...llamaConfig(), model_type: "mistral", sliding_window: 4096 }, SRC);
    expect(m.slidingWindow).toBe(4096);
    const q = parseConfig({ ...llamaConfig(), model_type: "qwen2", sliding_window: 32768, use_sliding_window: false }, SRC);
    expect(q.slidingWindow).toBeUndefined();
  });

  test("bitnet", () => {
    const c = parseConfig(
      {
        ...llamaConfig(),
        model_type: "bitnet",
        architectures: ["BitNetForCausalLM"],
        quantization_config: { quant_method: "bitnet", linear_class: "autobitlinear", quantization_mode: "online" },
      },
      SRC,
    );
    expect(c.modelType).toBe("bitnet");
  });

  test("unknown architecture, missing and malformed fields", () => {
    const e = parseError({ ...QWEN3, model_type: "gpt_neox" });
    expect(e.code).toBe("unsupported");
    expect(e.message).toBe(`${SRC}: unknown architecture 'gpt_neox'`);
    expect(parseError({ ...GEMMA3, text_config: { ...GEMMA3.text_config, model_type: "t5" } }).message).toBe(
      `${SRC}: unknown architecture 't5'`,
    );
    expect(parseError({ ...QWEN3, model_type: undefined }).message).toBe(`${SRC}: missing model_type`);
    expect(parseError({ ...QWEN3, hidden_size: undefined }).message).toBe(`${SRC}: missing hidden_size`);
    expect(parseError({ ...QWEN3, vocab_size: "big" }).message).toBe(`${SRC}: vocab_size is not a number`);
    expect(parseError({ ...QWEN3, num_key_value_heads: 5 }).code).toBe("bad_model");
    expect(parseError({ ...QWEN3, layer_types: ["full_attention"] }).message).toBe(
      `${SRC}: layer_types must list 28 entries, one per layer`,
    );
    expect(parseError([1]).message).toBe(`${SRC}: not a JSON object`);
  });
});

describe("loadConfig", () => {
  test("reads <dir>/config.json and reports problems against that path", () => {
    const dir = tempDir();
    const path = join(dir, "config.json");
    expect(() => loadConfig(join(dir, "absent"))).toThrow(`${join(dir, "absent")}: no such directory`);
    expect(() => loadConfig(dir)).toThrow(`${path}: file not found`);
    writeFileSync(path, "{ nope");
    expect(() => loadConfig(dir)).toThrow(`${path}: invalid JSON`);
    writeFileSync(path, JSON.stringify(QWEN3));
    expect(loadConfig(dir).numLayers).toBe(28);
  });
});
