// `rmlx generate` end to end through the compiled binary (make build first): JSON output, greedy tokens against
// the transformers reference of a fixture model, and one-line errors with exit code 2.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer } from "../../src/text/tokenizer.ts";

const BIN = join(import.meta.dir, "../../dist/rmlx");
const FIXTURES = join(import.meta.dir, "../fixtures/models");

function run(...args: string[]) {
  const p = Bun.spawnSync([BIN, ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

const fixtureDir = join(FIXTURES, "qwen3");
const haveFixture = existsSync(join(fixtureDir, "reference.json"));

describe("rmlx generate", () => {
  test.skipIf(!haveFixture)("--json: prompt ids, token ids, text and speeds", () => {
    const r = run("generate", "--model", fixtureDir, "--prompt", "hi", "--max-tokens", "8", "--json");
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
      const r = run("generate", "--model", fixtureDir, "--prompt", text, "--max-tokens", "16", "--json");
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
