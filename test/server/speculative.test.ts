// Speculative decoding through the server: every reference fixture served at once with a 3-bit random model of the
// same tokenizer as draft, proposing a fixed 3 tokens a step, all prompts sent concurrently (one continuous batch
// per model) and then one at a time: greedy continuations are transformers' (as far as its top-2 margins are
// clear), and the metrics database records the proposed and kept draft tokens of each request.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import OpenAI from "openai";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { serve, type Served } from "./harness.ts";

const MODELS = join(import.meta.dir, "..", "fixtures", "models");
const fixtures: { name: string }[] = JSON.parse(readFileSync(join(MODELS, "INDEX.json"), "utf8")).fixtures;
const prompts = (name: string): { ids: number[]; greedy: number[]; greedy_margins: number[] }[] =>
  JSON.parse(readFileSync(join(MODELS, name, "reference.json"), "utf8")).prompts;

const tmp = mkdtempSync(join(tmpdir(), "rmlx-spec-serve-"));
const DB = join(tmp, "metrics.db");
let srv: Served;
let openai: OpenAI;

beforeAll(async () => {
  const draft = ["--draft-model", join(MODELS, "qwen3_q3"), "--draft-tokens", "3", "--draft-policy", "fixed"];
  srv = await serve(["--model", MODELS, "--kv-memory", "64MiB", "--db", DB, ...draft]);
  openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

async function complete(name: string, p: { ids: number[]; greedy: number[]; greedy_margins: number[] }) {
  let n = 0;
  while (n < p.greedy.length && p.greedy_margins[n]! > 1e-3) n++;
  const r = await openai.completions.create({ model: name, prompt: p.ids, max_tokens: n, temperature: 0, ignore_eos: true } as never);
  const tok = Tokenizer.fromModelDir(join(MODELS, name));
  return { got: (r as OpenAI.Completion).choices[0]!.text, want: tok.decode(p.greedy.slice(0, n), { skipSpecialTokens: true }) };
}

describe("speculative decoding through the server", () => {
  test("every fixture, all prompts at once and then alone, matches transformers' greedy tokens", async () => {
    const jobs = fixtures.flatMap((f) => prompts(f.name).map(async (p, i) => ({ key: `${f.name}/${i}`, ...(await complete(f.name, p)) })));
    const together = await Promise.all(jobs);
    expect(together.map((r) => [r.key, r.got])).toEqual(together.map((r) => [r.key, r.want]));
    for (const f of fixtures.slice(0, 4)) {
      for (const p of prompts(f.name)) {
        const r = await complete(f.name, p);
        expect(r.got).toBe(r.want);
      }
    }
  }, 180_000);

  test("the metrics database records draft and kept tokens per request", async () => {
    await srv.stop();
    const db = new Database(DB, { readonly: true });
    const rows = db.query("SELECT generated_tokens AS g, draft_tokens AS d, accepted_tokens AS a FROM requests").all() as { g: number; d: number; a: number }[];
    db.close();
    expect(rows.length).toBeGreaterThan(fixtures.length);
    expect(rows.every((r) => r.d >= 0 && r.a <= r.d)).toBe(true);
    expect(rows.some((r) => r.d > 0 && r.a > 0)).toBe(true);
  });
});
