// Prefix caching of a hybrid (Gated DeltaNet) model through the server: the tiny random qwen3_5_text fixture served
// twice, with the prefix cache and without it. Repeats, partial repeats and a repeat while another request streams
// report cached prompt tokens and give the greedy text of the server without a prefix cache.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { join } from "node:path";
import { serve, type Served } from "./harness.ts";

const FIXTURE = join(import.meta.dir, "..", "fixtures", "models", "hybrid", "qwen3_5_dense");

let cached: Served;
let plain: Served;

beforeAll(async () => {
  [cached, plain] = await Promise.all([
    serve(["--model", FIXTURE, "--kv-memory", "64MiB", "--prefill-chunk", "64"]),
    serve(["--model", FIXTURE, "--kv-memory", "64MiB", "--no-prefix-cache"]),
  ]);
}, 90_000);

afterAll(async () => {
  await Promise.all([cached?.stop(), plain?.stop()]);
});

const client = (s: Served) => new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "x", maxRetries: 0 });

async function complete(s: Served, prompt: string, maxTokens = 12) {
  const r = await client(s).completions.create({ model: "qwen3_5_dense", prompt, max_tokens: maxTokens, temperature: 0 });
  return { text: r.choices[0]!.text, cached: (r.usage as { prompt_tokens_details?: { cached_tokens?: number } }).prompt_tokens_details?.cached_tokens ?? 0 };
}

const BASE = "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill. ".repeat(2);

describe("hybrid prefix caching through the server", () => {
  test("a repeat and partial repeats reuse the prefix and give the uncached server's text", async () => {
    const want = await complete(plain, BASE);
    expect(await complete(cached, BASE)).toEqual({ text: want.text, cached: 0 });
    const again = await complete(cached, BASE);
    expect(again.text).toBe(want.text);
    expect(again.cached).toBeGreaterThan(BASE.length / 2);
    const partial = BASE.slice(0, 100) + "and then something else entirely happens.";
    const p = await complete(cached, partial);
    expect(p.text).toBe((await complete(plain, partial)).text);
    expect(p.cached).toBeGreaterThan(0);
  }, 60_000);

  test("a repeat while another request streams", async () => {
    const other = "A different request that keeps decoding for a while, unrelated to the others. ";
    const stream = client(cached).completions.create({ model: "qwen3_5_dense", prompt: other, max_tokens: 80, temperature: 0, stream: true });
    const streamed = (async () => {
      let text = "";
      for await (const c of await stream) text += c.choices[0]?.text ?? "";
      return text;
    })();
    const again = await complete(cached, BASE);
    expect(again.text).toBe((await complete(plain, BASE)).text);
    expect(again.cached).toBeGreaterThan(0);
    expect(await streamed).toBe((await complete(plain, other, 80)).text);
  }, 60_000);
});
