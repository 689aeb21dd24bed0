// Two independent implementations of MLX's quantization must agree bit for bit: the fixture generator's numpy
// reference (scripts/mlx_quant_ref.py) wrote the *_q* fixtures from the float fixtures; converting the same
// float fixtures here must give the same tensors, byte for byte.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { WeightStore } from "../../src/io/weights.ts";
import { affineQuantize } from "../../src/quant/affine.ts";
import { decodeFloats, encodeFloats } from "../../src/quant/dtype.ts";
import { ROOT, runCli, tmp, cleanupScratch } from "./helpers.ts";

afterAll(cleanupScratch);

const MODELS = join(ROOT, "test", "fixtures", "models");

interface Case {
  name: string;
  base: string;
  flags: string[];
  /** Tensors the CLI cannot produce the fixture's way (per-module overrides a flag cannot state). */
  skip?: RegExp;
}

const CASES: Case[] = [
  { name: "llama_gqa_q4", base: "llama_gqa", flags: ["-q"] },
  { name: "qwen3_q8", base: "qwen3", flags: ["-q", "--bits", "8", "--group-size", "32"] },
  { name: "qwen3_q3", base: "qwen3", flags: ["-q", "--bits", "3", "--group-size", "32"] },
  { name: "qwen3_moe_q4", base: "qwen3_moe", flags: ["-q"] },
  { name: "llama_gqa_mxfp4", base: "llama_gqa", flags: ["-q", "--mode", "mxfp4"], skip: /^model\.embed_tokens\./ },
  { name: "gemma4_e_mxfp8", base: "gemma4_e", flags: ["-q", "--mode", "mxfp8"] },
];

describe("agreement with the fixture generator's quantizer", () => {
  for (const c of CASES) {
    const fixture = join(MODELS, c.name);
    test.skipIf(!existsSync(fixture))(`${c.name}: every tensor byte for byte`, () => {
      const out = join(tmp(), c.name);
      const r = runCli("convert", "--model", join(MODELS, c.base), "--out", out, ...c.flags);
      expect(r.err).toContain("bits per weight");
      const ours = WeightStore.open(out);
      const theirs = WeightStore.open(fixture);
      const keep = (n: string) => !c.skip?.test(n);
      expect(ours.names().filter(keep).sort()).toEqual(theirs.names().filter(keep).sort());
      let compared = 0;
      for (const name of theirs.names().filter(keep)) {
        const a = ours.require(name);
        const b = theirs.require(name);
        expect({ name, dtype: a.dtype, shape: a.shape }).toEqual({ name, dtype: b.dtype, shape: b.shape });
        if (!Buffer.from(a.bytes).equals(Buffer.from(b.bytes))) throw new Error(`${c.name}: ${name} differs`);
        compared++;
      }
      expect(compared).toBeGreaterThan(10);
      const q = JSON.parse(readFileSync(join(out, "config.json"), "utf8")).quantization;
      const fq = JSON.parse(readFileSync(join(fixture, "config.json"), "utf8")).quantization;
      if (!c.skip) expect({ mode: "affine", ...q }).toEqual({ mode: "affine", ...fq });
    });
  }

  test.skipIf(!existsSync(join(MODELS, "llama_gqa_mxfp4")))("llama_gqa_mxfp4: the 8-bit affine embedding override", () => {
    const base = WeightStore.open(join(MODELS, "llama_gqa"));
    const fx = WeightStore.open(join(MODELS, "llama_gqa_mxfp4"));
    const e = base.require("model.embed_tokens.weight");
    const q = affineQuantize(decodeFloats("BF16", e.bytes), 64, 8);
    expect(Buffer.from(new Uint8Array(q.weight.buffer)).equals(Buffer.from(fx.require("model.embed_tokens.weight").bytes))).toBe(true);
    expect(Buffer.from(encodeFloats("BF16", q.scales)).equals(Buffer.from(fx.require("model.embed_tokens.scales").bytes))).toBe(true);
    expect(Buffer.from(encodeFloats("BF16", q.biases)).equals(Buffer.from(fx.require("model.embed_tokens.biases").bytes))).toBe(true);
  });
});
