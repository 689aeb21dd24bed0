// The built-in default model: present in the repository, embedded in dist/rmlx, and answering exactly as
// transformers does from the same dequantized weights (test/fixtures/default_model_reference.json).
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { BUILTIN_MODEL_NAME, builtinModelDir } from "../../src/builtin/index.ts";
import reference from "../fixtures/default_model_reference.json" with { type: "json" };
import { tempDir } from "../io/helpers.ts";

const REPO = join(import.meta.dir, "..", "..");
const BUILT = join(REPO, "dist", "rmlx");
const FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];
// Below this top-2 logit gap a float32 rounding difference may pick the other token; from there on the two
// continuations may legitimately part.
const CLEAR_MARGIN = 1e-3;

/** Reference tokens that must match: up to the first step whose top-2 margin is not clear. */
function comparable(tokens: number[], margins: number[]): number[] {
  const n = margins.findIndex((m) => m < CLEAR_MARGIN);
  return tokens.slice(0, n < 0 ? tokens.length : n);
}

describe("built-in model in the repository", () => {
  test("builtinModelDir() is models/default with every file", () => {
    const dir = builtinModelDir();
    expect(dir).toBe(join(REPO, "models", "default"));
    expect(readdirSync(dir).sort()).toEqual(FILES);
    // Served under a name no client takes for an alias of its own (Claude Code's "default").
    expect(BUILTIN_MODEL_NAME).toBe("rmlx-default");
  });

  test("a small affine-quantized Qwen3 with a ChatML template, as the reference was computed", async () => {
    const dir = builtinModelDir();
    const config = await Bun.file(join(dir, "config.json")).json();
    expect(config.model_type).toBe("qwen3");
    expect(config.quantization).toEqual({ group_size: reference.quantization.group_size, bits: reference.quantization.bits, mode: "affine" });
    expect(config.eos_token_id).toBe(reference.eos_token_id);
    const tc = await Bun.file(join(dir, "tokenizer_config.json")).json();
    expect(tc.eos_token).toBe("<|im_end|>");
    expect(tc.chat_template).toContain("<|im_start|>assistant\\n");
    const bytes = FILES.reduce((s, f) => s + statSync(join(dir, f)).size, 0);
    expect(bytes).toBeLessThan(6.5 * 1024 * 1024);
  });
});

describe("dist/rmlx alone, fresh HOME, no --model", () => {
  const work = tempDir("rmlx-builtin-bin-");
  const home = tempDir("rmlx-builtin-home-");
  const cache = join(home, "cache");
  const bin = join(work, "rmlx");
  copyFileSync(BUILT, bin);
  // Any attempt to reach the network through a proxy-aware client would fail against a closed port.
  const env = {
    PATH: "/usr/bin:/bin",
    HOME: home,
    XDG_CACHE_HOME: cache,
    HTTP_PROXY: "http://127.0.0.1:9",
    HTTPS_PROXY: "http://127.0.0.1:9",
  };

  function generate(question: string) {
    const p = Bun.spawnSync([bin, "generate", "--chat", "--json", "--max-tokens", "64", "--prompt", question], {
      cwd: work,
      env,
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(p.stderr.toString()).toBe("");
    expect(p.exitCode).toBe(0);
    return JSON.parse(p.stdout.toString()) as { prompt_ids: number[]; token_ids: number[]; text: string; finish_reason: string };
  }

  for (const ref of reference.answers) {
    test(`greedy answer equals transformers: ${ref.question}`, () => {
      const out = generate(ref.question);
      expect(out.prompt_ids).toEqual(ref.prompt_ids);
      // rmlx reports the tokens before the end-of-turn token and stops there; transformers' list includes it.
      const ours = [...out.token_ids, ...(out.finish_reason === "stop" ? [reference.eos_token_id] : [])];
      const want = comparable(ref.tokens, ref.margins);
      expect(ours.slice(0, want.length)).toEqual(want);
      if (want.length === ref.tokens.length) expect(out.text).toBe(ref.text);
    }, 60_000);
  }

  test("the model was extracted into the cache, nothing beside the binary", () => {
    const models = join(cache, "rmlx", "models");
    const hashes = readdirSync(models).filter((d) => /^[0-9a-f]{16}$/.test(d));
    expect(hashes.length).toBe(1);
    expect(readdirSync(join(models, hashes[0]!, "default")).sort()).toEqual(FILES);
    expect(readdirSync(work)).toEqual(["rmlx"]);
  });

  describe("serve with no --model", () => {
    let server: ReturnType<typeof Bun.spawn> | undefined;
    afterAll(async () => {
      server?.kill("SIGTERM");
      await server?.exited;
    });

    test("answers /v1/chat/completions with the built-in model", async () => {
      server = Bun.spawn([bin, "serve", "--port", "0", "--no-metrics"], { cwd: work, env, stdout: "pipe", stderr: "pipe" });
      const reader = (server.stderr as ReadableStream<Uint8Array>).getReader();
      let log = "";
      let url: string | undefined;
      while (!url) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`serve exited: ${log}`);
        log += new TextDecoder().decode(value);
        url = /serving .* on (http:\/\/\S+)/.exec(log)?.[1];
      }
      reader.releaseLock();
      const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
      expect(models.data.map((m) => m.id)).toEqual([BUILTIN_MODEL_NAME]);
      const ref = reference.answers.find((a) => a.question === "What does the command ls do?")!;
      // The old name, "default", still reaches the only model served.
      for (const model of [BUILTIN_MODEL_NAME, "default"]) {
        const res = await fetch(`${url}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model, messages: [{ role: "user", content: ref.question }], temperature: 0, max_tokens: 64 }),
        });
        expect(res.status).toBe(200);
        const body = (await res.json()) as { model: string; choices: { message: { content: string }; finish_reason: string }[] };
        expect(body.model).toBe(BUILTIN_MODEL_NAME);
        expect(body.choices[0].message.content).toBe(ref.text);
        expect(body.choices[0].finish_reason).toBe("stop");
      }
    }, 60_000);
  });
});
