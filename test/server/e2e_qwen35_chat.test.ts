// Qwen3.5 chat through the server: a tiny random qwen3_5_text hybrid (the test fixture's weights) with a tokenizer
// that has <think>, </think>, <tool_call> and </tool_call> as tokens of their own, and a Qwen3.5-format template.
// Thinking is on unless asked off, output starts inside the reasoning, and forced tool calls come in the XML form,
// after the reasoning.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { QWEN35_TEST_TEMPLATE } from "../text/qwen35_template.ts";
import { serve, waitFor, type Served } from "./harness.ts";

const FIXTURE = join(import.meta.dir, "..", "fixtures", "models", "hybrid", "qwen3_5_dense");
const ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>"];

let dir: string;
let name: string;
let srv: Served;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "rmlx-qwen35-"));
  for (const f of ["generation_config.json", "model.safetensors"]) copyFileSync(join(FIXTURE, f), join(dir, f));
  // The byte-level fixture tokenizer spends a token per character of the tools' JSON: more context than the
  // fixture's 512 positions.
  const config = JSON.parse(readFileSync(join(FIXTURE, "config.json"), "utf8"));
  writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, max_position_embeddings: 4096 }));
  const tok = JSON.parse(readFileSync(join(FIXTURE, "tokenizer.json"), "utf8"));
  const cfg = JSON.parse(readFileSync(join(FIXTURE, "tokenizer_config.json"), "utf8"));
  // Ids 403.. are inside the model's 448-row vocabulary; as in Qwen's tokenizers they are added, not special.
  ADDED.forEach((content, i) => {
    const id = 403 + i;
    tok.added_tokens.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: false });
    cfg.added_tokens_decoder[String(id)] = { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: false };
  });
  cfg.chat_template = QWEN35_TEST_TEMPLATE;
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tok));
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(cfg));
  name = basename(dir);
  srv = await serve(["--model", dir, "--kv-memory", "64MiB"]);
  expect(await waitFor(async () => (await fetch(`${srv.url}/health`)).status === 200, 30_000)).toBe(true);
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const TOOLS = [
  {
    type: "function" as const,
    function: {
      name: "get_weather",
      parameters: {
        type: "object",
        properties: { city: { enum: ["Paris", "Rome"] }, hourly: { type: "boolean" }, note: { type: "string", maxLength: 8 } },
        required: ["city"],
      },
    },
  },
  { type: "function" as const, function: { name: "get_time", parameters: { type: "object", properties: { utc: { type: "boolean" } }, required: ["utc"] } } },
];

/** Anthropic's temperature (the SDK's types in this version leave it out). */
const GREEDY = { temperature: 0 } as object;
const openai = () => new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
type Msg = { content: string | null; reasoning_content?: string; tool_calls?: { id: string; function: { name: string; arguments: string } }[] };

