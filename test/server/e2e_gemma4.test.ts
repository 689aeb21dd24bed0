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
import { anthropicForcedCall, FORCED_CHOICES, forcedCall, WEATHER_TOOL } from "./forced_calls.ts";
import { serveModel, type Served } from "./harness.ts";

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
  srv = await serveModel(dir, ["--kv-memory", "128MiB", "--prefill-chunk", "512"]);
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const TOOLS = [
  WEATHER_TOOL,
  { type: "function" as const, function: { name: "get_time", parameters: { type: "object", properties: { utc: { type: "boolean" } } } } },
];

describe("Gemma 4 through the server", () => {
  test("tool_choice required and a named tool give one call in Gemma 4's syntax, parsed; tool results render back", async () => {
    const openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
    for (const tool_choice of FORCED_CHOICES) {
      const { completion: r, call, args } = await forcedCall(openai, name, TOOLS, tool_choice, 40);
      expect(r.choices[0]!.message.content ?? "").toBe("");
      if (call.function.name === "get_weather") expect(args).toEqual({ city: expect.stringMatching(/^(Paris|Rome)$/) });
      // The call and a result go back in; the model continues in the turn that called.
      const next = await openai.chat.completions.create({
        model: name,
        messages: [
          { role: "user", content: "Weather in Rome?" },
          { role: "assistant", content: null, tool_calls: [{ id: call.id, type: "function", function: call.function }] },
          { role: "tool", tool_call_id: call.id, content: '{"temperature": 21}' },
        ],
        tools: TOOLS,
        max_tokens: 3,
        temperature: 0,
      });
      expect(next.usage!.prompt_tokens).toBeGreaterThan(r.usage!.prompt_tokens);
    }
    const use = await anthropicForcedCall(srv.url, name, { type: "tool", name: "get_weather" }, 40);
    expect(use.input).toEqual({ city: expect.stringMatching(/^(Paris|Rome)$/) });
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
