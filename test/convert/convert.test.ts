// End to end through the CLI on tiny checkpoints written in the test.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SafetensorsFile, type TensorEntry } from "../../src/io/safetensors.ts";
import { WeightStore } from "../../src/io/weights.ts";
import { affineDequantize, affineQuantize } from "../../src/quant/affine.ts";
import { decodeFloats, roundArrayTo } from "../../src/quant/dtype.ts";
import { fpDequantize } from "../../src/quant/fp.ts";
import { makeHfModel, runCli, tmp, cleanupScratch } from "./helpers.ts";

afterAll(cleanupScratch);

function floats(t: TensorEntry): Float32Array {
  return decodeFloats(t.dtype as "BF16", t.bytes);
}

function u32(t: TensorEntry): Uint32Array {
  return new Uint32Array(t.bytes.slice().buffer);
}

function config(dir: string): Record<string, any> {
  return JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
}

function ok(r: { code: number; err: string }) {
  if (r.code !== 0) throw new Error(`convert failed (${r.code}): ${r.err}`);
}

describe("HF to MLX", () => {
  const src = join(tmp(), "hf");
  const hf = makeHfModel(src, { experts: 4 });
  const out = join(tmp(), "q4");
  ok(runCli("convert", "--model", src, "--out", out, "-q"));
  const ws = WeightStore.open(out);

  test("names follow mlx-lm's sanitize: experts stacked, rotary tables dropped", () => {
    const names = ws.names();
    expect(names).toContain("model.layers.0.mlp.switch_mlp.gate_proj.weight");
    expect(names.some((n) => n.includes("experts."))).toBe(false);
    expect(names.some((n) => n.includes("inv_freq"))).toBe(false);
    expect(ws.require("model.layers.1.mlp.switch_mlp.down_proj.weight").shape).toEqual([4, 64, (128 * 4) / 32]);
  });

  test("quantized modules: U32 weights, bf16 scales and biases; norms stay float", () => {
    const q = ws.require("model.layers.0.self_attn.q_proj.weight");
    expect(q.dtype).toBe("U32");
    expect(q.shape).toEqual([64, 8]);
    expect(ws.require("model.layers.0.self_attn.q_proj.scales").dtype).toBe("BF16");
    expect(ws.require("model.layers.0.self_attn.q_proj.biases").shape).toEqual([64, 1]);
    expect(ws.require("model.embed_tokens.weight").dtype).toBe("U32");
    expect(ws.require("lm_head.scales").shape).toEqual([96, 1]);
    expect(ws.require("model.norm.weight").dtype).toBe("BF16");
    expect(ws.has("model.norm.scales")).toBe(false);
  });

  test("packed words are MLX's affine quantization of the source values", () => {
    const srcT = hf["model.layers.1.self_attn.o_proj.weight"]!;
    const want = affineQuantize(roundArrayTo("BF16", srcT.values!.slice()), 64, 4);
    expect(Array.from(u32(ws.require("model.layers.1.self_attn.o_proj.weight")))).toEqual(Array.from(want.weight));
    const scales = floats(ws.require("model.layers.1.self_attn.o_proj.scales"));
    expect(Array.from(scales)).toEqual(Array.from(roundArrayTo("BF16", want.scales)));
  });

  test("stacked experts quantize expert by expert in order", () => {
    const w = u32(ws.require("model.layers.0.mlp.switch_mlp.up_proj.weight"));
    const per = (128 * 64 * 4) / 32;
    for (const e of [0, 3]) {
      const srcT = hf[`model.layers.0.mlp.experts.${e}.up_proj.weight`]!;
      const want = affineQuantize(roundArrayTo("BF16", srcT.values!.slice()), 64, 4);
      expect(Array.from(w.subarray(e * per, (e + 1) * per))).toEqual(Array.from(want.weight));
    }
  });

  test("MoE routers get 8-bit g64, recorded per module in config.json", () => {
    const c = config(out);
    expect(c.quantization).toEqual({
      group_size: 64,
      bits: 4,
      mode: "affine",
      "model.layers.0.mlp.gate": { group_size: 64, bits: 8 },
      "model.layers.1.mlp.gate": { group_size: 64, bits: 8 },
    });
    expect(c.quantization_config).toEqual(c.quantization);
    expect(ws.require("model.layers.0.mlp.gate.weight").shape).toEqual([4, 16]);
    expect(c._name_or_path).toBeUndefined();
    expect(Object.keys(c)).toEqual([...Object.keys(c)].sort());
  });

  test("index, metadata and copied files", () => {
    const idx = JSON.parse(readFileSync(join(out, "model.safetensors.index.json"), "utf8"));
    expect(Object.keys(idx.weight_map).sort()).toEqual(ws.names().sort());
    expect(idx.metadata.total_size).toBe(ws.totalBytes);
    // total_parameters counts quantized weights at their float size, like mlx-lm's get_total_parameters
    const srcParams = Object.entries(hf)
      .filter(([n]) => !n.includes("inv_freq"))
      .reduce((a, [, t]) => a + t.shape.reduce((x, y) => x * y, 1), 0);
    expect(idx.metadata.total_parameters).toBe(srcParams);
    expect(SafetensorsFile.open(join(out, "model.safetensors")).metadata).toEqual({ format: "mlx" });
    const files = readdirSync(out).sort();
    expect(files).toEqual(["chat_template.jinja", "config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer_config.json"]);
  });
});

