import { describe, expect, test } from "bun:test";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { WeightStore } from "../../src/io/weights.ts";
import { llamaConfig, llamaTensors, safetensorsBytes, tempDir, writeModelDir } from "./helpers.ts";

describe("WeightStore", () => {
  test("a single model.safetensors", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors());
    const w = WeightStore.open(dir);
    const want = llamaTensors();
    expect(w.names().sort()).toEqual(Object.keys(want).sort());
    expect(w.has("lm_head.weight")).toBe(true);
    expect(w.get("model.embed_tokens.weight")).toMatchObject({ dtype: "BF16", shape: [256, 64] });
    expect(w.get("nope")).toBeUndefined();
    // bf16 everywhere: two bytes per value.
    const values = Object.values(want).reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    expect(w.totalBytes).toBe(values * 2);
    expect(w.files.length).toBe(1);
  });

  test("sharded through model.safetensors.index.json", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), { shards: 3 });
    const w = WeightStore.open(dir);
    expect(w.files.length).toBe(3);
    expect(w.names().sort()).toEqual(Object.keys(llamaTensors()).sort());
    expect(w.require("model.norm.weight").file).toContain("-of-00003.safetensors");
  });

  test("require names the directory and the tensor", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors());
    expect(() => WeightStore.open(dir).require("model.layers.9.mlp.up_proj.weight")).toThrow(
      `${dir}: missing tensor model.layers.9.mlp.up_proj.weight`,
    );
  });

  test("a shard named in the index but missing", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), { shards: 2 });
    rmSync(join(dir, "model-00002-of-00002.safetensors"));
    expect(() => WeightStore.open(dir)).toThrow(
      `${join(dir, "model.safetensors.index.json")}: shard 'model-00002-of-00002.safetensors' named in weight_map is missing`,
    );
  });

  test("a tensor in the index but not in its shard", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), { shards: 2 });
    const index = JSON.parse(readFileSync(join(dir, "model.safetensors.index.json"), "utf8"));
    index.weight_map["model.extra.weight"] = "model-00001-of-00002.safetensors";
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify(index));
    expect(() => WeightStore.open(dir)).toThrow(
      `${join(dir, "model-00001-of-00002.safetensors")}: tensor 'model.extra.weight' listed in model.safetensors.index.json is missing`,
    );
  });

  test("an index that is not JSON or has no weight_map", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), { shards: 2 });
    const idx = join(dir, "model.safetensors.index.json");
    writeFileSync(idx, "{");
    expect(() => WeightStore.open(dir)).toThrow(`${idx}: not valid JSON`);
    writeFileSync(idx, "{}");
    expect(() => WeightStore.open(dir)).toThrow(`${idx}: missing weight_map object`);
  });

  test("loose model*.safetensors files without an index; other safetensors files are not weights", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "model-2.safetensors"), safetensorsBytes({ y: { dtype: "F32", shape: [2] } }));
    writeFileSync(join(dir, "model-1.safetensors"), safetensorsBytes({ x: { dtype: "F32", shape: [3] } }));
    writeFileSync(join(dir, "adapters.safetensors"), safetensorsBytes({ lora: { dtype: "F32", shape: [3] } }));
    writeFileSync(join(dir, "consolidated.safetensors"), safetensorsBytes({ x: { dtype: "F32", shape: [3] } }));
    const w = WeightStore.open(dir);
    expect(w.names()).toEqual(["x", "y"]);
    expect(w.totalBytes).toBe(20);
  });

  test("older weights*.safetensors names", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "weights.00.safetensors"), safetensorsBytes({ x: { dtype: "F32", shape: [3] } }));
    expect(WeightStore.open(dir).names()).toEqual(["x"]);
  });

  test("the same tensor in two files", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "model-a.safetensors"), safetensorsBytes({ x: { dtype: "F32", shape: [3] } }));
    writeFileSync(join(dir, "model-b.safetensors"), safetensorsBytes({ x: { dtype: "F32", shape: [3] } }));
    expect(() => WeightStore.open(dir)).toThrow("tensor 'x' appears in both");
  });

  test("no weight files at all", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "adapters.safetensors"), safetensorsBytes({ lora: { dtype: "F32", shape: [3] } }));
    expect(() => WeightStore.open(dir)).toThrow(`${dir}: no model*.safetensors weight files`);
  });
});
