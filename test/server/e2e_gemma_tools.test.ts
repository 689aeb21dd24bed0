// tool_choice required / named on a Gemma 3 model (pythonic tool calls): a tiny random gemma3_text with Gemma 3's
// real tokenizer and chat template, so the forced call goes through the full vocabulary and the server's parser.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { copyFileSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import { makeTinyModel } from "../models/tiny_model.ts";
import { metric, serve, waitFor, type Served } from "./harness.ts";

const TOKENIZER_DIR = join(import.meta.dir, "..", "..", "node_modules", "@lenml", "tokenizer-gemma3", "models");

let dir: string;
let name: string;
let srv: Served;

beforeAll(async () => {
  dir = makeTinyModel({ modelType: "gemma3_text", vocab: 262144, extra: { max_position_embeddings: 2048, eos_token_id: [1, 106] } }, 3);
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(TOKENIZER_DIR, f), join(dir, f));
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
  { type: "function" as const, function: { name: "get_time", parameters: { type: "object", properties: {} } } },
];

describe("forced pythonic tool calls through the server", () => {

  test("tool_choice required and a named tool give one parsed call, even from a random model", async () => {
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
      const calls = r.choices[0]!.message.tool_calls as { function: { name: string; arguments: string } }[];
      expect(r.choices[0]!.finish_reason).toBe("tool_calls");
      expect(calls.length).toBe(1);
      if (typeof tool_choice === "object") expect(calls[0]!.function.name).toBe("get_weather");
      const args = JSON.parse(calls[0]!.function.arguments);
      if (calls[0]!.function.name === "get_weather") expect(args).toEqual({ city: expect.stringMatching(/^(Paris|Rome)$/) });
      else expect(args).toEqual({});
    }
    const a = new Anthropic({ baseURL: srv.url, apiKey: "x", maxRetries: 0 });
    const m = await a.messages.create({
      model: name,
      max_tokens: 40,
      tool_choice: { type: "any" },
      tools: [{ name: "get_weather", input_schema: { type: "object", properties: { city: { enum: ["Paris", "Rome"] } }, required: ["city"] } }],
      messages: [{ role: "user", content: "Weather?" }],
    });
    expect(m.stop_reason).toBe("tool_use");
    expect(m.content.find((b) => b.type === "tool_use")).toMatchObject({ name: "get_weather" });
  }, 60_000);

  // The engine reports its pools after it has stepped, so this runs after the requests above.
  test("/metrics reports the sliding-window layers' pools next to the full-attention ones", async () => {
    expect(await metric(srv.url, "rmlx_kv_blocks_total")).toBeGreaterThan(0);
    expect(await metric(srv.url, "rmlx_kv_window_blocks_total")).toBeGreaterThan(0);
    expect(await metric(srv.url, "rmlx_kv_bytes_total")).toBeGreaterThan(0);
    expect(await metric(srv.url, "rmlx_kv_bytes_used")).toBeGreaterThanOrEqual(0);
  });
});
