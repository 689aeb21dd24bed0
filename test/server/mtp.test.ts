// --draft-kind mtp through the server: a tiny random Qwen3.5 model with an MTP head served with its own head as
// drafter (a fixed 3 tokens a step), prompts sent concurrently (one continuous batch) and then one at a time:
// greedy completions equal the model's plain greedy decoding in this process, and the metrics database records
// the proposed and kept draft tokens.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import OpenAI from "openai";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cacheForTokens, generate } from "../../src/engine/generate.ts";
import { loadSession, sessionModel } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING } from "../../src/engine/types.ts";
import { makeTinyHybrid } from "../models/tiny_model.ts";
import { serve, type Served } from "./harness.ts";

const TOKENIZER = join(import.meta.dir, "..", "fixtures", "models", "hybrid", "qwen3_5_dense");
const PROMPTS = [[5, 17, 33, 2, 90, 11], [300, 12, 7, 7, 41, 129, 64, 3, 250, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29], [8, 9, 10]];
const MAX = 24;

const tmp = mkdtempSync(join(tmpdir(), "rmlx-mtp-serve-"));
const DB = join(tmp, "metrics.db");
const model = makeTinyHybrid({ trunkMix: 0.5, mtp: { kind: "copy", mix: 0.3 }, tokenizerFrom: TOKENIZER });
let srv: Served;
let openai: OpenAI;

beforeAll(async () => {
  srv = await serve(["--model", model.dir, "--kv-memory", "16MiB", "--db", DB, "--draft-kind", "mtp", "--draft-tokens", "3", "--draft-policy", "fixed"]);
  openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  rmSync(tmp, { recursive: true, force: true });
  rmSync(model.dir, { recursive: true, force: true });
});

function plain(prompt: number[]): number[] {
  const s = loadSession(model.dir);
  const cache = cacheForTokens(s.model, prompt.length + MAX + 1);
  try {
    const r = generate(sessionModel(s, cache), { prompt, maxTokens: MAX, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], stopTokenIds: [], ignoreEos: true });
    return r.tokenIds;
  } finally {
    cache.dispose();
  }
}

async function complete(prompt: number[]): Promise<string> {
  const r = await openai.completions.create({ model: "m", prompt, max_tokens: MAX, temperature: 0, ignore_eos: true } as never);
  return (r as OpenAI.Completion).choices[0]!.text;
}

describe("--draft-kind mtp through the server", () => {
  test("greedy completions, all at once and then alone, equal plain greedy decoding", async () => {
    const s = loadSession(model.dir);
    const want = PROMPTS.map((p) => s.tokenizer.decode(plain(p), { skipSpecialTokens: true }));
    expect(await Promise.all(PROMPTS.map(complete))).toEqual(want);
    for (let i = 0; i < PROMPTS.length; i++) expect(await complete(PROMPTS[i]!)).toBe(want[i]!);
  }, 120_000);

  test("the metrics database records draft and kept tokens per request", async () => {
    await srv.stop();
    const db = new Database(DB, { readonly: true });
    const rows = db.query("SELECT draft_tokens AS d, accepted_tokens AS a FROM requests").all() as { d: number; a: number }[];
    db.close();
    expect(rows.length).toBe(2 * PROMPTS.length);
    for (const r of rows) expect(r.d).toBeGreaterThan(0);
    expect(rows.reduce((n, r) => n + r.a, 0)).toBeGreaterThan(0);
  });
});
