import { expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { RmlxError } from "../../src/errors.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { loadModel, SUPPORTED_MODEL_TYPES } from "../../src/models/registry.ts";
import { RefBackend } from "./ref_backend.ts";
import { makeTinyModel } from "./tiny_model.ts";

test("families this build runs", () => {
  expect([...SUPPORTED_MODEL_TYPES].sort()).toEqual([
    "bitnet",
    "gemma3",
    "gemma3_text",
    "gemma4",
    "gemma4_text",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_5",
    "qwen3_5_moe",
    "qwen3_5_moe_text",
    "qwen3_5_text",
    "qwen3_moe",
    "qwen3_next",
  ]);
});

test("an architecture this build does not run is RmlxError unsupported, naming it", () => {
  const dir = makeTinyModel({ modelType: "llama", extra: { model_type: "gpt_neox" } });
  try {
    let err: unknown;
    try {
      loadModel(new RefBackend(), openModelDir(dir));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RmlxError);
    expect((err as RmlxError).code).toBe("unsupported");
    expect((err as RmlxError).message).toContain("'gpt_neox'");
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test("a missing tensor is bad_model naming it", () => {
  const dir = makeTinyModel({ modelType: "qwen3", extra: { num_hidden_layers: 3 } });
  try {
    expect(() => loadModel(new RefBackend(), openModelDir(dir))).toThrow(/missing tensor model\.layers\.2\./);
  } finally {
    rmSync(dir, { recursive: true });
  }
});