describe("modes and widths", () => {
  const src = join(tmp(), "hf");
  const hf = makeHfModel(src, { layers: 1, hidden: 128, inter: 256, vocab: 64 });
  const srcVals = roundArrayTo("BF16", hf["model.layers.0.mlp.down_proj.weight"]!.values!.slice());
  const cases: [string, string[], number][] = [
    ...[2, 3, 4, 5, 6, 8].flatMap((b) => [32, 64, 128].map((g): [string, string[], number] => [`affine ${b}-bit g${g}`, ["--bits", `${b}`, "--group-size", `${g}`], b])),
    ["mxfp4", ["--mode", "mxfp4"], 4],
    ["mxfp8", ["--mode", "mxfp8"], 8],
    ["nvfp4", ["--mode", "nvfp4"], 4],
  ];
  for (const [label, flags, bits] of cases) {
    test(label, () => {
      const out = join(tmp(), "o");
      ok(runCli("convert", "--model", src, "--out", out, "-q", ...flags));
      const ws = WeightStore.open(out);
      const w = ws.require("model.layers.0.mlp.down_proj.weight");
      const s = ws.require("model.layers.0.mlp.down_proj.scales");
      expect(w.shape).toEqual([128, (256 * bits) / 32]);
      const mode = flags.includes("--mode") ? flags[flags.indexOf("--mode") + 1]! : "affine";
      const g = mode === "affine" ? Number(flags[3]) : mode === "nvfp4" ? 16 : 32;
      expect(s.shape).toEqual([128, 256 / g]);
      const q = config(out).quantization;
      expect(q).toEqual({ group_size: g, bits, mode });
      let back: Float32Array;
      if (mode === "affine") {
        back = affineDequantize(u32(w), floats(s), floats(ws.require("model.layers.0.mlp.down_proj.biases")), g, bits, "F32");
      } else {
        expect(s.dtype).toBe("U8");
        expect(ws.has("model.layers.0.mlp.down_proj.biases")).toBe(false);
        back = fpDequantize(u32(w), s.bytes, mode as "mxfp4", "F32");
      }
      // a coarse check that the right values went to the right places: relative error shrinks with the bits
      let err = 0;
      let norm = 0;
      for (let i = 0; i < srcVals.length; i++) {
        err += (back[i]! - srcVals[i]!) ** 2;
        norm += srcVals[i]! ** 2;
      }
      expect(Math.sqrt(err / norm)).toBeLessThan(bits >= 8 ? 0.05 : bits >= 4 ? 0.2 : 0.7);
    });
  }
});

