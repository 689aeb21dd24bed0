import { describe, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { llamaConfig, llamaParamCount, llamaTensors, rawSafetensors, tempDir, writeModelDir } from "../io/helpers.ts";

const MAIN = join(import.meta.dir, "..", "..", "src", "cli", "main.ts");

function info(...args: string[]) {
  const p = Bun.spawnSync([process.execPath, MAIN, "info", ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

/** Bad input: exactly one line on stderr, naming the file and the problem, and exit code 2. */
function expectBadInput(r: ReturnType<typeof info>, ...parts: string[]) {
  expect(r.code).toBe(2);
  expect(r.out).toBe("");
  const lines = r.err.split("\n").filter((l) => l !== "");
  expect(lines.length).toBe(1);
  expect(lines[0]!.startsWith("rmlx: ")).toBe(true);
  for (const p of parts) expect(lines[0]).toContain(p);
  expect(r.err).not.toContain("    at ");
}

describe("rmlx info", () => {
  test("--json on a quantized model", () => {
    const dir = writeModelDir(
      tempDir(),
      llamaConfig({ quantization: { group_size: 64, bits: 4, "model.embed_tokens": { group_size: 64, bits: 8 } } }),
      llamaTensors({ quant: (p) => ({ bits: p === "model.embed_tokens" ? 8 : 4, group: 64 }) }),
      { extra: { "tokenizer.json": "{}", "tokenizer_config.json": JSON.stringify({ chat_template: "x" }) } },
    );
    const r = info("--model", dir, "--json");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j).toMatchObject({
      model_type: "llama",
      architecture: "LlamaForCausalLM",
      parameters: llamaParamCount(),
      layers: 2,
      hidden_size: 64,
      heads: 4,
      kv_heads: 2,
      head_dim: 16,
      vocab_size: 256,
      context_length: 2048,
      quantization: "attention/mlp/lm_head: affine 4-bit g64; embed_tokens: affine 8-bit g64; norms: bf16",
      tokenizer: true,
      chat_template: true,
      runnable: true,
    });
    expect(j.size_bytes).toBeGreaterThan(0);
    expect(j.backend).toMatch(/^native \(cpu \w+, x16 decode products\)$/);
  });

  test("the model directory as an argument, as -m takes it; both naming two directories is refused", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors());
    const r = info(dir, "--json");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual(JSON.parse(info("-m", dir, "--json").out));
    expect(info(dir, "-m", dir).code).toBe(0);
    expectBadInput(info(dir, "-m", tempDir()), "two model directories");
  });

  test("--gemv f32 shows in the backend line", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors());
    const j = JSON.parse(info("-m", dir, "--json", "--gemv", "f32").out);
    expect(j.backend).toMatch(/, f32 decode products\)$/);
  });

  test("human output: aligned key: value lines", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors());
    const r = info("-m", dir);
    expect(r.code).toBe(0);
    const lines = r.out.trimEnd().split("\n");
    const col = lines[0]!.search(/: +\S/) + lines[0]!.match(/: +/)![0].length;
    for (const l of lines) {
      expect(l).toMatch(/^[a-z_A-Z0-9 ():@]+: +\S/);
      expect(l.slice(0, col).endsWith(" ")).toBe(true);
      expect(l[col]).not.toBe(" ");
    }
    expect(r.out).toContain("model_type:");
    expect(r.out).toMatch(/parameters: +\d/);
    expect(r.out).toMatch(/runnable: +yes, on native \(cpu/);
  });

  test("gemma3 nested under text_config, and a transformers-5 rope_parameters config", () => {
    const gemma = writeModelDir(
      tempDir(),
      {
        model_type: "gemma3",
        architectures: ["Gemma3ForConditionalGeneration"],
        text_config: { model_type: "gemma3_text", hidden_size: 64, intermediate_size: 128, num_hidden_layers: 12, sliding_window: 256 },
      },
      { "language_model.model.norm.weight": { dtype: "BF16", shape: [64] } },
    );
    const g = JSON.parse(info("--model", gemma, "--json").out);
    expect(g).toMatchObject({
      model_type: "gemma3",
      layers: 12,
      layer_types: { sliding_attention: 10, full_attention: 2 },
      heads: 8,
      kv_heads: 4,
      head_dim: 256,
      sliding_window: 256,
      rope: { type: "default", base: 1000000 },
      local_rope: { type: "default", base: 10000 },
      parameters: 64,
    });
    const tf5 = writeModelDir(
      tempDir(),
      llamaConfig({
        rope_theta: undefined,
        rope_parameters: {
          rope_type: "llama3",
          rope_theta: 500000,
          factor: 32,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 8192,
        },
      }),
      llamaTensors(),
    );
    const r = info("--model", tf5);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^rope: +llama3 x32, base 500000$/m);
  });

  test("a Qwen3.5 hybrid: KV for the full-attention layers only, recurrent state, MTP weights", () => {
    const dir = join(import.meta.dir, "..", "fixtures", "models", "hybrid", "qwen3_5_vl");
    const r = info("--model", dir);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^layers: +4 \(2 linear, 2 full\)$/m);
    // f32 is the engine's default KV codec; f16 is half of it.
    expect(r.out).toMatch(/^memory: KV cache @ 4k: +4\.00 MiB \(f32, one sequence, 2 full-attention layers\); f16 2\.00 MiB, /m);
    expect(r.out).toMatch(/^memory: recurrent state: +11\.00 KiB per sequence \(f32, 2 linear-attention layers, any context length\)$/m);
    expect(r.out).toMatch(/^mtp head: +1 layer, 24\.83K \(24,832\) parameters, 48\.50 KiB \(in the totals above; drafts with --draft-kind mtp\)$/m);
    const j = JSON.parse(info("--model", dir, "--json").out);
    expect(j.recurrent_state_bytes).toBe(11264);
    expect(j.mtp).toEqual({ layers: 1, parameters: 24832, bytes: 49664 });
  });

  test("an embedding model: its kind, pooling, dimension and Dense layers; no KV cache lines", () => {
    const emb = join(import.meta.dir, "..", "fixtures", "embeddings");
    const g = info("--model", join(emb, "gemma3_dense"));
    expect(g.code).toBe(0);
    expect(g.out).toMatch(/^kind: +embedding model, mean pooling, dimension 32 \(Dense 32->128->32\), normalized; prompts: Clustering, document, query$/m);
    expect(g.out).toMatch(/^runnable: +yes/m);
    expect(g.out).not.toContain("KV cache");
    const r = JSON.parse(info("--model", join(emb, "roberta_cls"), "--json").out);
    expect(r.embedding).toMatchObject({ pooling: "cls", dimension: 32, normalize: false, dense: [] });
    expect(r.runnable).toBe(true);
    const b = info("--model", join(emb, "bert_mean"));
    expect(b.out).toMatch(/^kind: +embedding model, mean pooling, dimension 32, normalized/m);
    expect(b.out).not.toMatch(/^rope:/m);
  });

  test("a checkpoint this build cannot run is described but not runnable", () => {
    const dir = writeModelDir(tempDir(), { ...llamaConfig(), quantization_config: { quant_method: "awq" } }, llamaTensors());
    const j = JSON.parse(info("--model", dir, "--json").out);
    expect(j.runnable).toBe(false);
    expect(j.reason).toContain("awq");
  });

  describe("bad input", () => {
    test("missing directory", () => {
      const d = join(tempDir(), "nope");
      expectBadInput(info("--model", d), `${d}: no such directory`);
    });

    test("no config.json", () => {
      const d = tempDir();
      expectBadInput(info("--model", d), join(d, "config.json"), "file not found");
    });

    test("invalid JSON", () => {
      const d = writeModelDir(tempDir(), "{ hidden_size: 1", llamaTensors());
      expectBadInput(info("--model", d), join(d, "config.json"), "invalid JSON");
    });

    test("unknown architecture", () => {
      const d = writeModelDir(tempDir(), llamaConfig({ model_type: "rwkv" }), llamaTensors());
      expectBadInput(info("--model", d), `${join(d, "config.json")}: unknown architecture 'rwkv'`);
    });

    function withWeights(bytes: Uint8Array): string {
      const d = writeModelDir(tempDir(), llamaConfig(), {});
      writeFileSync(join(d, "model.safetensors"), bytes);
      return d;
    }

    test("header length beyond the file", () => {
      const d = withWeights(rawSafetensors({}, 4, 4096n));
      expectBadInput(info("--model", d), join(d, "model.safetensors"), "header length 4096 runs beyond the end of the file");
    });

    test("overlapping offsets", () => {
      const d = withWeights(
        rawSafetensors(
          { a: { dtype: "F16", shape: [4], data_offsets: [0, 8] }, b: { dtype: "F16", shape: [2], data_offsets: [6, 10] } },
          10,
        ),
      );
      expectBadInput(info("--model", d), join(d, "model.safetensors"), "overlap");
    });

    test("out-of-range offsets", () => {
      const d = withWeights(rawSafetensors({ a: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }, 8));
      expectBadInput(info("--model", d), join(d, "model.safetensors"), "beyond the data section");
    });

    test("dtype/shape not matching the byte range", () => {
      const d = withWeights(rawSafetensors({ a: { dtype: "BF16", shape: [3, 3], data_offsets: [0, 16] } }, 16));
      expectBadInput(info("--model", d), join(d, "model.safetensors"), "needs 18 bytes but data_offsets span 16");
    });

    test("a shard named in the index but missing", () => {
      const d = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), { shards: 2 });
      rmSync(join(d, "model-00001-of-00002.safetensors"));
      expectBadInput(info("--model", d), "model.safetensors.index.json", "shard 'model-00001-of-00002.safetensors'", "missing");
    });

    test("an unknown flag: one line naming info's --help", () => {
      const r = info("--modle", "x");
      expect(r.code).toBe(2);
      expect(r.err).toBe("rmlx: unknown option '--modle'; did you mean --model? (see 'rmlx info --help')\n");
    });
  });

  test("no --model: the built-in model", () => {
    const j = JSON.parse(info("--json").out);
    expect(j).toMatchObject({ model_type: "qwen3", parameters: 8_917_760, chat_template: true, runnable: true });
  });

  test("the KV estimate is in the KV type the engine uses: f32 by default, --kv-dtype or RMLX_KV_DTYPE otherwise", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors());
    // f32 K and V: 2 layers * 2 kv heads * 16 dims * 2 (K, V) * 4 bytes = 512 bytes per token.
    const f32 = JSON.parse(info("-m", dir, "--json").out);
    expect(f32.kv_cache_dtype).toBe("f32");
    expect(f32.kv_cache_bytes).toEqual({ "4096": 512 * 4096, "32768": 512 * 32768 });
    expect(JSON.parse(info("-m", dir, "--json", "--kv-dtype", "bf16").out).kv_cache_bytes["4096"]).toBe(256 * 4096);
    const p = Bun.spawnSync([process.execPath, MAIN, "info", "-m", dir], { stdout: "pipe", env: { ...process.env, RMLX_KV_DTYPE: "f16" } });
    expect(p.stdout.toString()).toMatch(/memory: KV cache @ 4k: +1\.00 MiB \(f16, one sequence\)/);
    expect(info("-m", dir).out).toMatch(/memory: KV cache @ 4k: +2\.00 MiB \(f32, one sequence\)/);
  });

  test("where libmlxc was looked for is shown with -v only", () => {
    const dir = writeModelDir(tempDir(), llamaConfig(), llamaTensors());
    const env = { ...process.env, RMLX_MLX_C_LIB: "/nonexistent/libmlxc.so" };
    const run = (...a: string[]) => Bun.spawnSync([process.execPath, MAIN, "info", "-m", dir, ...a], { stdout: "pipe", env }).stdout.toString();
    expect(run()).toMatch(/runnable: +yes, on native .*\(auto: libmlxc not found \(-v lists where\)\)\n/);
    expect(run()).not.toContain("/nonexistent");
    expect(run("-v")).toContain("looked in /nonexistent/libmlxc.so");
  });
});