describe("Qwen3.5 chat through the server", () => {
  test("thinking on by default: the reply starts as reasoning; enable_thinking false gives plain content", async () => {
    const ask = (kw?: Record<string, unknown>) =>
      openai().chat.completions.create({
        model: name,
        messages: [{ role: "user", content: "Hello there" }],
        max_tokens: 6,
        temperature: 0,
        ...(kw ? { chat_template_kwargs: kw } : {}),
      } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const on = (await ask()).choices[0]!.message as Msg;
    const explicit = (await ask({ enable_thinking: true })).choices[0]!.message as Msg;
    const off = (await ask({ enable_thinking: false })).choices[0]!.message as Msg;
    expect(on.reasoning_content?.length ?? 0).toBeGreaterThan(0);
    expect(explicit).toEqual(on);
    expect(off.reasoning_content).toBeUndefined();
    expect(off.content?.length ?? 0).toBeGreaterThan(0);
    // Thinking off closes the section in the prompt: "\n\n</think>\n\n" more.
    const usageOn = (await ask()).usage!.prompt_tokens;
    const usageOff = (await ask({ enable_thinking: false })).usage!.prompt_tokens;
    expect(usageOff).toBeGreaterThan(usageOn);
  }, 60_000);

  test("reasoning_effort: none turns thinking off, any other effort on; chat_template_kwargs win; an unknown effort is a 400", async () => {
    const ask = (effort: string, kw?: Record<string, unknown>) =>
      openai().chat.completions.create({
        model: name,
        messages: [{ role: "user", content: "Hello there" }],
        max_tokens: 6,
        temperature: 0,
        reasoning_effort: effort,
        ...(kw ? { chat_template_kwargs: kw } : {}),
      } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const off = (await ask("none")).choices[0]!.message as Msg;
    expect(off.reasoning_content).toBeUndefined();
    expect(off.content?.length ?? 0).toBeGreaterThan(0);
    for (const effort of ["minimal", "low", "high"]) {
      expect(((await ask(effort)).choices[0]!.message as Msg).reasoning_content?.length ?? 0).toBeGreaterThan(0);
    }
    expect(((await ask("high", { enable_thinking: false })).choices[0]!.message as Msg).reasoning_content).toBeUndefined();
    const bad = await fetch(`${srv.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: name, messages: [{ role: "user", content: "Hi" }], reasoning_effort: "extreme" }),
    });
    expect(bad.status).toBe(400);
    expect(JSON.stringify(await bad.json())).toContain("reasoning_effort");
  }, 60_000);

  test("Anthropic thinking with a budget: a thinking block, then the reply; disabled: no thinking block", async () => {
    const a = new Anthropic({ baseURL: srv.url, apiKey: "x", maxRetries: 0 });
    const m = await a.messages.create({
      model: name,
      max_tokens: 12,
      ...GREEDY,
      thinking: { type: "enabled", budget_tokens: 4 },
      messages: [{ role: "user", content: "Hello there" }],
    });
    expect(m.content[0]!.type).toBe("thinking");
    expect(m.content.some((b) => b.type === "text")).toBe(true);
    const off = await a.messages.create({
      model: name,
      max_tokens: 6,
      ...GREEDY,
      thinking: { type: "disabled" },
      messages: [{ role: "user", content: "Hello there" }],
    });
    expect(off.content.every((b) => b.type === "text")).toBe(true);
  }, 60_000);

  test("forced tool calls in the XML form: required, named, streamed, and rendered back with the result", async () => {
    const client = openai();
    for (const tool_choice of ["required", { type: "function", function: { name: "get_weather" } }] as const) {
      const r = await client.chat.completions.create({
        model: name,
        messages: [{ role: "user", content: "Weather in Rome?" }],
        tools: TOOLS,
        tool_choice,
        max_tokens: 300,
        temperature: 0,
        chat_template_kwargs: { enable_thinking: false },
      } as OpenAI.ChatCompletionCreateParamsNonStreaming);
      const msg = r.choices[0]!.message as Msg;
      expect(r.choices[0]!.finish_reason).toBe("tool_calls");
      expect(msg.tool_calls!.length).toBe(1);
      const call = msg.tool_calls![0]!;
      if (typeof tool_choice === "object") expect(call.function.name).toBe("get_weather");
      const args = JSON.parse(call.function.arguments);
      if (call.function.name === "get_weather") {
        expect(["Paris", "Rome"]).toContain(args.city);
        if ("hourly" in args) expect(typeof args.hourly).toBe("boolean");
        if ("note" in args) expect([...args.note].length).toBeLessThanOrEqual(8);
      } else expect(typeof args.utc).toBe("boolean");
      // The call and its result go back into the template's XML form and <tool_response> turn.
      const next = await client.chat.completions.create({
        model: name,
        messages: [
          { role: "user", content: "Weather in Rome?" },
          { role: "assistant", content: null, tool_calls: [{ id: call.id, type: "function", function: call.function }] },
          { role: "tool", tool_call_id: call.id, content: "sunny" },
        ],
        tools: TOOLS,
        max_tokens: 4,
        temperature: 0,
      });
      expect(next.choices[0]!.finish_reason).toBeDefined();
      expect(next.usage!.prompt_tokens).toBeGreaterThan(r.usage!.prompt_tokens);
    }
    const stream = await client.chat.completions.create({
      model: name,
      messages: [{ role: "user", content: "Time?" }],
      tools: TOOLS,
      tool_choice: { type: "function", function: { name: "get_time" } },
      max_tokens: 300,
      temperature: 0,
      stream: true,
      chat_template_kwargs: { enable_thinking: false },
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    let args = "";
    let fname = "";
    let finish = "";
    let content = "";
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      if (!c) continue;
      for (const t of c.delta.tool_calls ?? []) {
        fname += t.function?.name ?? "";
        args += t.function?.arguments ?? "";
      }
      content += c.delta.content ?? "";
      if (c.finish_reason) finish = c.finish_reason;
    }
    expect(fname).toBe("get_time");
    expect(typeof JSON.parse(args).utc).toBe("boolean");
    expect(content).toBe("");
    expect(finish).toBe("tool_calls");
  }, 120_000);

  test("with thinking on, the forced call comes after the reasoning (Anthropic tool_choice any with a budget)", async () => {
    const a = new Anthropic({ baseURL: srv.url, apiKey: "x", maxRetries: 0 });
    const m = await a.messages.create({
      model: name,
      max_tokens: 300,
      ...GREEDY,
      thinking: { type: "enabled", budget_tokens: 5 },
      tool_choice: { type: "any" },
      tools: [{ name: "get_time", input_schema: { type: "object", properties: { utc: { type: "boolean" } }, required: ["utc"] } }],
      messages: [{ role: "user", content: "Time?" }],
    });
    expect(m.content[0]!.type).toBe("thinking");
    const use = m.content.find((b) => b.type === "tool_use");
    expect(use).toMatchObject({ name: "get_time" });
    expect(typeof (use as { input: { utc: unknown } }).input.utc).toBe("boolean");
    expect(m.stop_reason).toBe("tool_use");
  }, 60_000);
});