describe("recipes, groups that do not divide, dtypes, tied heads", () => {
  test("mixed_3_6 on 8 layers: v_proj/down_proj of layers 0, 3, 6, 7 and lm_head get 6 bits", () => {
    const src = join(tmp(), "hf");
    makeHfModel(src, { layers: 8, hidden: 64, inter: 64, vocab: 64 });
    const out = join(tmp(), "o");
    ok(runCli("convert", "--model", src, "--out", out, "--recipe", "mixed_3_6"));
    const q = config(out).quantization;
    expect(q.group_size).toBe(64);
    expect(q.bits).toBe(4);
    // L=8: eighth 1, 7L/8 = 7: layers 0, 7, and (i-1) % 3 == 2: 3, 6
    for (let l = 0; l < 8; l++) {
      const hi = [0, 3, 6, 7].includes(l) ? 6 : 3;
      expect(q[`model.layers.${l}.self_attn.v_proj`].bits).toBe(hi);
      expect(q[`model.layers.${l}.mlp.down_proj`].bits).toBe(hi);
      expect(q[`model.layers.${l}.self_attn.q_proj`].bits).toBe(3);
    }
    expect(q.lm_head).toEqual({ group_size: 64, bits: 6, mode: "affine" });
    const ws = WeightStore.open(out);
    expect(ws.require("model.layers.3.self_attn.v_proj.weight").shape).toEqual([32, (64 * 6) / 32]);
    expect(ws.require("model.layers.2.self_attn.v_proj.weight").shape).toEqual([32, (64 * 3) / 32]);
  });

  test("an input dim that the group does not divide stays float, with no config entry", () => {
    const src = join(tmp(), "hf");
    makeHfModel(src, { layers: 1, hidden: 64, inter: 128 });
    const out = join(tmp(), "o");
    ok(runCli("convert", "--model", src, "--out", out, "-q", "--group-size", "128"));
    const ws = WeightStore.open(out);
    expect(ws.require("model.layers.0.self_attn.q_proj.weight").dtype).toBe("BF16");
    expect(ws.require("model.layers.0.mlp.down_proj.weight").dtype).toBe("U32");
    expect(Object.keys(config(out).quantization)).toEqual(["group_size", "bits", "mode"]);
  });

  test("f32 source saved as bf16 per torch_dtype; --dtype f16 overrides", () => {
    const src = join(tmp(), "hf");
    const hf = makeHfModel(src, { layers: 1, dtype: "F32", torchDtype: "bfloat16" });
    const a = join(tmp(), "a");
    ok(runCli("convert", "--model", src, "--out", a));
    const wa = WeightStore.open(a).require("model.layers.0.self_attn.q_proj.weight");
    expect(wa.dtype).toBe("BF16");
    expect(Array.from(floats(wa))).toEqual(Array.from(roundArrayTo("BF16", hf["model.layers.0.self_attn.q_proj.weight"]!.values!.slice())));
    const b = join(tmp(), "b");
    ok(runCli("convert", "--model", src, "--out", b, "--dtype", "f16", "-q"));
    expect(WeightStore.open(b).require("model.layers.0.self_attn.q_proj.scales").dtype).toBe("F16");
    expect(WeightStore.open(b).require("model.norm.weight").dtype).toBe("F16");
  });

  test("mlx_lm.convert's spellings (--hf-path, --mlx-path, --q-bits, --q-group-size, --q-mode, -d) write the same files", () => {
    const src = join(tmp(), "hf");
    makeHfModel(src, { layers: 1 });
    const files = (dir: string) => Object.fromEntries(readdirSync(dir).sort().map((f) => [f, readFileSync(join(dir, f))]));
    const ours = join(tmp(), "ours");
    const theirs = join(tmp(), "theirs");
    ok(runCli("convert", "--model", src, "--out", ours, "-q", "--bits", "8", "--group-size", "32", "--mode", "affine"));
    ok(runCli("convert", "--hf-path", src, "--mlx-path", theirs, "-q", "--q-bits", "8", "--q-group-size", "32", "--q-mode", "affine"));
    expect(files(theirs)).toEqual(files(ours));
    const deqOurs = join(tmp(), "deq-ours");
    const deqTheirs = join(tmp(), "deq-theirs");
    ok(runCli("convert", "--model", ours, "--out", deqOurs, "--dequantize"));
    ok(runCli("convert", "--hf-path", ours, "--mlx-path", deqTheirs, "-d"));
    expect(files(deqTheirs)).toEqual(files(deqOurs));
    const clash = runCli("convert", "--model", src, "--hf-path", ours, "--out", join(tmp(), "x"));
    expect(clash.code).toBe(2);
    expect(clash.err).toContain("--hf-path and --model disagree");
    const missing = runCli("convert", "--hf-path", src);
    expect(missing.code).toBe(2);
    expect(missing.err).toContain("required option '--out <dir>' not specified");
  });

  test("tied embeddings drop lm_head", () => {
    const src = join(tmp(), "hf");
    makeHfModel(src, { layers: 1, tie: true, extra: { "lm_head.weight": { dtype: "BF16", shape: [96, 64], values: new Float32Array(96 * 64) } } });
    const out = join(tmp(), "o");
    ok(runCli("convert", "--model", src, "--out", out, "-q"));
    expect(WeightStore.open(out).has("lm_head.weight")).toBe(false);
  });
});

