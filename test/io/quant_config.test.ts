import { describe, expect, test } from "bun:test";
import { parseQuantConfig, quantSpecFor } from "../../src/io/quant_config.ts";
import { WeightStore } from "../../src/io/weights.ts";
import { llamaConfig, llamaTensors, tempDir, writeModelDir } from "./helpers.ts";

describe("parseQuantConfig", () => {
  test("no quantization block", () => {
    expect(parseQuantConfig({ model_type: "llama" })).toBeNull();
    expect(parseQuantConfig({ quantization: null })).toBeNull();
  });

  test("global block with per-module overrides, mode absent means affine", () => {
    const block = {
      group_size: 64,
      bits: 4,
      "model.embed_tokens": { group_size: 64, bits: 6 },
      "model.layers.0.mlp.gate": { group_size: 64, bits: 8 },
      "model.layers.1.mlp.down_proj": false,
    };
    const qc = parseQuantConfig({ quantization: block, quantization_config: block })!;
    expect(qc.global).toEqual({ mode: "affine", bits: 4, groupSize: 64 });
    expect(qc.overrides.get("model.embed_tokens")).toEqual({ mode: "affine", bits: 6, groupSize: 64 });
    expect(qc.overrides.get("model.layers.0.mlp.gate")).toEqual({ mode: "affine", bits: 8, groupSize: 64 });
    expect(qc.overrides.get("model.layers.1.mlp.down_proj")).toBe(false);
    expect(qc.overrides.size).toBe(3);
    expect(qc.legacyMethod).toBeUndefined();
  });

  test("quantization_config alone, and the fp modes", () => {
    expect(parseQuantConfig({ quantization_config: { group_size: 32, bits: 4, mode: "mxfp4" } })!.global).toEqual({
      mode: "mxfp4",
      bits: 4,
      groupSize: 32,
    });
    expect(parseQuantConfig({ quantization: { mode: "nvfp4" } })!.global).toEqual({ mode: "nvfp4", bits: 4, groupSize: 16 });
    expect(parseQuantConfig({ quantization: { mode: "mxfp8", group_size: 32, bits: 8 } })!.global).toEqual({
      mode: "mxfp8",
      bits: 8,
      groupSize: 32,
    });
  });

  test("legacy quant_method", () => {
    expect(parseQuantConfig({ quantization_config: { quant_method: "bitnet", linear_class: "autobitlinear" } })).toEqual({
      global: null,
      overrides: new Map(),
      legacyMethod: "bitnet",
    });
    const awq = parseQuantConfig({ quantization_config: { quant_method: "awq", bits: 4, group_size: 128, zero_point: true } })!;
    expect(awq.legacyMethod).toBe("awq");
    expect(awq.global).toEqual({ mode: "affine", bits: 4, groupSize: 128 });
  });

  test("invalid specs", () => {
    expect(() => parseQuantConfig({ quantization: { bits: 7, group_size: 64 } })).toThrow(
      "config.json: quantization: affine does not support bits=7",
    );
    expect(() => parseQuantConfig({ quantization: { bits: 4, group_size: 48 } })).toThrow(
      "affine does not support group_size=48",
    );
    expect(() => parseQuantConfig({ quantization: { bits: 4, group_size: 64, mode: "int4" } })).toThrow(
      "unknown quantization mode 'int4'",
    );
    expect(() => parseQuantConfig({ quantization: { mode: "mxfp4", group_size: 64 } })).toThrow(
      "mxfp4 does not support group_size=64",
    );
    expect(() => parseQuantConfig({ quantization: 4 })).toThrow("quantization is not an object");
  });
});

describe("quantSpecFor", () => {
  const dir = writeModelDir(
    tempDir(),
    llamaConfig(),
    llamaTensors({
      quant: (p) => (p === "model.layers.0.mlp.down_proj" ? null : p === "lm_head" ? { bits: 8, group: 64 } : { bits: 4, group: 64 }),
    }),
  );
  const weights = WeightStore.open(dir);
  const qc = parseQuantConfig({
    quantization: { group_size: 64, bits: 4, lm_head: { group_size: 64, bits: 8 }, "model.layers.1.mlp.up_proj": false },
  });

  test("override first, then the presence of .scales, then the global spec", () => {
    expect(quantSpecFor(qc, "lm_head", weights)).toEqual({ mode: "affine", bits: 8, groupSize: 64 });
    expect(quantSpecFor(qc, "model.layers.1.mlp.up_proj", weights)).toBeNull();
    expect(quantSpecFor(qc, "model.layers.0.self_attn.q_proj", weights)).toEqual({ mode: "affine", bits: 4, groupSize: 64 });
    expect(quantSpecFor(qc, "model.layers.0.mlp.down_proj", weights)).toBeNull();
    expect(quantSpecFor(qc, "model.norm", weights)).toBeNull();
  });

  test("scales without any quantization config is a bad model", () => {
    expect(() => quantSpecFor(null, "model.layers.0.self_attn.q_proj", weights)).toThrow(
      "model.layers.0.self_attn.q_proj is quantized but config.json has no quantization",
    );
  });
});
