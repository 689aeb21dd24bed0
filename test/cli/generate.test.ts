// `rmlx generate` end to end through the compiled binary (make build first): JSON output, greedy tokens against
// the transformers reference of a fixture model, the chat template by default (--raw without), the prompt from
// stdin, speculative decoding with a draft model or the model's own MTP head, and one-line errors with exit code 2.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { encodePrompt, loadSession } from "../../src/engine/session.ts";
import type { ChatMessage } from "../../src/engine/types.ts";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { makeTinyHybrid, type TinyHybridSpec } from "../models/tiny_model.ts";

const BIN = join(import.meta.dir, "../../dist/rmlx");
const FIXTURES = join(import.meta.dir, "../fixtures/models");

function run(...args: string[]) {
  return runWith(undefined, ...args);
}

function runEnv(env: Record<string, string>, ...args: string[]) {
  const p = Bun.spawnSync([BIN, ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore", env: { ...process.env, ...env } });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

function runWith(stdin: string | undefined, ...args: string[]) {
  const p = Bun.spawnSync([BIN, ...args], { stdout: "pipe", stderr: "pipe", stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin) });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

const fixtureDir = join(FIXTURES, "qwen3");
const haveFixture = existsSync(join(fixtureDir, "reference.json"));

describe("rmlx generate --draft-model", () => {
  test.skipIf(!haveFixture)("--json reports acceptance; the tokens are those without a draft", () => {
    const args = ["generate", "--model", fixtureDir, "--prompt", "hi", "--max-tokens", "12", "--json", "--raw"];
    const plain = JSON.parse(run(...args).out);
    const r = run(...args, "--draft-model", join(FIXTURES, "qwen3_q3"), "--draft-tokens", "3", "--draft-policy", "fixed");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.token_ids).toEqual(plain.token_ids);
    expect(j.draft_tokens).toBeGreaterThan(0);
    expect(j.accepted_tokens).toBeLessThanOrEqual(j.draft_tokens);
    expect(j.acceptance_rate).toBeCloseTo(j.accepted_tokens / j.draft_tokens, 9);
    expect(plain.draft_tokens).toBeUndefined();
  });

  test.skipIf(!haveFixture)("a draft of another tokenizer, a hybrid draft, a bad policy: one line, exit 2", () => {
    const other = run("generate", "--prompt", "hi", "--draft-model", fixtureDir);
    expect(other.code).toBe(2);
    expect(other.err).toMatch(/^rmlx: --draft-model .*qwen3: its tokenizer is not the target's \(403 tokens against the target's 4096\)\n$/);
    const hybrid = run("generate", "--model", fixtureDir, "--prompt", "hi", "--draft-model", join(FIXTURES, "hybrid/qwen3_5_dense"));
    expect(hybrid.code).toBe(2);
    expect(hybrid.err.trim().split("\n")).toHaveLength(1);
    expect(hybrid.err).toMatch(/linear-attention layers cannot be cut back/);
    const policy = run("generate", "--model", fixtureDir, "--prompt", "hi", "--draft-model", fixtureDir, "--draft-policy", "eager");
    expect(policy.code).toBe(2);
    expect(policy.err).toBe("rmlx: --draft-policy must be adaptive or fixed (got 'eager')\n");
  });
});

describe("rmlx generate --draft-kind mtp", () => {
  const hybridTokenizer = join(FIXTURES, "hybrid/qwen3_5_dense");
  const have = existsSync(join(hybridTokenizer, "tokenizer.json"));

  test.skipIf(!have)("the model's own MTP head drafts: the tokens are those without it, --json reports acceptance", () => {
    for (const spec of [{ mtp: { kind: "random" } }, { moe: true, mtp: { kind: "random" } }, { trunkMix: 0, mtp: { kind: "copy", mix: 0.3 } }] satisfies TinyHybridSpec[]) {
      const { dir } = makeTinyHybrid({ ...spec, tokenizerFrom: hybridTokenizer });
      try {
        const args = ["generate", "--model", dir, "--prompt", "one two three four", "--max-tokens", "24", "--json", "--raw"];
        const plain = JSON.parse(run(...args).out);
        for (const policy of ["fixed", "adaptive"]) {
          const r = runEnv({ RMLX_DRAFT_KIND: "mtp" }, ...args, "--draft-tokens", "3", "--draft-policy", policy);
          expect(r.err).toBe("");
          expect(r.code).toBe(0);
          const j = JSON.parse(r.out);
          expect(j.token_ids).toEqual(plain.token_ids);
          if (policy === "fixed") expect(j.draft_tokens).toBeGreaterThan(0);
          if (spec.mtp.kind === "copy" && policy === "fixed") expect(j.accepted_tokens).toBeGreaterThan(0);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  });

  test.skipIf(!have)("a model without an MTP head, or with --draft-model too: one line, exit 2", () => {
    const none = run("generate", "--model", hybridTokenizer, "--prompt", "hi", "--draft-kind", "mtp");
    expect(none.code).toBe(2);
    expect(none.err).toMatch(/^rmlx: --draft-kind mtp: .*qwen3_5_dense: the checkpoint has no MTP head \(no mtp\.\* weights\)\n$/);
    const both = run("generate", "--model", hybridTokenizer, "--prompt", "hi", "--draft-kind", "mtp", "--draft-model", fixtureDir);
    expect(both.code).toBe(2);
    expect(both.err).toBe("rmlx: --draft-kind mtp drafts with the model's own MTP head: leave out --draft-model\n");
  });
});

describe("rmlx generate", () => {
  test.skipIf(!haveFixture)("--json: prompt ids, token ids, text and speeds", () => {
    const r = run("generate", "--model", fixtureDir, "--prompt", "hi", "--max-tokens", "8", "--json", "--raw");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    const tok = Tokenizer.fromModelDir(fixtureDir);
    expect(j.prompt_ids).toEqual(tok.encode("hi"));
    expect(j.token_ids.length).toBeGreaterThan(0);
    expect(j.token_ids.length).toBeLessThanOrEqual(8);
    expect(typeof j.text).toBe("string");
    expect(j.prompt_tps).toBeGreaterThan(0);
    expect(j.decode_tps).toBeGreaterThanOrEqual(0);
  });

  test.skipIf(!haveFixture)("greedy tokens equal the transformers reference where its margin is clear", () => {
    const ref = JSON.parse(readFileSync(join(fixtureDir, "reference.json"), "utf8"));
    const tok = Tokenizer.fromModelDir(fixtureDir);
    for (const p of ref.prompts) {
      // The prompt travels as text; it must tokenize back to the reference ids for the comparison to hold.
      const text = tok.decode(p.ids, { skipSpecialTokens: false });
      expect(tok.encode(text, { addSpecialTokens: false })).toEqual(p.ids);
      const r = run("generate", "--model", fixtureDir, "--prompt", text, "--max-tokens", "16", "--json", "--raw");
      expect(r.code).toBe(0);
      const j = JSON.parse(r.out);
      expect(j.prompt_ids).toEqual(p.ids);
      expect(j.token_ids.length).toBeGreaterThan(0);
      // generation stops at an EOS, which the reference treats as an ordinary token
      for (let i = 0; i < j.token_ids.length; i++) {
        if (p.greedy_margins[i] > 1e-3) expect(j.token_ids[i]).toBe(p.greedy[i]);
        if (j.token_ids[i] !== p.greedy[i]) break;
      }
    }
  });

  test("streams text, then speeds on stderr", () => {
    if (!haveFixture) return;
    const r = run("generate", "--model", fixtureDir, "--prompt", "hello", "--max-tokens", "4");
    expect(r.code).toBe(0);
    expect(r.err).toMatch(/prompt: \d+ tokens, [\d.]+ tok\/s; generation: \d+ tokens, [\d.]+ tok\/s/);
  });

  test.skipIf(!haveFixture)("the chat template applies when the model has one; --raw sends plain text; --chat is still taken", () => {
    const session = loadSession(fixtureDir);
    const templated = (messages: ChatMessage[]) => encodePrompt(session, { messages }).ids;
    const ids = (...args: string[]) => JSON.parse(run("generate", "-m", fixtureDir, "--max-tokens", "1", "--json", ...args).out).prompt_ids;
    expect(ids("-p", "hi")).toEqual(templated([{ role: "user", content: "hi" }]));
    expect(ids("-p", "hi", "--chat")).toEqual(templated([{ role: "user", content: "hi" }]));
    expect(ids("-p", "hi", "--system", "be brief")).toEqual(templated([{ role: "system", content: "be brief" }, { role: "user", content: "hi" }]));
    expect(ids("-p", "hi", "--raw")).toEqual(session.tokenizer.encode("hi"));
    const both = run("generate", "-m", fixtureDir, "-p", "hi", "--raw", "--system", "x");
    expect(both.code).toBe(2);
    expect(both.err).toBe("rmlx: --system needs the chat template (leave out --raw)\n");
  });

  test.skipIf(!haveFixture)("--prompt - reads the prompt from stdin", () => {
    const r = runWith("a prompt\nof two lines\n", "generate", "-m", fixtureDir, "-p", "-", "--raw", "--max-tokens", "1", "--json");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).prompt_ids).toEqual(Tokenizer.fromModelDir(fixtureDir).encode("a prompt\nof two lines"));
  });

  test("the built-in model by default, its chat template applied: the README's answer", () => {
    const r = run("generate", "-p", "What is the package ripgrep?", "--max-tokens", "64");
    expect(r.code).toBe(0);
    expect(r.out).toBe("ripgrep is a Debian package in the utils section: recursively searches directories for a regex pattern.\n");
  });

  test("--mmap-weights and RMLX_MMAP_WEIGHTS=1 (weights left in the file's mapping) give the same answer", () => {
    const want = "ripgrep is a Debian package in the utils section: recursively searches directories for a regex pattern.\n";
    const flag = run("generate", "-p", "What is the package ripgrep?", "--max-tokens", "64", "--mmap-weights");
    expect(flag.code).toBe(0);
    expect(flag.out).toBe(want);
    const env = runEnv({ RMLX_MMAP_WEIGHTS: "1" }, "generate", "-p", "What is the package ripgrep?", "--max-tokens", "64");
    expect(env.out).toBe(want);
  });

  test("--threads and RMLX_THREADS set the native backend's threads; a bad count is one line, exit 2", () => {
    const want = "ripgrep is a Debian package in the utils section: recursively searches directories for a regex pattern.\n";
    for (const r of [
      run("generate", "-p", "What is the package ripgrep?", "--max-tokens", "64", "--threads", "1"),
      run("generate", "-p", "What is the package ripgrep?", "--max-tokens", "64", "-t", "3"),
      runEnv({ RMLX_THREADS: "1" }, "generate", "-p", "What is the package ripgrep?", "--max-tokens", "64"),
    ]) {
      expect(r.code).toBe(0);
      expect(r.out).toBe(want);
    }
    const zero = run("generate", "-p", "hi", "--threads", "0");
    expect(zero.code).toBe(2);
    expect(zero.err).toBe("rmlx: --threads must be an integer from 1 to 1024 (got '0')\n");
    const env = runEnv({ RMLX_THREADS: "many" }, "generate", "-p", "hi");
    expect(env.code).toBe(2);
    expect(env.err).toBe("rmlx: RMLX_THREADS must be an integer from 0 to 1024 (got 'many')\n");
  });

  test("-c is --ctx-size (llama.cpp's spelling)", () => {
    const long = run("generate", "-p", "What is the package ripgrep?", "--ctx-size", "16");
    const short = run("generate", "-p", "What is the package ripgrep?", "-c", "16");
    expect(long.code).toBe(2);
    expect(long.err).toBe("rmlx: the prompt has 18 tokens; the context is 16 tokens\n");
    expect(short.err).toBe(long.err);
  });

  test("--ignore-eos generates to --max-tokens past the end-of-sequence token, the greedy reply before it unchanged", () => {
    const json = (...args: string[]) => JSON.parse(run("generate", "-p", "Say hi.", "--json", ...args).out);
    const plain = json("--max-tokens", "100");
    expect(plain.finish_reason).toBe("stop");
    expect(plain.token_ids.length).toBeLessThan(100);
    const past = json("--max-tokens", "100", "--ignore-eos");
    expect(past.finish_reason).toBe("length");
    expect(past.token_ids).toHaveLength(100);
    expect(past.token_ids.slice(0, plain.token_ids.length)).toEqual(plain.token_ids);
  });

  test("llama.cpp's and mlx_lm's spellings: -n / --n-predict, --system-prompt, --ignore-chat-template, --repeat-penalty", () => {
    const json = (...args: string[]) => {
      const r = run("generate", "-p", "What is curl?", "--json", ...args);
      expect(r.err).toBe("");
      const j = JSON.parse(r.out);
      return { prompt: j.prompt_ids, tokens: j.token_ids };
    };
    expect(json("-n", "7")).toEqual(json("--max-tokens", "7"));
    expect(json("--n-predict", "7").tokens).toHaveLength(7);
    expect(json("-n", "4", "--system-prompt", "Be brief.")).toEqual(json("-n", "4", "--system", "Be brief."));
    expect(json("-n", "4", "--ignore-chat-template")).toEqual(json("-n", "4", "--raw"));
    const penalised = json("-n", "24", "--repeat-penalty", "1.5");
    expect(penalised).toEqual(json("-n", "24", "--repetition-penalty", "1.5"));
    expect(penalised).not.toEqual(json("-n", "24"));
    const clash = run("generate", "-p", "hi", "-n", "5", "--max-tokens", "6");
    expect(clash.code).toBe(2);
    expect(clash.err).toBe("rmlx: --n-predict and --max-tokens disagree (see 'rmlx generate --help')\n");
    const same = run("generate", "-p", "hi", "-n", "5", "--max-tokens", "5", "--json");
    expect(same.code).toBe(0);
  });

  test("bad input: one line on stderr, exit 2", () => {
    const missing = run("generate", "--model", "/nonexistent-model-dir", "--prompt", "x");
    expect(missing.code).toBe(2);
    expect(missing.err.trim().split("\n").length).toBe(1);
    expect(missing.err).toMatch(/^rmlx: /);
    if (!haveFixture) return;
    const badTemp = run("generate", "--model", fixtureDir, "--prompt", "x", "--temp", "hot");
    expect(badTemp.code).toBe(2);
    expect(badTemp.err).toBe("rmlx: --temp must be a number (got 'hot')\n");
    const badTopP = run("generate", "--model", fixtureDir, "--prompt", "x", "--top-p", "0");
    expect(badTopP.code).toBe(2);
    expect(badTopP.err.trim().split("\n").length).toBe(1);
  });
});

describe("rmlx generate --bitnet-activations", () => {
  const bitnet = join(FIXTURES, "bitnet/bitnet_autobitlinear");
  const haveBitnet = existsSync(join(bitnet, "reference.json"));
  const args = ["generate", "--model", bitnet, "--prompt", "hi", "--max-tokens", "8", "--json", "--raw"];

  test.skipIf(!haveBitnet)("int8 is the default; the flag and RMLX_BITNET_ACTIVATIONS choose float alike", () => {
    const plain = run(...args);
    expect(plain.err).toBe("");
    const int8 = JSON.parse(run(...args, "--bitnet-activations", "int8").out);
    expect(int8.token_ids).toEqual(JSON.parse(plain.out).token_ids);
    const flag = run(...args, "--bitnet-activations", "float");
    expect(flag.err).toBe("");
    expect(flag.code).toBe(0);
    const p = Bun.spawnSync([BIN, ...args], { stdout: "pipe", stderr: "pipe", env: { ...process.env, RMLX_BITNET_ACTIVATIONS: "float" } });
    expect(JSON.parse(p.stdout.toString()).token_ids).toEqual(JSON.parse(flag.out).token_ids);
  });

  test("another value: one line, exit 2", () => {
    const r = run(...args, "--bitnet-activations", "fp8");
    expect(r.code).toBe(2);
    expect(r.err).toBe("rmlx: --bitnet-activations must be int8 or float (got 'fp8')\n");
  });
});