describe("sharding", () => {
  test("a small limit splits into model-0000i-of-0000N files with a complete index", () => {
    const src = join(tmp(), "hf");
    makeHfModel(src, { layers: 4 });
    const out = join(tmp(), "o");
    ok(runCli("convert", "--model", src, "--out", out, "--max-shard-bytes", "40000"));
    const files = readdirSync(out).filter((f) => f.endsWith(".safetensors")).sort();
    expect(files.length).toBeGreaterThan(2);
    files.forEach((f, i) => expect(f).toBe(`model-${String(i + 1).padStart(5, "0")}-of-${String(files.length).padStart(5, "0")}.safetensors`));
    const idx = JSON.parse(readFileSync(join(out, "model.safetensors.index.json"), "utf8"));
    const ws = WeightStore.open(out);
    expect(Object.keys(idx.weight_map).length).toBe(ws.names().length);
    for (const f of files) {
      const sf = SafetensorsFile.open(join(out, f));
      const bytes = [...sf.tensors.values()].reduce((a, t) => a + t.bytes.byteLength, 0);
      // a shard passes the limit only when it holds a single tensor larger than the limit
      if (sf.tensors.size > 1) expect(bytes).toBeLessThanOrEqual(40000);
      for (const name of sf.tensors.keys()) expect(idx.weight_map[name]).toBe(f);
    }
  });
});

describe("MLX sources", () => {
  const src = join(tmp(), "hf");
  const hf = makeHfModel(src, { layers: 1 });
  const q8 = join(tmp(), "q8");
  ok(runCli("convert", "--model", src, "--out", q8, "-q", "--bits", "8", "--group-size", "32"));
  const q8ws = WeightStore.open(q8);

  test("--dequantize writes scale*q + bias in the scales' dtype and drops the quantization", () => {
    const out = join(tmp(), "deq");
    ok(runCli("convert", "--model", q8, "--out", out, "--dequantize"));
    const name = "model.layers.0.mlp.up_proj";
    const want = affineDequantize(
      u32(q8ws.require(`${name}.weight`)),
      floats(q8ws.require(`${name}.scales`)),
      floats(q8ws.require(`${name}.biases`)),
      32,
      8,
      "BF16",
    );
    const got = WeightStore.open(out).require(`${name}.weight`);
    expect(got.dtype).toBe("BF16");
    expect(got.shape).toEqual([128, 64]);
    expect(Array.from(floats(got))).toEqual(Array.from(want));
    expect(config(out).quantization).toBeUndefined();
    expect(config(out).quantization_config).toBeUndefined();
  });

  test("re-quantizing equals quantizing the dequantized weights", () => {
    const out = join(tmp(), "rq");
    ok(runCli("convert", "--model", q8, "--out", out, "-q", "--bits", "4"));
    const name = "model.layers.0.self_attn.o_proj";
    const deq = affineDequantize(
      u32(q8ws.require(`${name}.weight`)),
      floats(q8ws.require(`${name}.scales`)),
      floats(q8ws.require(`${name}.biases`)),
      32,
      8,
      "BF16",
    );
    const want = affineQuantize(deq, 64, 4);
    const ws = WeightStore.open(out);
    expect(Array.from(u32(ws.require(`${name}.weight`)))).toEqual(Array.from(want.weight));
    expect(config(out).quantization).toEqual({ group_size: 64, bits: 4, mode: "affine" });
  });

  test("without -q an MLX model is copied, its quantization kept", () => {
    const out = join(tmp(), "cp");
    ok(runCli("convert", "--model", q8, "--out", out));
    const ws = WeightStore.open(out);
    for (const n of q8ws.names()) expect(Array.from(ws.require(n).bytes)).toEqual(Array.from(q8ws.require(n).bytes));
    expect(config(out).quantization).toEqual(config(q8).quantization);
  });

  test("float source values survive a plain conversion exactly", () => {
    const out = join(tmp(), "f");
    ok(runCli("convert", "--model", src, "--out", out));
    const t = WeightStore.open(out).require("model.embed_tokens.weight");
    expect(Array.from(floats(t))).toEqual(Array.from(roundArrayTo("BF16", hf["model.embed_tokens.weight"]!.values!.slice())));
  });
});

