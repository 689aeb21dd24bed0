// Hybrid checkpoints with tensors of the wrong shape: loading fails with one bad_model error that names the tensor
// and the shape it should have, rather than a kernel reading past a buffer or a silent wrong answer.
import { describe, expect, test } from "bun:test";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { getBackend } from "../../src/backend/index.ts";
import { RmlxError } from "../../src/errors.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import type { StDType } from "../../src/io/safetensors.ts";
import { loadModel } from "../../src/models/registry.ts";
import { safetensorsBytes, tempDir, type TensorSpec } from "../io/helpers.ts";

const ROOT = join(import.meta.dir, "../fixtures/models/hybrid");

/** The fixture's tensors by name, in file order, with its metadata. */
function readFixture(name: string): { tensors: Record<string, TensorSpec>; metadata: Record<string, string> } {
  const bytes = readFileSync(join(ROOT, name, "model.safetensors"));
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, { dtype: StDType; shape: number[]; data_offsets: [number, number] }>;
  const tensors: Record<string, TensorSpec> = {};
  let metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(header)) {
    if (k === "__metadata__") {
      metadata = v as unknown as Record<string, string>;
      continue;
    }
    tensors[k] = { dtype: v.dtype, shape: v.shape, data: bytes.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]) };
  }
  return { tensors, metadata };
}

/** A copy of a fixture whose tensors went through `edit` (tensors given a new shape are zeros). */
function variant(name: string, edit: (t: Record<string, TensorSpec>) => void): string {
  const dir = tempDir("rmlx-hybrid-bad-");
  for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(ROOT, name, f), join(dir, f));
  const { tensors, metadata } = readFixture(name);
  edit(tensors);
  writeFileSync(join(dir, "model.safetensors"), safetensorsBytes(tensors, metadata));
  return dir;
}

const reshape = (t: Record<string, TensorSpec>, key: string, shape: number[]) => {
  expect(t[key]).toBeDefined();
  t[key] = { dtype: t[key]!.dtype, shape };
};

/** The one error loading gives. */
function loadError(dir: string): RmlxError {
  try {
    loadModel(getBackend(), openModelDir(dir));
  } catch (e) {
    expect(e).toBeInstanceOf(RmlxError);
    return e as RmlxError;
  }
  throw new Error("the model loaded");
}

// Fixture sizes: hidden 64; Gated DeltaNet conv_dim 128, kernel 4; MoE 8 experts of moe_intermediate_size 32.
const CONV = "model.layers.0.linear_attn.conv1d.weight";

describe("hybrid checkpoints with tensors of the wrong shape", () => {
  test("the untouched copy loads (the edits below are what fails)", () => {
    expect(() => loadModel(getBackend(), openModelDir(variant("qwen3_5_moe", () => {})))).not.toThrow();
  });

  test("conv1d with the wrong channel count names the tensor and both accepted layouts", () => {
    const e = loadError(variant("qwen3_5_dense", (t) => reshape(t, CONV, [120, 1, 4])));
    expect(e.code).toBe("bad_model");
    expect(e.message).toContain("model.layers.0.linear_attn.conv1d.weight is [120");
    expect(e.message).toContain("expected [128, 1, 4] (transformers) or [128, 4, 1] (MLX)");
  });

  test("conv1d with the wrong kernel size, in the MLX layout", () => {
    const e = loadError(variant("qwen3_5_dense", (t) => reshape(t, CONV, [128, 3, 1])));
    expect(e.code).toBe("bad_model");
    expect(e.message).toContain("conv1d.weight is [128, 3, 1], expected [128, 1, 4] (transformers) or [128, 4, 1] (MLX)");
  });

  test("a conv1d that is not depthwise", () => {
    const e = loadError(variant("qwen3_5_dense", (t) => reshape(t, CONV, [128, 2, 4])));
    expect(e.code).toBe("bad_model");
    expect(e.message).toContain(`${CONV} is [128, 2, 4], expected [128, 1, 4]`);
  });

  test("missing experts: a short stack, or a gap in the numbering", () => {
    const without = (x: number) => (t: Record<string, TensorSpec>) => {
      for (const k of Object.keys(t)) if (k.startsWith(`model.layers.1.mlp.experts.${x}.`)) delete t[k];
    };
    const short = loadError(variant("qwen3_5_moe", without(7)));
    expect(short.code).toBe("bad_model");
    expect(short.message).toContain("model.layers.1.mlp stores 7 experts where config.json has 8");
    const gap = loadError(variant("qwen3_5_moe", without(3)));
    expect(gap.code).toBe("bad_model");
    expect(gap.message).toContain("experts of model.layers.1.mlp.switch_mlp.gate_proj are not numbered 0..7");
  });

  test("experts of the wrong intermediate size name the stacked tensor and the expected shape", () => {
    const e = loadError(
      variant("qwen3_5_moe", (t) => {
        for (let x = 0; x < 8; x++) reshape(t, `model.layers.2.mlp.experts.${x}.gate_proj.weight`, [24, 64]);
      }),
    );
    expect(e.code).toBe("bad_model");
    expect(e.message).toContain("model.layers.2.mlp.switch_mlp.gate_proj is [8, 24, 64], expected [8, 32, 64] (moe_intermediate_size 32, hidden_size 64)");
  });

  test("one expert unlike the others names both tensors", () => {
    const e = loadError(variant("qwen3_next", (t) => reshape(t, "model.layers.0.mlp.experts.2.down_proj.weight", [64, 16])));
    expect(e.code).toBe("bad_model");
    expect(e.message).toContain("model.layers.0.mlp.experts.0.down_proj.weight");
    expect(e.message).toContain("model.layers.0.mlp.experts.2.down_proj.weight");
    expect(e.message).toContain("differ in shape");
  });

  test("fused experts (Qwen's gate_up_proj [E, 2I, H]) of the wrong size", () => {
    const e = loadError(
      variant("qwen3_5_moe", (t) => {
        for (const p of ["gate", "up", "down"]) for (let x = 0; x < 8; x++) delete t[`model.layers.0.mlp.experts.${x}.${p}_proj.weight`];
        t["model.layers.0.mlp.experts.gate_up_proj"] = { dtype: "BF16", shape: [8, 32, 64] };
        t["model.layers.0.mlp.experts.down_proj"] = { dtype: "BF16", shape: [8, 64, 32] };
      }),
    );
    expect(e.code).toBe("bad_model");
    expect(e.message).toContain("model.layers.0.mlp.experts.gate_up_proj is [8, 32, 64], expected [8, 64, 64]");
  });
});
