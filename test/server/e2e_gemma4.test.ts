// Gemma 4 through the server: a tiny random gemma4_text with Gemma 3's real tokenizer plus Gemma 4's markers as
// special tokens, and a chat template in Gemma 4's format. Forced tool calls come out in Gemma 4's syntax and are
// parsed back; image and audio parts get a 400 that says this build serves text.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { makeTinyModel } from "../models/tiny_model.ts";
import { GEMMA4_TEST_TEMPLATE } from "../text/gemma4_template.ts";
import { serve, waitFor, type Served } from "./harness.ts";

const TOKENIZER_DIR = join(import.meta.dir, "..", "..", "node_modules", "@lenml", "tokenizer-gemma3", "models");
const MARKERS = ["<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", '<|"|>', "<|tool_response>", "<tool_response|>"];

let dir: string;
let name: string;
let srv: Served;

beforeAll(async () => {
  // Gemma 3's vocabulary ends at 262144; Gemma 4's markers follow it.
  dir = makeTinyModel({ modelType: "gemma4_text", vocab: 262208, extra: { max_position_embeddings: 2048, eos_token_id: [1] } }, 4);
  const tok = JSON.parse(readFileSync(join(TOKENIZER_DIR, "tokenizer.json"), "utf8")) as { added_tokens: { id: number }[] };
  let id = Math.max(...tok.added_tokens.map((t) => t.id)) + 1;
  for (const content of MARKERS) {
    tok.added_tokens.push({ id: id++, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true } as never);
  }
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tok));
  const cfg = JSON.parse(readFileSync(join(TOKENIZER_DIR, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
  cfg.chat_template = GEMMA4_TEST_TEMPLATE;
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(cfg));
  name = basename(dir);
  srv = await serve(["--model", dir, "--kv-memory", "128MiB", "--prefill-chunk", "512"]);
  expect(await waitFor(async () => (await fetch(`${srv.url}/health`)).status === 200, 30_000)).toBe(true);
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const TOOLS = [
  {
    type: "function" as const,
    function: { name: "get_weather", parameters: { type: "object", properties: { city: { enum: ["Paris", "Rome"] } }, required: ["city"] } },
  },
  { type: "function" as const, function: { name: "get_time", parameters: { type: "object", properties: { utc: { type: "boolean" } } } } },
];

describe("Gemma 4 through the server", () => {
  test("tool_choice required and a named tool give one call in Gemma 4's syntax, parsed; tool results render back", async () => {
    const openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
    for (const tool_choice of ["required", { type: "function", function: { name: "get_weather" } }] as const) {
      const r = await openai.chat.completions.create({
        model: name,
        messages: [{ role: "user", content: "Weather in Rome?" }],
        tools: TOOLS,
        tool_choice,
        max_tokens: 40,
        temperature: 0,
      });
      const choice = r.choices[0]!;
      expect(choice.finish_reason).toBe("tool_calls");
      expect(choice.message.content ?? "").toBe("");
      const calls = choice.message.tool_calls as { id: string; function: { name: string; arguments: string } }[];
      expect(calls.length).toBe(1);
      if (typeof tool_choice === "object") expect(calls[0]!.function.name).toBe("get_weather");
      const args = JSON.parse(calls[0]!.function.arguments);
      if (calls[0]!.function.name === "get_weather") expect(args).toEqual({ city: expect.stringMatching(/^(Paris|Rome)$/) });
      // The call and a result go back in; the model continues in the turn that called.
      const next = await openai.chat.completions.create({
        model: name,
        messages: [
          { role: "user", content: "Weather in Rome?" },
          { role: "assistant", content: null, tool_calls: [{ id: calls[0]!.id, type: "function", function: calls[0]!.function }] },
          { role: "tool", tool_call_id: calls[0]!.id, content: '{"temperature": 21}' },
        ],
        tools: TOOLS,
        max_tokens: 3,
        temperature: 0,
      });
      expect(next.usage!.prompt_tokens).toBeGreaterThan(r.usage!.prompt_tokens);
    }
    const a = new Anthropic({ baseURL: srv.url, apiKey: "x", maxRetries: 0 });
    const m = await a.messages.create({
      model: name,
      max_tokens: 40,
      tool_choice: { type: "tool", name: "get_weather" },
      tools: [{ name: "get_weather", input_schema: { type: "object", properties: { city: { enum: ["Paris", "Rome"] } }, required: ["city"] } }],
      messages: [{ role: "user", content: "Weather?" }],
    });
    expect(m.stop_reason).toBe("tool_use");
    expect(m.content.find((b) => b.type === "tool_use")).toMatchObject({ name: "get_weather", input: { city: expect.stringMatching(/^(Paris|Rome)$/) } });
  }, 60_000);

  test("the prompt of a tool result carries it in Gemma 4's form", async () => {
    const r = await fetch(`${srv.url}/tokenize`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: name,
        messages: [
          { role: "user", content: "Rome?" },
          { role: "assistant", content: "", tool_calls: [{ id: "c1", type: "function", function: { name: "get_weather", arguments: '{"city":"Rome"}' } }] },
          { role: "tool", tool_call_id: "c1", content: '{"temperature": 21}' },
        ],
        tools: TOOLS,
      }),
    });
    const { tokens } = (await r.json()) as { tokens: number[] };
    const d = await fetch(`${srv.url}/detokenize`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: name, tokens }) });
    const text = ((await d.json()) as { prompt: string }).prompt;
    expect(text).toContain('<|tool_call>call:get_weather{city:<|"|>Rome<|"|>}<tool_call|><|tool_response>response:get_weather{temperature:21}<tool_response|>');
    expect(text.endsWith("<tool_response|><|channel>thought\n<channel|>")).toBe(true);
  });

  test("image and audio parts: a 400 that says this build serves text", async () => {
    const openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
    for (const part of [
      { type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=" } },
      { type: "input_audio", input_audio: { data: "UklGRg==", format: "wav" } },
    ]) {
      let err: unknown;
      try {
        await openai.chat.completions.create({ model: name, messages: [{ role: "user", content: [{ type: "text", text: "What is this?" }, part] }] as never, max_tokens: 4 });
      } catch (e) {
        err = e;
      }
      expect((err as { status: number }).status).toBe(400);
      expect(String((err as Error).message)).toContain("serves text only");
    }
    const a = new Anthropic({ baseURL: srv.url, apiKey: "x", maxRetries: 0 });
    let err: unknown;
    try {
      await a.messages.create({
        model: name,
        max_tokens: 4,
        messages: [{ role: "user", content: [{ type: "image", source: { type: "base64", media_type: "image/png", data: "iVBORw0KGgo=" } }] }],
      });
    } catch (e) {
      err = e;
    }
    expect((err as { status: number }).status).toBe(400);
    expect(String((err as Error).message)).toContain("serves text only");
    // the server is still up
    expect((await fetch(`${srv.url}/health`)).status).toBe(200);
  });
});