describe("refusals: one line, exit 2", () => {
  const src = join(tmp(), "hf");
  makeHfModel(src, { layers: 1 });
  const expectRefusal = (r: { code: number; err: string }, text: string) => {
    expect(r.code).toBe(2);
    expect(r.err.trim().split("\n")).toHaveLength(1);
    expect(r.err).toStartWith("rmlx: ");
    expect(r.err).toContain(text);
  };

  test("a GGUF file, or a directory holding only GGUF", () => {
    const dir = tmp();
    const f = join(dir, "model.gguf");
    writeFileSync(f, "GGUF");
    expectRefusal(runCli("convert", "--model", f, "--out", join(dir, "o")), "GGUF");
    writeFileSync(join(dir, "config.json"), "{}");
    expectRefusal(runCli("convert", "--model", dir, "--out", join(dir, "o2")), "GGUF");
  });

  test("an unknown tensor dtype", () => {
    const d = join(tmp(), "m");
    makeHfModel(d, { layers: 1 });
    const st = join(d, "model.safetensors");
    const buf = readFileSync(st);
    const text = buf.toString("latin1").replace('"dtype":"BF16","shape":[64]', '"dtype":"Q9_X","shape":[64]');
    writeFileSync(st, Buffer.from(text, "latin1"));
    expectRefusal(runCli("convert", "--model", d, "--out", join(tmp(), "o")), "unsupported dtype 'Q9_X'");
  });

  test("fp8 checkpoints", () => {
    const d = join(tmp(), "m");
    makeHfModel(d, { layers: 1, extra: { "model.layers.0.mlp.extra_proj.weight": { dtype: "F8_E4M3", shape: [4], bytes: new Uint8Array(4) } } });
    expectRefusal(runCli("convert", "--model", d, "--out", join(tmp(), "o")), "fp8");
  });

  test("bad quantization parameters", () => {
    const o = join(tmp(), "o");
    expectRefusal(runCli("convert", "--model", src, "--out", o, "-q", "--group-size", "48"), "group sizes 32, 64, 128");
    expectRefusal(runCli("convert", "--model", src, "--out", o, "-q", "--bits", "7"), "bits 2, 3, 4, 5, 6, 8");
    expectRefusal(runCli("convert", "--model", src, "--out", o, "-q", "--mode", "nvfp4", "--group-size", "32"), "nvfp4 requires group size 16");
    expectRefusal(runCli("convert", "--model", src, "--out", o, "-q", "--mode", "int4"), "unknown quantization mode");
    expectRefusal(runCli("convert", "--model", src, "--out", o, "--recipe", "mixed_3_6", "--mode", "mxfp4"), "affine");
    expectRefusal(runCli("convert", "--model", src, "--out", o, "-q", "--dequantize"), "not both");
    expectRefusal(runCli("convert", "--model", src, "--out", o, "--dtype", "int8"), "unknown dtype");
    expect(existsSync(o)).toBe(false);
    expect(existsSync(`${o}.partial`)).toBe(false);
  });

  test("checkpoints quantized by other toolchains", () => {
    const d = join(tmp(), "m");
    makeHfModel(d, { layers: 1 });
    const c = JSON.parse(readFileSync(join(d, "config.json"), "utf8"));
    c.quantization_config = { quant_method: "awq", bits: 4, group_size: 128 };
    writeFileSync(join(d, "config.json"), JSON.stringify(c));
    expectRefusal(runCli("convert", "--model", d, "--out", join(tmp(), "o")), "'awq'");
  });
});
