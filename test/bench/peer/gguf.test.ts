import { expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ggufHeader, writeGguf } from "../../../scripts/bench/peer/gguf.ts";
import { MODELS, modelMetadata, modelTensors } from "../../../scripts/bench/peer/random_gguf.ts";

const u32 = (v: number) => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
const u64 = (v: number) => [...u32(v), 0, 0, 0, 0];
const str = (s: string) => [...u64(s.length), ...new TextEncoder().encode(s)];

test("header bytes follow the GGUF v3 layout, dimensions innermost first, padded to 32", () => {
  const h = ggufHeader([["a", { u32: 7 }]], [{ name: "t", shape: [2, 3], type: "f16" }]);
  const expected = [
    0x47, 0x47, 0x55, 0x46, // "GGUF"
    ...u32(3), ...u64(1), ...u64(1),
    ...str("a"), ...u32(4), ...u32(7), // key, type UINT32, value
    ...str("t"), ...u32(2), ...u64(3), ...u64(2), ...u32(1), ...u64(0), // name, n_dims, ne0=3, ne1=2, F16, offset
  ];
  expect(expected.length).toBe(82);
  expect([...h]).toEqual([...expected, ...new Array(96 - 82).fill(0)]);
});

test("metadata types: string, bool, f32, string array", () => {
  const h = ggufHeader([["s", "xy"], ["b", true], ["f", { f32: 1.5 }], ["l", ["p", "q"]]], []);
  const body = [...h.subarray(24)];
  const expected = [
    ...str("s"), ...u32(8), ...str("xy"),
    ...str("b"), ...u32(7), 1,
    ...str("f"), ...u32(6), 0, 0, 0xc0, 0x3f, // 1.5f = 0x3fc00000
    ...str("l"), ...u32(9), ...u32(8), ...u64(2), ...str("p"), ...str("q"),
  ];
  expect(body.slice(0, expected.length)).toEqual(expected);
  expect(h.length % 32).toBe(0);
});

test("tensor data starts at aligned offsets and holds what fill wrote", () => {
  const dir = mkdtempSync(join(tmpdir(), "gguf-"));
  try {
    const path = join(dir, "t.gguf");
    const fill = (v: number) => (out: Uint8Array) => out.fill(v);
    const size = writeGguf(path, [], [
      { name: "a", shape: [3], type: "f32", fill: fill(1) },
      { name: "b", shape: [5], type: "bf16", fill: fill(2) },
    ]);
    const bytes = readFileSync(path);
    const header = ggufHeader([], [
      { name: "a", shape: [3], type: "f32" },
      { name: "b", shape: [5], type: "bf16" },
    ]);
    // a: 12 bytes at 0, padded to 32; b: 10 bytes at 32, padded to 64.
    expect(size).toBe(header.length + 64);
    expect(bytes.length).toBe(size);
    const data = bytes.subarray(header.length);
    expect([...data.subarray(0, 12)]).toEqual(new Array(12).fill(1));
    expect([...data.subarray(12, 32)]).toEqual(new Array(20).fill(0));
    expect([...data.subarray(32, 42)]).toEqual(new Array(10).fill(2));
    const dv = new DataView(header.buffer);
    // Second tensor info's offset is the header's last 8 bytes before padding: find it by its name "b".
    const nameAt = header.indexOf(0x62, 40);
    expect(Number(dv.getBigUint64(nameAt + 1 + 4 + 8 + 4, true))).toBe(32);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("random model tensors have the parameter counts of the real models", () => {
  const count = (name: keyof typeof MODELS) =>
    modelTensors(MODELS[name], "bf16")
      .filter((t) => t.name !== "rope_freqs.weight")
      .reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
  // Published parameter counts (tied embeddings counted once): Qwen3-0.6B 596,049,920; Llama-3.2-1B 1,235,814,400.
  expect(count("qwen3-0.6b")).toBe(596049920);
  expect(count("llama-3.2-1b")).toBe(1235814400);
  const meta = Object.fromEntries(modelMetadata("qwen3-0.6b", MODELS["qwen3-0.6b"], "f16"));
  expect(meta["general.architecture"]).toBe("qwen3");
  expect(meta["qwen3.attention.key_length"]).toEqual({ u32: 128 });
});
