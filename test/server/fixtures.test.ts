// Every reference model of test/fixtures/models served at once (the folder given as one --model), all prompts
// sent concurrently: each model's greedy continuation must be the one transformers computed.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { serve, type Served } from "./harness.ts";

const MODELS = join(import.meta.dir, "..", "fixtures", "models");
const INDEX = join(MODELS, "INDEX.json");

interface Prompt {
  kind: "chat" | "plain";
  ids: number[];
  greedy: number[];
  greedy_margins: number[];
  messages?: { role: string; content: string }[];
}

const fixtures: { name: string }[] = existsSync(INDEX) ? JSON.parse(readFileSync(INDEX, "utf8")).fixtures : [];
const prompts = (name: string): Prompt[] => JSON.parse(readFileSync(join(MODELS, name, "reference.json"), "utf8")).prompts;

let srv: Served;
let openai: OpenAI;

beforeAll(async () => {
  if (fixtures.length === 0) return;
  srv = await serve(["--model", MODELS, "--kv-memory", "64MiB"]);
  openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await srv?.stop();
});

describe.skipIf(fixtures.length === 0)("reference fixtures through the server", () => {
  test("every family and quantization, all prompts at once, match transformers' greedy tokens", async () => {
    const jobs = fixtures.flatMap((f) =>
      prompts(f.name).map(async (p, i) => {
        // Compare only as far as the reference's top-2 margins are clear.
        let n = 0;
        while (n < p.greedy.length && p.greedy_margins[n]! > 1e-3) n++;
        const r = await openai.completions.create({ model: f.name, prompt: p.ids, max_tokens: n, temperature: 0, ignore_eos: true } as never);
        const tok = Tokenizer.fromModelDir(join(MODELS, f.name));
        return { key: `${f.name}/${i}`, got: (r as OpenAI.Completion).choices[0]!.text, want: tok.decode(p.greedy.slice(0, n), { skipSpecialTokens: true }) };
      }),
    );
    const results = await Promise.all(jobs);
    expect(results.map((r) => [r.key, r.got])).toEqual(results.map((r) => [r.key, r.want]));
  }, 120_000);

  test("chat prompts rendered by the server are the token ids transformers' template gave", async () => {
    for (const f of fixtures) {
      for (const p of prompts(f.name).filter((q) => q.kind === "chat")) {
        const r = await fetch(`${srv.url}/tokenize`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: f.name, messages: p.messages }),
        });
        expect(((await r.json()) as { tokens: number[] }).tokens).toEqual(p.ids);
      }
    }
  });
});
