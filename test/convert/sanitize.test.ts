// mlx-lm's per-family sanitize steps that convert reproduces.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { WeightStore } from "../../src/io/weights.ts";
import { decodeFloats } from "../../src/quant/dtype.ts";
import { type Tensor, randomValues, runCli, tmp, writeTensors, cleanupScratch } from "./helpers.ts";

afterAll(cleanupScratch);

function model(config: Record<string, unknown>, tensors: Record<string, Tensor>): string {
  const dir = join(tmp(), "m");
  mkdirSync(dir);
  writeTensors(join(dir, "model.safetensors"), tensors);
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  return dir;
}

const bf = (shape: number[], values?: number[]): Tensor => ({
  dtype: "BF16",
  shape,
  values: values ? Float32Array.from(values) : randomValues(shape.reduce((a, b) => a * b, 1), shape.length * 7 + shape[0]!),
});

describe("qwen3_next", () => {
  const E = 2;
  const t: Record<string, Tensor> = {
    "model.embed_tokens.weight": bf([32, 64]),
    "model.norm.weight": bf([64], Array(64).fill(0.5)),
    "model.layers.0.input_layernorm.weight": bf([64], Array(64).fill(-0.25)),
    "model.layers.0.linear_attn.norm.weight": bf([16], Array(16).fill(1)),
    "model.layers.0.linear_attn.conv1d.weight": bf([8, 1, 4]),
    "model.layers.0.linear_attn.A_log": { dtype: "F32", shape: [2], values: Float32Array.of(0.1, 0.2) },
    "model.layers.0.mlp.gate.weight": bf([E, 64]),
    "model.layers.0.mlp.shared_expert_gate.weight": bf([1, 64]),
    "mtp.fc.weight": bf([64, 64]),
    "lm_head.weight": bf([32, 64]),
  };
  for (let e = 0; e < E; e++)
    for (const p of ["gate_proj", "up_proj", "down_proj"]) t[`model.layers.0.mlp.experts.${e}.${p}.weight`] = bf([64, 64]);
  const src = model({ model_type: "qwen3_next", num_hidden_layers: 1, num_experts: E, tie_word_embeddings: false, torch_dtype: "bfloat16" }, t);
  const out = join(tmp(), "o");
  const r = runCli("convert", "--model", src, "--out", out, "-q");

  test("converts", () => expect(r.code).toBe(0));

  test("zero-centred norms shift by one; the gated linear-attention norm does not", () => {
    const ws = WeightStore.open(out);
    const f = (n: string) => Array.from(decodeFloats("BF16", ws.require(n).bytes));
    expect(f("model.norm.weight")).toEqual(Array(64).fill(1.5));
    expect(f("model.layers.0.input_layernorm.weight")).toEqual(Array(64).fill(0.75));
    expect(f("model.layers.0.linear_attn.norm.weight")).toEqual(Array(16).fill(1));
  });

  test("conv1d weights move the kernel axis last; A_log keeps f32; MTP heads are kept (for speculative decoding)", () => {
    const ws = WeightStore.open(out);
    expect(ws.require("model.layers.0.linear_attn.conv1d.weight").shape).toEqual([8, 4, 1]);
    expect(ws.require("model.layers.0.linear_attn.A_log").dtype).toBe("F32");
    expect(ws.names().some((n) => n.startsWith("mtp."))).toBe(true);
    expect(ws.require("model.layers.0.mlp.switch_mlp.up_proj.weight").shape).toEqual([E, 64, 8]);
  });

  test("router and shared-expert gate get 8-bit g64", () => {
    const q = JSON.parse(readFileSync(join(out, "config.json"), "utf8")).quantization;
    expect(q["model.layers.0.mlp.gate"]).toEqual({ group_size: 64, bits: 8 });
    expect(q["model.layers.0.mlp.shared_expert_gate"]).toEqual({ group_size: 64, bits: 8 });
  });
});

test("gemma3 multimodal: text weights under language_model.*, vision dropped", () => {
  const src = model(
    { model_type: "gemma3", text_config: { num_hidden_layers: 1, tie_word_embeddings: true }, vision_config: { x: 1 } },
    {
      "model.language_model.embed_tokens.weight": bf([32, 64]),
      "model.language_model.layers.0.mlp.down_proj.weight": bf([64, 64]),
      "model.vision_tower.vision_model.embeddings.patch_embedding.weight": bf([4, 4]),
      "model.multi_modal_projector.mm_input_projection_weight": bf([4, 4]),
    },
  );
  const out = join(tmp(), "o");
  expect(runCli("convert", "--model", src, "--out", out).code).toBe(0);
  expect(WeightStore.open(out).names().sort()).toEqual([
    "language_model.model.embed_tokens.weight",
    "language_model.model.layers.0.mlp.down_proj.weight",
  ]);
  expect(JSON.parse(readFileSync(join(out, "config.json"), "utf8")).vision_config).toBeUndefined();
});

test("a model type whose sanitize is not reproduced is refused", () => {
  const src = model({ model_type: "deepseek_v3" }, { "model.embed_tokens.weight": bf([32, 64]) });
  const r = runCli("convert", "--model", src, "--out", join(tmp(), "o"));
  expect(r.code).toBe(2);
  expect(r.err).toContain("model_type 'deepseek_v3' cannot be converted yet");
});

test("a checkpoint missing an expert is refused", () => {
  const t: Record<string, Tensor> = { "model.embed_tokens.weight": bf([32, 64]) };
  for (const e of [0, 2]) t[`model.layers.0.mlp.experts.${e}.up_proj.weight`] = bf([64, 64]);
  const src = model({ model_type: "qwen3_moe", num_hidden_layers: 1 }, t);
  const r = runCli("convert", "--model", src, "--out", join(tmp(), "o"));
  expect(r.code).toBe(2);
  expect(r.err).toContain("are not numbered 0..2");
});
