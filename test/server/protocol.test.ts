// The HTTP layer against a stand-in engine (fake_worker.ts): both APIs through their official clients, errors,
// streaming, cancellation, limits and lifecycle. The real engine is exercised in e2e.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { Database } from "bun:sqlite";
import { join } from "node:path";
import { FAKE_WORKER, fakeModels, metric, removeDir, serve, waitFor, type Served } from "./harness.ts";

/** Anthropic's temperature (the SDK's types in this version leave it out). */
const GREEDY = { temperature: 0 } as object;

/** A response body as JSON, for reading fields in assertions. */
const jsonOf = (r: Response): Promise<any> => r.json();

const ENV = { RMLX_ENGINE_WORKER: FAKE_WORKER };
let dir: string;
let srv: Served;
let openai: OpenAI;
let anthropic: Anthropic;

const WEATHER_TOOL = {
  type: "function" as const,
  function: { name: "get_weather", description: "Weather in a city", parameters: { type: "object", properties: { city: { type: "string" } } } },
};

beforeAll(async () => {
  dir = fakeModels("tiny", "other");
  srv = await serve(["--model", join(dir, "tiny"), "--model", join(dir, "other"), "--max-waiting", "64"], ENV);
  openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "unused", maxRetries: 0 });
  anthropic = new Anthropic({ baseURL: srv.url, apiKey: "unused", maxRetries: 0 });
});

afterAll(async () => {
  await srv?.stop();
  removeDir(dir);
});

/** The error a request fails with (the SDKs' promises are thenables, which expect().rejects does not take). */
async function rejection(p: PromiseLike<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error("the request succeeded");
}

/** POSTs `body` as JSON to a server's `path`. */
const postJson = (url: string, path: string, body: unknown, signal?: AbortSignal) =>
  fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal });

const post = (path: string, body: string, headers: Record<string, string> = {}) =>
  fetch(`${srv.url}${path}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });

describe("OpenAI API", () => {
  test("chat completion, non-streaming", async () => {
    const r = await openai.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "hello" }], temperature: 0 });
    expect(r.object).toBe("chat.completion");
    expect(r.choices[0]!.message.content).toBe("Echo: hello");
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(r.usage!.completion_tokens).toBe("Echo: hello".length);
    expect(r.usage!.total_tokens).toBe(r.usage!.prompt_tokens + r.usage!.completion_tokens);
  });

  test("chat completion, streaming with usage", async () => {
    const stream = await openai.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "stream me" }],
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    expect(chunks[0]!.choices[0]!.delta.role).toBe("assistant");
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    expect(text).toBe("Echo: stream me");
    const finish = chunks.find((c) => c.choices[0]?.finish_reason);
    expect(finish!.choices[0]!.finish_reason).toBe("stop");
    const last = chunks[chunks.length - 1]!;
    expect(last.choices).toEqual([]);
    expect(last.usage!.completion_tokens).toBe(text.length);
  });

  test("raw stream ends with data: [DONE]", async () => {
    const r = await post("/v1/chat/completions", JSON.stringify({ model: "tiny", messages: [{ role: "user", content: "x" }], stream: true }));
    expect(r.headers.get("content-type")).toContain("text/event-stream");
    const body = await r.text();
    expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
    const a = await post("/v1/messages", JSON.stringify({ model: "tiny", max_tokens: 9, messages: [{ role: "user", content: "x" }], stream: true }));
    const events = [...(await a.text()).matchAll(/^event: (\w+)$/gm)].map((m) => m[1]);
    expect(events.slice(0, 3)).toEqual(["message_start", "ping", "content_block_start"]);
    expect(events.slice(-3)).toEqual(["content_block_stop", "message_delta", "message_stop"]);
  });

  test("text completion, plain and streaming", async () => {
    const r = await openai.completions.create({ model: "tiny", prompt: "abc", max_tokens: 50, temperature: 0 });
    expect(r.object).toBe("text_completion");
    expect(r.choices[0]!.text).toBe("Echo: abc");
    const s = await openai.completions.create({ model: "tiny", prompt: "abc", max_tokens: 50, temperature: 0, stream: true });
    let text = "";
    for await (const c of s) text += c.choices[0]?.text ?? "";
    expect(text).toBe("Echo: abc");
  });

  test("stop strings cut the text and max_tokens ends with length", async () => {
    const a = await openai.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "hello" }], temperature: 0, stop: ["llo"] });
    expect(a.choices[0]!.message.content).toBe("Echo: he");
    expect(a.choices[0]!.finish_reason).toBe("stop");
    const b = await openai.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "hello" }], temperature: 0, max_tokens: 4 });
    expect(b.choices[0]!.message.content).toBe("Echo");
    expect(b.choices[0]!.finish_reason).toBe("length");
  });

  test("the same seed gives the same sample, another seed another", async () => {
    const ask = (seed: number) =>
      openai.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "sample" }], temperature: 1, seed, max_tokens: 16 });
    const [a, b, c] = await Promise.all([ask(42), ask(42), ask(7)]);
    expect(a.choices[0]!.message.content).toBe(b.choices[0]!.message.content!);
    expect(a.choices[0]!.message.content).not.toBe(c.choices[0]!.message.content!);
  });

  test("n > 1 returns n choices", async () => {
    const r = await openai.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "n" }], temperature: 0, n: 3 });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2]);
  });

  test("streaming with n > 1: each choice has its own role chunk, deltas and finish; usage once at the end", async () => {
    const ask = { model: "tiny", messages: [{ role: "user" as const, content: "sample" }], temperature: 1, seed: 5, max_tokens: 12, n: 3 };
    const whole = await openai.chat.completions.create(ask);
    const stream = await openai.chat.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const usages = chunks.filter((c) => c.usage);
    expect(usages.length).toBe(1);
    expect(chunks[chunks.length - 1]!.usage).toEqual(usages[0]!.usage);
    for (let i = 0; i < 3; i++) {
      const mine = chunks.filter((c) => c.choices[0]?.index === i).map((c) => c.choices[0]!);
      expect(mine[0]!.delta.role).toBe("assistant");
      expect(mine.filter((c) => c.delta.role).length).toBe(1);
      expect(mine.filter((c) => c.finish_reason).map((c) => c.finish_reason)).toEqual([whole.choices[i]!.finish_reason]);
      expect(mine[mine.length - 1]!.finish_reason).toBe(whole.choices[i]!.finish_reason);
      expect(mine.map((c) => c.delta.content ?? "").join("")).toBe(whole.choices[i]!.message.content!);
    }
    expect(usages[0]!.usage!.completion_tokens).toBe(whole.usage!.completion_tokens);
    expect(usages[0]!.usage!.completion_tokens).toBe(36);

    const text = ["", ""];
    const finishes: string[] = [];
    const c = await openai.completions.create({ model: "tiny", prompt: "abc", max_tokens: 50, temperature: 0, n: 2, stream: true });
    for await (const k of c) {
      for (const ch of k.choices) {
        text[ch.index] += ch.text;
        if (ch.finish_reason) finishes.push(`${ch.index}:${ch.finish_reason}`);
      }
    }
    expect(text).toEqual(["Echo: abc", "Echo: abc"]);
    expect(finishes.sort()).toEqual(["0:stop", "1:stop"]);
  });

  test("16 concurrent clients get what each gets alone", async () => {
    const ask = (i: number) =>
      openai.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: `question ${i}` }], temperature: 0 });
    const alone = [];
    for (let i = 0; i < 16; i++) alone.push((await ask(i)).choices[0]!.message.content);
    const together = await Promise.all(Array.from({ length: 16 }, (_, i) => ask(i)));
    expect(together.map((r) => r.choices[0]!.message.content)).toEqual(alone);
  });

  test("logprobs with top alternatives", async () => {
    const r = await openai.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "lp" }],
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
    });
    const lp = r.choices[0]!.logprobs!.content!;
    expect(lp.map((l) => l.token).join("")).toBe("Echo: lp");
    expect(lp[0]!.top_logprobs.length).toBe(2);
  });

  test("tool calls come back structured, without markup, streamed too", async () => {
    const r = await openai.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "what is the weather in Paris?" }],
      tools: [WEATHER_TOOL],
    });
    const msg = r.choices[0]!.message;
    expect(r.choices[0]!.finish_reason).toBe("tool_calls");
    expect(msg.content ?? "").not.toContain("<tool_call>");
    expect(msg.tool_calls!.length).toBe(1);
    const call = msg.tool_calls![0]! as { function: { name: string; arguments: string } };
    expect(call.function.name).toBe("get_weather");
    expect(JSON.parse(call.function.arguments)).toEqual({ city: "Paris" });

    const s = await openai.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "what is the weather in Paris?" }],
      tools: [WEATHER_TOOL],
      stream: true,
    });
    let content = "";
    const calls = [];
    let finish;
    for await (const c of s) {
      content += c.choices[0]?.delta.content ?? "";
      calls.push(...(c.choices[0]?.delta.tool_calls ?? []));
      finish ??= c.choices[0]?.finish_reason;
    }
    expect(content).not.toContain("<tool_call");
    expect(calls.length).toBe(1);
    expect(calls[0]!.function!.name).toBe("get_weather");
    expect(finish).toBe("tool_calls");
  });

  test("multi-turn with a tool result is accepted", async () => {
    const r = await openai.chat.completions.create({
      model: "tiny",
      temperature: 0,
      tools: [WEATHER_TOOL],
      messages: [
        { role: "user", content: "weather in Paris?" },
        { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } }] },
        { role: "tool", tool_call_id: "call_1", content: "sunny" },
        { role: "user", content: "thanks" },
      ],
    });
    expect(r.choices[0]!.message.content).toBe("Echo: thanks");
  });

  test("tool_choice none hides the tools; a named unknown tool is a 400", async () => {
    const r = await openai.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "weather?" }],
      tools: [WEATHER_TOOL],
      tool_choice: "none",
      temperature: 0,
    });
    expect(r.choices[0]!.message.content).toBe("Echo: weather?");
    const bad = openai.chat.completions.create({
      model: "tiny",
      messages: [{ role: "user", content: "weather?" }],
      tools: [WEATHER_TOOL],
      tool_choice: { type: "function", function: { name: "nope" } },
    });
    expect(await rejection(bad)).toBeInstanceOf(OpenAI.BadRequestError);
  });

  test("tool_choice null means auto: the tools are offered, no call is forced", async () => {
    const ask = (tool_choice: unknown) =>
      post("/v1/chat/completions", JSON.stringify({ model: "tiny", temperature: 0, tools: [WEATHER_TOOL], tool_choice, messages: [{ role: "user", content: "[request]" }] }));
    const auto = await jsonOf(await ask(null));
    expect(JSON.parse(auto.choices[0].message.content).requireToolCall).toBe(false);
    expect(auto.choices[0].finish_reason).toBe("stop");
    const required = await jsonOf(await ask("required"));
    expect(required.choices[0].message.tool_calls.length).toBe(1);
    expect(required.choices[0].finish_reason).toBe("tool_calls");
  });

  test("a forced call cut off by max_tokens: no markup in the content, finish_reason length", async () => {
    const ask = { model: "tiny", messages: [{ role: "user" as const, content: "hi" }], tools: [WEATHER_TOOL], tool_choice: "required" as const, max_tokens: 30 };
    const r = await openai.chat.completions.create(ask);
    expect(r.choices[0]!.finish_reason).toBe("length");
    expect(r.choices[0]!.message.content ?? "").toBe("");
    expect(r.choices[0]!.message.tool_calls ?? []).toEqual([]);
    const s = await openai.chat.completions.create({ ...ask, stream: true });
    let content = "";
    let finish;
    for await (const c of s) {
      content += c.choices[0]?.delta.content ?? "";
      expect(c.choices[0]?.delta.tool_calls).toBeUndefined();
      finish ??= c.choices[0]?.finish_reason;
    }
    expect(content).toBe("");
    expect(finish).toBe("length");
    // Cut inside the closing tag, the call itself is whole: it is returned, and the limit still reported.
    const whole = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>';
    const late = await openai.chat.completions.create({ ...ask, max_tokens: whole.length - 3 });
    expect(late.choices[0]!.finish_reason).toBe("length");
    expect(late.choices[0]!.message.content ?? "").toBe("");
    expect(late.choices[0]!.message.tool_calls!.length).toBe(1);
  });

  test("reasoning goes to reasoning_content", async () => {
    const r = await openai.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "[think]" }] });
    const msg = r.choices[0]!.message as { content: string; reasoning_content?: string };
    expect(msg.content).toBe("The answer is 42.");
    expect(msg.reasoning_content).toBe("Let me think.");
  });

  test("embeddings: the route validates its body; a causal LM answers 400 in OpenAI's format, saying why", async () => {
    const e = (await rejection(openai.embeddings.create({ model: "tiny", input: "hello" }))) as InstanceType<typeof OpenAI.APIError>;
    expect(e.status).toBe(400);
    expect(e.message).toContain("model 'tiny' does not produce embeddings");
    const raw = await post("/v1/embeddings", JSON.stringify({ model: "tiny", input: ["a", "b"] }));
    expect(raw.status).toBe(400);
    expect((await jsonOf(raw)).error).toMatchObject({
      type: "invalid_request_error",
      param: "model",
      message: expect.stringContaining("model 'tiny' does not produce embeddings: it is a causal language model"),
    });
    expect((await post("/v1/embeddings", JSON.stringify({ model: "nope", input: "x" }))).status).toBe(404);
    for (const bad of [{ model: "tiny" }, { model: "tiny", input: 5 }, { model: "tiny", input: "" }, { model: "tiny", input: [] }]) {
      const r = await post("/v1/embeddings", JSON.stringify(bad));
      expect(r.status).toBe(400);
      expect((await jsonOf(r)).error.message).toContain("input");
    }
  });

  test("models list and lookup", async () => {
    const list = await openai.models.list();
    expect(list.data.map((m) => m.id).sort()).toEqual(["other", "tiny"]);
    expect((await openai.models.retrieve("tiny")).id).toBe("tiny");
    expect(await rejection(openai.models.retrieve("nope"))).toBeInstanceOf(OpenAI.NotFoundError);
  });
});

describe("Anthropic API", () => {
  test("message, non-streaming", async () => {
    const r = await anthropic.messages.create({ model: "tiny", max_tokens: 64, ...GREEDY, messages: [{ role: "user", content: "hi" }] });
    expect(r.type).toBe("message");
    expect(r.content).toEqual([{ type: "text", text: "Echo: hi" }] as never);
    expect(r.stop_reason).toBe("end_turn");
    expect(r.usage.output_tokens).toBe("Echo: hi".length);
  });

  test("message, streaming, as the SDK assembles it", async () => {
    const stream = anthropic.messages.stream({ model: "tiny", max_tokens: 64, ...GREEDY, messages: [{ role: "user", content: "there" }] });
    const types: string[] = [];
    stream.on("streamEvent", (e) => types.push(e.type));
    const msg = await stream.finalMessage();
    expect(msg.content).toEqual([{ type: "text", text: "Echo: there" }] as never);
    expect(types[0]).toBe("message_start");
    expect(types.slice(-2)).toEqual(["message_delta", "message_stop"]);
    expect(msg.stop_reason).toBe("end_turn");
  });

  test("stop_sequences and max_tokens", async () => {
    const a = await anthropic.messages.create({
      model: "tiny",
      max_tokens: 64,
      ...GREEDY,
      stop_sequences: ["ll"],
      messages: [{ role: "user", content: "hello" }],
    });
    expect(a.content).toEqual([{ type: "text", text: "Echo: he" }] as never);
    expect(a.stop_reason).toBe("stop_sequence");
    expect(a.stop_sequence).toBe("ll");
    const b = await anthropic.messages.create({ model: "tiny", max_tokens: 3, ...GREEDY, messages: [{ role: "user", content: "hello" }] });
    expect(b.stop_reason).toBe("max_tokens");
  });

  test("tool use, then a tool result in the next turn", async () => {
    const tools = [{ name: "get_weather", description: "Weather", input_schema: { type: "object" as const, properties: { city: { type: "string" } } } }];
    const r = await anthropic.messages.create({ model: "tiny", max_tokens: 200, tools, messages: [{ role: "user", content: "weather in Paris?" }] });
    expect(r.stop_reason).toBe("tool_use");
    const use = r.content.find((b) => b.type === "tool_use") as { id: string; name: string; input: unknown };
    expect(use.name).toBe("get_weather");
    expect(use.input).toEqual({ city: "Paris" });
    expect(JSON.stringify(r.content)).not.toContain("<tool_call>");

    const s = anthropic.messages.stream({ model: "tiny", max_tokens: 200, tools, messages: [{ role: "user", content: "weather in Paris?" }] });
    const streamed = await s.finalMessage();
    expect(streamed.content.find((b) => b.type === "tool_use")).toMatchObject({ name: "get_weather", input: { city: "Paris" } });

    const next = await anthropic.messages.create({
      model: "tiny",
      max_tokens: 100,
      ...GREEDY,
      tools,
      messages: [
        { role: "user", content: "weather in Paris?" },
        { role: "assistant", content: [{ type: "tool_use", id: use.id, name: use.name, input: use.input }] },
        { role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "sunny" }, { type: "text", text: "ok" }] },
      ],
    });
    expect(next.content).toEqual([{ type: "text", text: "Echo: ok" }] as never);
  });

  test("a forced tool_use cut off by max_tokens: no markup in any block, stop_reason max_tokens", async () => {
    const ask = {
      model: "tiny",
      max_tokens: 30,
      tools: [{ name: "get_weather", input_schema: { type: "object" as const, properties: { city: { type: "string" } } } }],
      tool_choice: { type: "any" as const },
      messages: [{ role: "user" as const, content: "hi" }],
    };
    const r = await anthropic.messages.create(ask);
    expect(r.stop_reason).toBe("max_tokens");
    expect(r.content).toEqual([]);
    const s = await anthropic.messages.stream(ask).finalMessage();
    expect(s.stop_reason).toBe("max_tokens");
    expect(s.content).toEqual([]);
  });

  test("thinking blocks", async () => {
    const r = await anthropic.messages.create({ model: "tiny", max_tokens: 200, messages: [{ role: "user", content: "[think]" }] });
    expect(r.content.map((b) => b.type)).toEqual(["thinking", "text"]);
    expect((r.content[0] as { thinking: string }).thinking).toBe("Let me think.");
    const s = anthropic.messages.stream({ model: "tiny", max_tokens: 200, messages: [{ role: "user", content: "[think]" }] });
    const m = await s.finalMessage();
    expect(m.content.map((b) => b.type)).toEqual(["thinking", "text"]);
    expect((m.content[1] as { text: string }).text).toBe("The answer is 42.");
  });

  test("system entries inside messages join the system prompt, in order", async () => {
    const r = await anthropic.messages.create({
      model: "tiny",
      max_tokens: 300,
      ...GREEDY,
      system: [{ type: "text", text: "first" }],
      messages: [
        { role: "system", content: "second" },
        { role: "user", content: "hi" },
        { role: "assistant", content: "hello" },
        { role: "system", content: [{ type: "text", text: "third" }] },
        { role: "user", content: "[prompt]" },
      ],
    });
    expect(r.content).toEqual([
      { type: "text", text: "<|system|>first\nsecond\nthird\n<|user|>hi\n<|assistant|>hello\n<|user|>[prompt]\n<|assistant|>" },
    ] as never);
    const counted = await anthropic.messages.countTokens({ model: "tiny", messages: [{ role: "system", content: "s" }, { role: "user", content: "x" }] });
    expect(counted.input_tokens).toBe("<|system|>s\n<|user|>x\n<|assistant|>".length);
  });

  test("thinking: adaptive and between_tools turn the template's switch on; adaptive gets half of max_tokens as budget", async () => {
    const ask = async (thinking: object) => {
      const r = await post("/v1/messages", JSON.stringify({ model: "tiny", max_tokens: 400, thinking, ...GREEDY, messages: [{ role: "user", content: "[request]" }] }));
      expect(r.status).toBe(200);
      return JSON.parse((await jsonOf(r)).content[0].text);
    };
    expect(await ask({ type: "adaptive" })).toMatchObject({ templateKwargs: { enable_thinking: true }, thinkingBudget: 200 });
    expect(await ask({ type: "adaptive", display: "summarized" })).toMatchObject({ templateKwargs: { enable_thinking: true } });
    expect(await ask({ type: "between_tools" })).toMatchObject({ templateKwargs: { enable_thinking: true } });
    expect(await ask({ type: "enabled", budget_tokens: 64 })).toMatchObject({ templateKwargs: { enable_thinking: true }, thinkingBudget: 64 });
    const off = await ask({ type: "disabled" });
    expect(off.templateKwargs).toEqual({ enable_thinking: false });
    expect(off.thinkingBudget).toBeUndefined();
  });

  test("the Messages API's other request fields are accepted; output_config.format constrains the output", async () => {
    const body = {
      model: "tiny",
      max_tokens: 400,
      temperature: 0,
      top_k: 5,
      top_p: 0.9,
      stop_sequences: ["never"],
      metadata: { user_id: "u1" },
      service_tier: "auto",
      container: "container_1",
      context_management: { edits: [{ type: "clear_tool_uses_20250919" }] },
      mcp_servers: [],
      speed: "standard",
      inference_geo: "us",
      diagnostics: { previous_message_id: null },
      cache_control: { type: "ephemeral" },
      output_config: { effort: "high", format: { type: "json_schema", schema: { type: "object" } } },
      system: [{ type: "text", text: "sys", cache_control: { type: "ephemeral", ttl: "1h" } }],
      tools: [{ name: "get_time", type: "custom", input_schema: { type: "object" }, cache_control: { type: "ephemeral" }, strict: true, defer_loading: false, eager_input_streaming: true }],
      messages: [{ role: "user", content: [{ type: "text", text: "[request]", cache_control: { type: "ephemeral" }, citations: null }] }],
    };
    const r = await post("/v1/messages", JSON.stringify(body));
    expect(r.status).toBe(200);
    expect(JSON.parse((await jsonOf(r)).content[0].text)).toMatchObject({ jsonSchema: { type: "object" }, requireToolCall: false });
    const beta = await post("/v1/messages", JSON.stringify({ ...body, output_config: undefined, output_format: { type: "json_schema", schema: { type: "array" } } }));
    expect(JSON.parse((await jsonOf(beta)).content[0].text).jsonSchema).toEqual({ type: "array" });
  });

  test("documents with text sources are read as text; images are refused clearly, in a tool_result too", async () => {
    const ask = (content: unknown[]) => post("/v1/messages", JSON.stringify({ model: "tiny", max_tokens: 400, ...GREEDY, messages: [{ role: "user", content }] }));
    const doc = await ask([
      { type: "document", title: "Notes", source: { type: "text", media_type: "text/plain", data: "alpha" }, citations: { enabled: true } },
      { type: "document", source: { type: "content", content: [{ type: "text", text: "beta" }] } },
      { type: "text", text: "[prompt]" },
    ]);
    expect(doc.status).toBe(200);
    expect((await jsonOf(doc)).content[0].text).toBe("<|user|>Notes\n\nalpha\n\nbeta\n\n[prompt]\n<|assistant|>");
    const found = await ask([
      { type: "search_result", title: "Doc", source: "https://d.example", content: [{ type: "text", text: "gamma" }] },
      { type: "text", text: "[prompt]" },
    ]);
    expect((await jsonOf(found)).content[0].text).toBe("<|user|>Doc\nhttps://d.example\n\ngamma\n\n[prompt]\n<|assistant|>");
    const malformed = await ask([{ type: "document", source: { type: "content", content: [null] } }]);
    expect(malformed.status).toBe(400);
    expect((await jsonOf(malformed)).error.message).toBe("the content of a document must be a list of content blocks");
    const pdf = await ask([{ type: "document", source: { type: "base64", media_type: "application/pdf", data: "JVBERi0=" } }]);
    expect(pdf.status).toBe(400);
    expect((await jsonOf(pdf)).error.message).toContain("document source type 'base64' is not supported");
    const image = { type: "image", source: { type: "base64", media_type: "image/png", data: "iVBORw0KGgo=" } };
    for (const content of [
      [image, { type: "text", text: "what is this?" }],
      [{ type: "tool_result", tool_use_id: "toolu_1", content: [{ type: "text", text: "screenshot:" }, image] }],
    ]) {
      const r = await ask(content);
      expect(r.status).toBe(400);
      expect(await jsonOf(r)).toMatchObject({ type: "error", error: { type: "invalid_request_error" } });
    }
    const inResult = await ask([{ type: "tool_result", tool_use_id: "toolu_1", content: [image] }]);
    expect((await jsonOf(inResult)).error.message).toContain("image content (in a tool_result) is not supported");
  });

  test("server tools and remote MCP servers are refused with a 400 naming them", async () => {
    const ask = (extra: object) =>
      post("/v1/messages", JSON.stringify({ model: "tiny", max_tokens: 10, messages: [{ role: "user", content: "x" }], ...extra }));
    for (const tool of [
      { type: "web_search_20250305", name: "web_search", max_uses: 3 },
      { type: "bash_20250124", name: "bash" },
      { type: "text_editor_20250728", name: "str_replace_based_edit_tool" },
    ]) {
      const r = await ask({ tools: [{ name: "ok", input_schema: { type: "object" } }, tool] });
      expect(r.status).toBe(400);
      const e = await jsonOf(r);
      expect(e.error.type).toBe("invalid_request_error");
      expect(e.error.message).toContain(`tools.1: server tool '${tool.name}' (type '${tool.type}') is not supported`);
    }
    const noSchema = await ask({ tools: [{ name: "bare" }] });
    expect((await jsonOf(noSchema)).error.message).toContain("tool 'bare' needs an input_schema");
    const mcp = await ask({ mcp_servers: [{ type: "url", url: "https://mcp.example/sse", name: "ex" }] });
    expect(mcp.status).toBe(400);
    expect((await jsonOf(mcp)).error.message).toContain("mcp_servers is not supported");
  });

  test("usage: input_tokens is the uncached part of the prompt, streaming and not", async () => {
    const messages = [{ role: "user" as const, content: "[cached] tell me" }];
    const prompt = "<|user|>[cached] tell me\n<|assistant|>".length;
    const cached = Math.floor(prompt / 2);
    const r = await anthropic.messages.create({ model: "tiny", max_tokens: 50, ...GREEDY, messages });
    expect(r.usage).toMatchObject({ input_tokens: prompt - cached, cache_read_input_tokens: cached, cache_creation_input_tokens: 0 });
    const s = await anthropic.messages.stream({ model: "tiny", max_tokens: 50, ...GREEDY, messages }).finalMessage();
    expect(s.usage).toMatchObject({ input_tokens: prompt - cached, cache_read_input_tokens: cached, cache_creation_input_tokens: 0 });
    const raw = await (await post("/v1/messages", JSON.stringify({ model: "tiny", max_tokens: 50, ...GREEDY, messages, stream: true }))).text();
    const events = raw.split("\n").filter((l) => l.startsWith("data: ")).map((l) => JSON.parse(l.slice(6)));
    expect(events.find((e) => e.type === "message_start").message.usage).toMatchObject({ input_tokens: prompt - cached, cache_read_input_tokens: cached });
    expect(events.find((e) => e.type === "message_delta").usage).toMatchObject({ input_tokens: prompt - cached, cache_read_input_tokens: cached });
  });

  test("count_tokens", async () => {
    const r = await anthropic.messages.countTokens({ model: "tiny", system: "sys", messages: [{ role: "user", content: "hi" }] });
    // The fake engine renders "<|system|>sys\n<|user|>hi\n<|assistant|>", one token per character.
    expect(r.input_tokens).toBe("<|system|>sys\n<|user|>hi\n<|assistant|>".length);
  });
});

describe("errors", () => {
  test("malformed JSON is a 400 in each API's format", async () => {
    const a = await post("/v1/chat/completions", "{not json");
    expect(a.status).toBe(400);
    const ab = await jsonOf(a);
    expect(ab.error.type).toBe("invalid_request_error");
    expect(typeof ab.error.message).toBe("string");
    const b = await post("/v1/messages", "{not json");
    expect(b.status).toBe(400);
    expect(await jsonOf(b)).toMatchObject({ type: "error", error: { type: "invalid_request_error" } });
  });

  test("schema violations are a 400 naming the field", async () => {
    const r = await post("/v1/chat/completions", JSON.stringify({ model: "tiny", messages: [] }));
    expect(r.status).toBe(400);
    expect((await jsonOf(r)).error.message).toContain("messages");
    const m = await post("/v1/messages", JSON.stringify({ model: "tiny", messages: [{ role: "user", content: "x" }] }));
    expect(m.status).toBe(400);
    expect((await jsonOf(m)).error.message).toContain("max_tokens");
    const t = await post("/v1/chat/completions", JSON.stringify({ model: "tiny", messages: [{ role: "user", content: "x" }], temperature: 3 }));
    expect(t.status).toBe(400);
    expect((await jsonOf(t)).error.message).toBe("invalid request body: temperature: must be >= 0, <= 2");
    const role = await post("/v1/messages", JSON.stringify({ model: "tiny", max_tokens: 5, messages: [{ role: "bot", content: "x" }] }));
    expect((await jsonOf(role)).error.message).toBe('invalid request body: messages.0.role: must be one of "user", "assistant", "system"');
    const sys = await post("/v1/messages", JSON.stringify({ model: "tiny", max_tokens: 5, messages: [{ role: "system", content: [{ type: "image" }] }, { role: "user", content: "x" }] }));
    expect(sys.status).toBe(400);
    expect((await jsonOf(sys)).error.message).toBe("content block type 'image' is not supported in a system prompt");
  });

  test("unknown model is a 404, unknown route a 404", async () => {
    expect(await rejection(openai.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }))).toBeInstanceOf(OpenAI.NotFoundError);
    expect(await rejection(anthropic.messages.create({ model: "nope", max_tokens: 5, messages: [{ role: "user", content: "x" }] }))).toBeInstanceOf(Anthropic.NotFoundError);
    const r = await fetch(`${srv.url}/v1/nothing`);
    expect(r.status).toBe(404);
    expect((await jsonOf(r)).error).toBeDefined();
  });

  test("a prompt over the context is a clear 400", async () => {
    const long = "word ".repeat(200);
    try {
      await openai.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: long }] });
      throw new Error("no error");
    } catch (e) {
      expect(e).toBeInstanceOf(OpenAI.BadRequestError);
      expect((e as Error).message).toContain("context");
    }
    expect(await rejection(anthropic.messages.create({ model: "tiny", max_tokens: 5, messages: [{ role: "user", content: long }] }))).toBeInstanceOf(Anthropic.BadRequestError);
  });
});

describe("engine in its own thread", () => {
  test("/health and /metrics answer within milliseconds while the engine computes", async () => {
    const gen = openai.chat.completions.create({ model: "tiny", messages: [{ role: "user", content: "[busy]" }] });
    await Bun.sleep(100);
    const times: number[] = [];
    for (let i = 0; i < 9; i++) {
      const t0 = performance.now();
      const h = await fetch(`${srv.url}/health`);
      const m = await fetch(`${srv.url}/metrics`);
      times.push(performance.now() - t0);
      expect(h.status).toBe(200);
      expect(m.status).toBe(200);
      await Bun.sleep(37);
    }
    // The engine blocks its own thread 300 ms per token: were HTTP waiting on it, the median would be ~150 ms
    // (the bound leaves room for a loaded test machine).
    times.sort((a, b) => a - b);
    expect(times[4]!).toBeLessThan(100);
    expect((await gen).choices[0]!.message.content).toBe("busy");
  }, 15_000);

  test("a client that disconnects mid-stream cancels its generation and frees its cache", async () => {
    const ac = new AbortController();
    const r = await postJson(srv.url, "/v1/chat/completions", { model: "tiny", messages: [{ role: "user", content: "[slow]" }], max_tokens: 400, stream: true }, ac.signal);
    const reader = r.body!.getReader();
    await reader.read();
    await reader.read();
    expect(await waitFor(async () => (await metric(srv.url, "rmlx_requests_running")) === 1, 1000)).toBe(true);
    expect(await metric(srv.url, "rmlx_kv_blocks_used")).toBeGreaterThan(0);
    expect(await metric(srv.url, "rmlx_kv_bytes_used")).toBe(64 * (await metric(srv.url, "rmlx_kv_blocks_used")));
    expect(await metric(srv.url, "rmlx_kv_bytes_total")).toBe(64 * 100000);
    ac.abort();
    expect(await waitFor(async () => (await metric(srv.url, "rmlx_requests_running")) === 0, 500)).toBe(true);
    expect(await metric(srv.url, "rmlx_kv_blocks_used")).toBe(0);
    expect(await metric(srv.url, "rmlx_kv_bytes_used")).toBe(0);
  });

  test("a client that disconnects from a stream with n > 1 cancels every choice", async () => {
    const ac = new AbortController();
    const r = await postJson(srv.url, "/v1/chat/completions", { model: "tiny", messages: [{ role: "user", content: "[slow]" }], max_tokens: 400, n: 3, stream: true }, ac.signal);
    const reader = r.body!.getReader();
    await reader.read();
    expect(await waitFor(async () => (await metric(srv.url, "rmlx_requests_running")) === 3, 1000)).toBe(true);
    // The stand-in engine's window pool holds 8 tokens of each sequence, and every prompt here is longer.
    expect(await metric(srv.url, "rmlx_kv_window_blocks_used")).toBe(3 * 8);
    expect(await metric(srv.url, "rmlx_kv_window_blocks_total")).toBe(4096);
    ac.abort();
    expect(await waitFor(async () => (await metric(srv.url, "rmlx_requests_running")) === 0, 500)).toBe(true);
    expect(await metric(srv.url, "rmlx_kv_blocks_used")).toBe(0);
    expect(await metric(srv.url, "rmlx_kv_window_blocks_used")).toBe(0);
  });

  test("a non-streaming client that goes away cancels its generation too", async () => {
    const ac = new AbortController();
    const pending = postJson(srv.url, "/v1/messages", { model: "tiny", max_tokens: 400, messages: [{ role: "user", content: "[slow]" }] }, ac.signal).catch(() => null);
    expect(await waitFor(async () => (await metric(srv.url, "rmlx_requests_running")) === 1, 1000)).toBe(true);
    ac.abort();
    await pending;
    expect(await waitFor(async () => (await metric(srv.url, "rmlx_requests_running")) === 0, 500)).toBe(true);
  });

  test("metrics count requests, tokens and time to first token", async () => {
    const text = await (await fetch(`${srv.url}/metrics`)).text();
    expect(text).toMatch(/rmlx_requests_total\{endpoint="\/v1\/chat\/completions",status="200"\} \d+/);
    expect(await metric(srv.url, "rmlx_generation_tokens_total")).toBeGreaterThan(0);
    expect(await metric(srv.url, "rmlx_time_to_first_token_seconds_count")).toBeGreaterThan(0);
    expect(text).toContain('rmlx_model_loaded{model="tiny"} 1');
  });

  test("/version answers the package version, as vLLM's does", async () => {
    const r = await fetch(`${srv.url}/version`);
    expect(r.status).toBe(200);
    expect(((await r.json()) as { version: string }).version).toMatch(/^\d+\.\d+\.\d+$/);
  });

  test("tokenize and detokenize", async () => {
    const t = await jsonOf(await post("/tokenize", JSON.stringify({ model: "tiny", prompt: "abc" })));
    expect(t.tokens).toEqual([97, 98, 99]);
    const d = await jsonOf(await post("/detokenize", JSON.stringify({ model: "tiny", tokens: [104, 105] })));
    expect(d.prompt).toBe("hi");
    // llama.cpp's names: `content` for the text both ways.
    expect((await jsonOf(await post("/tokenize", JSON.stringify({ model: "tiny", content: "abc" })))).tokens).toEqual([97, 98, 99]);
    expect(d.content).toBe("hi");
    const both = await post("/tokenize", JSON.stringify({ model: "tiny", prompt: "a", content: "b" }));
    expect(both.status).toBe(400);
    expect(((await both.json()) as { error: { message: string } }).error.message).toContain("exactly one");
  });
});

describe("server options", () => {
  test("model directories as arguments (vLLM's 'serve MODEL'), alone or with -m", async () => {
    const dir2 = fakeModels("a", "b");
    const s = await serve([join(dir2, "a"), "--model", join(dir2, "b")], ENV);
    try {
      const ids = ((await (await fetch(`${s.url}/v1/models`)).json()) as { data: { id: string }[] }).data.map((m) => m.id);
      expect(ids.sort()).toEqual(["a", "b"]);
    } finally {
      await s.stop();
    }
  });

  test("--cors: allow headers for allowed origins, preflights answered before the API key; off by default", async () => {
    const plain = await fetch(`${srv.url}/v1/models`, { headers: { origin: "http://app.example" } });
    expect(plain.headers.get("access-control-allow-origin")).toBeNull();
    const dir2 = fakeModels("m");
    const listed = await serve(["--model", join(dir2, "m"), "--api-key", "k", "--cors", "http://app.example, http://localhost:3000"], ENV);
    const any = await serve(["--model", join(dir2, "m")], { ...ENV, RMLX_CORS: "*" });
    try {
      const pre = await fetch(`${listed.url}/v1/chat/completions`, {
        method: "OPTIONS",
        headers: { origin: "http://localhost:3000", "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type" },
      });
      expect(pre.status).toBe(204);
      expect(pre.headers.get("access-control-allow-origin")).toBe("http://localhost:3000");
      expect(pre.headers.get("access-control-allow-methods")).toContain("POST");
      expect(pre.headers.get("access-control-allow-headers")).toBe("authorization, content-type");
      const denied = await fetch(`${listed.url}/v1/models`, { method: "OPTIONS", headers: { origin: "http://evil.example", "access-control-request-method": "GET" } });
      expect(denied.headers.get("access-control-allow-origin")).toBeNull();
      const ok = await fetch(`${listed.url}/v1/models`, { headers: { origin: "http://app.example", authorization: "Bearer k" } });
      expect(ok.status).toBe(200);
      expect(ok.headers.get("access-control-allow-origin")).toBe("http://app.example");
      expect(ok.headers.get("vary")).toContain("Origin");
      const unauthorized = await fetch(`${listed.url}/v1/models`, { headers: { origin: "http://app.example" } });
      expect(unauthorized.status).toBe(401);
      expect(unauthorized.headers.get("access-control-allow-origin")).toBe("http://app.example");
      const stream = await fetch(`${any.url}/v1/chat/completions`, {
        method: "POST",
        headers: { origin: "http://whatever.example", "content-type": "application/json" },
        body: JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }], stream: true }),
      });
      expect(stream.headers.get("access-control-allow-origin")).toBe("*");
      expect((await stream.text()).trimEnd().endsWith("data: [DONE]")).toBe(true);
    } finally {
      await listed.stop();
      await any.stop();
      removeDir(dir2);
    }
    const bad = Bun.spawnSync([process.execPath, join(import.meta.dir, "../../src/cli/main.ts"), "serve", "--cors", "not an origin"], { env: { ...process.env, ...ENV } });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr.toString()).toContain("--cors: 'not an origin' is not an origin");
  });

  test("--api-key: Bearer or x-api-key on every route but /health", async () => {
    const dir2 = fakeModels("m");
    const s = await serve(["--model", join(dir2, "m"), "--api-key", "sekret"], ENV);
    try {
      // /health needs no key (it says 503 until the model has loaded, 200 after).
      expect(await waitFor(async () => (await fetch(`${s.url}/health`)).status === 200, 5000)).toBe(true);
      const noKey = await fetch(`${s.url}/v1/models`);
      expect(noKey.status).toBe(401);
      expect((await jsonOf(noKey)).error.type).toBe("authentication_error");
      const wrong = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "wrong", maxRetries: 0 });
      expect(await rejection(wrong.models.list())).toBeInstanceOf(OpenAI.AuthenticationError);
      const right = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "sekret", maxRetries: 0 });
      expect((await right.models.list()).data[0]!.id).toBe("m");
      const a = new Anthropic({ baseURL: s.url, apiKey: "sekret", maxRetries: 0 });
      const r = await a.messages.create({ model: "m", max_tokens: 20, ...GREEDY, messages: [{ role: "user", content: "k" }] });
      expect(r.content).toEqual([{ type: "text", text: "Echo: k" }] as never);
      const bad = new Anthropic({ baseURL: s.url, apiKey: "nope", maxRetries: 0 });
      expect(await rejection(bad.messages.create({ model: "m", max_tokens: 5, messages: [{ role: "user", content: "x" }] }))).toBeInstanceOf(Anthropic.AuthenticationError);
    } finally {
      await s.stop();
      removeDir(dir2);
    }
  });

  test("flags win over RMLX_* environment variables, which apply without flags", async () => {
    const dir2 = fakeModels("m");
    const env = { ...ENV, RMLX_API_KEY: "from-env" };
    const auth = (url: string, key: string) => fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    const withFlag = await serve(["--model", join(dir2, "m"), "--api-key", "from-flag"], env);
    const withEnv = await serve(["--model", join(dir2, "m")], env);
    try {
      expect((await auth(withFlag.url, "from-flag")).status).toBe(200);
      expect((await auth(withFlag.url, "from-env")).status).toBe(401);
      expect((await auth(withEnv.url, "from-env")).status).toBe(200);
    } finally {
      await withFlag.stop();
      await withEnv.stop();
      removeDir(dir2);
    }
  });

  test("a full queue answers 429 with Retry-After", async () => {
    const dir2 = fakeModels("m");
    const s = await serve(["--model", join(dir2, "m"), "--max-running", "1", "--max-waiting", "0"], ENV);
    try {
      const ac = new AbortController();
      const first = await postJson(s.url, "/v1/chat/completions", { model: "m", messages: [{ role: "user", content: "[slow]" }], max_tokens: 100, stream: true }, ac.signal);
      expect(first.status).toBe(200);
      const second = await postJson(s.url, "/v1/chat/completions", { model: "m", messages: [{ role: "user", content: "x" }] });
      expect(second.status).toBe(429);
      expect(Number(second.headers.get("retry-after"))).toBeGreaterThan(0);
      expect((await jsonOf(second)).error.message).toContain("queue");
      ac.abort();
    } finally {
      await s.stop();
      removeDir(dir2);
    }
  });

  test("/health is 503 while the model loads; idle models are unloaded", async () => {
    const dir2 = fakeModels("slowload");
    const s = await serve(["--model", join(dir2, "slowload"), "--idle-unload", "1"], ENV, false, true);
    try {
      expect((await fetch(`${s.url}/health`)).status).toBe(503);
      expect(await waitFor(async () => (await fetch(`${s.url}/health`)).status === 200, 3000)).toBe(true);
      const text = async () => (await fetch(`${s.url}/metrics`)).text();
      expect(await text()).toContain('rmlx_model_loaded{model="slowload"} 1');
      expect(await waitFor(async () => (await text()).includes('rmlx_model_loaded{model="slowload"} 0'), 4000)).toBe(true);
      // Loaded again on the next request.
      const o = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "x", maxRetries: 0 });
      const r = await o.chat.completions.create({ model: "slowload", messages: [{ role: "user", content: "back" }], temperature: 0 });
      expect(r.choices[0]!.message.content).toBe("Echo: back");
    } finally {
      await s.stop();
      removeDir(dir2);
    }
  });

  test("a directory of model directories serves each by name; a broken one fails with its own error", async () => {
    const dir2 = fakeModels("alpha", "broken");
    const s = await serve(["--model", dir2], ENV);
    try {
      const o = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "x", maxRetries: 0 });
      expect((await o.models.list()).data.map((m) => m.id).sort()).toEqual(["alpha", "broken"]);
      const r = await o.chat.completions.create({ model: "alpha", messages: [{ role: "user", content: "a" }], temperature: 0 });
      expect(r.choices[0]!.message.content).toBe("Echo: a");
      const res = await postJson(s.url, "/v1/chat/completions", { model: "broken", messages: [{ role: "user", content: "a" }] });
      expect(res.status).toBe(422);
      expect((await jsonOf(res)).error.message).toContain("cannot load");
    } finally {
      await s.stop();
      removeDir(dir2);
    }
  });

  test("SIGTERM lets an in-flight stream finish, then exits 0", async () => {
    const dir2 = fakeModels("m");
    const s = await serve(["--model", join(dir2, "m")], ENV);
    const r = await postJson(s.url, "/v1/chat/completions", { model: "m", messages: [{ role: "user", content: "[slow]" }], max_tokens: 15, stream: true });
    const body = r.text();
    await Bun.sleep(50);
    s.proc.kill("SIGTERM");
    expect((await body).trimEnd().endsWith("data: [DONE]")).toBe(true);
    expect(await s.proc.exited).toBe(0);
    removeDir(dir2);
  });

  test("each finished request is recorded in the metrics database", async () => {
    const dir2 = fakeModels("m");
    const db = join(dir2, "metrics.db");
    const s = await serve(["--model", join(dir2, "m"), "--db", db], ENV);
    const o = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "x", maxRetries: 0 });
    await o.chat.completions.create({ model: "m", messages: [{ role: "user", content: "rec" }], temperature: 0 });
    const a = new Anthropic({ baseURL: s.url, apiKey: "x", maxRetries: 0 });
    await a.messages.create({ model: "m", max_tokens: 3, ...GREEDY, messages: [{ role: "user", content: "rec" }] });
    expect(await s.stop()).toBe(0);
    const sqlite = new Database(db, { readonly: true });
    const rows = sqlite.query("SELECT api, model, generated_tokens, finish_reason, status FROM requests ORDER BY id").all();
    sqlite.close();
    expect(rows).toEqual([
      { api: "chat", model: "m", generated_tokens: "Echo: rec".length, finish_reason: "stop", status: 200 },
      { api: "messages", model: "m", generated_tokens: 3, finish_reason: "length", status: 200 },
    ]);
    removeDir(dir2);
  });

  test("cancelled and refused requests are recorded too: status 499 with what they generated, or their error status", async () => {
    const dir2 = fakeModels("m");
    const db = join(dir2, "metrics.db");
    const s = await serve(["--model", join(dir2, "m"), "--db", db], ENV);
    const running = async () => (await metric(s.url, "rmlx_requests_running")) === 0;
    // A stream whose client leaves after a few tokens.
    const ac = new AbortController();
    const r = await postJson(s.url, "/v1/chat/completions", { model: "m", messages: [{ role: "user", content: "[slow]" }], max_tokens: 400, stream: true }, ac.signal);
    const reader = r.body!.getReader();
    for (let i = 0; i < 4; i++) await reader.read();
    ac.abort();
    expect(await waitFor(running, 1000)).toBe(true);
    // A non-streaming client that leaves while its reply is generated.
    const ac2 = new AbortController();
    const pending = postJson(s.url, "/v1/messages", { model: "m", max_tokens: 400, messages: [{ role: "user", content: "[slow]" }] }, ac2.signal).catch(() => null);
    await Bun.sleep(100);
    ac2.abort();
    await pending;
    expect(await waitFor(running, 1000)).toBe(true);
    // A prompt over the context, refused by the engine.
    const long = await postJson(s.url, "/v1/completions", { model: "m", prompt: "x".repeat(600) });
    expect(long.status).toBe(400);
    expect(await s.stop()).toBe(0);
    const sqlite = new Database(db, { readonly: true });
    const rows = sqlite.query("SELECT api, prompt_tokens, generated_tokens, ttft_ms, finish_reason, status FROM requests ORDER BY id").all() as {
      api: string;
      prompt_tokens: number;
      generated_tokens: number;
      ttft_ms: number | null;
      finish_reason: string;
      status: number;
    }[];
    sqlite.close();
    expect(rows.map((row) => [row.api, row.finish_reason, row.status])).toEqual([
      ["chat", "cancelled", 499],
      ["messages", "cancelled", 499],
      ["completions", "error", 400],
    ]);
    for (const row of rows.slice(0, 2)) {
      expect(row.prompt_tokens).toBeGreaterThan(0);
      expect(row.generated_tokens).toBeGreaterThan(0);
      expect(row.ttft_ms).toBeGreaterThan(0);
    }
    removeDir(dir2);
  });
});

describe("llama-server habits", () => {
  test("the OpenAI routes answer without /v1; a single model answers requests naming no model or another one", async () => {
    const dir2 = fakeModels("m");
    const s = await serve(["--model", join(dir2, "m")], ENV);
    const at = (path: string, body: unknown) => postJson(s.url, path, body);
    try {
      const chat = await jsonOf(await at("/chat/completions", { messages: [{ role: "user", content: "hi" }], temperature: 0 }));
      expect(chat.model).toBe("m");
      expect(chat.choices[0].message.content).toBe("Echo: hi");
      const text = await jsonOf(await at("/completions", { prompt: "abc", max_tokens: 20, temperature: 0 }));
      expect(text.choices[0].text).toBe("Echo: abc");
      expect((await jsonOf(await fetch(`${s.url}/models`))).data.map((m: { id: string }) => m.id)).toEqual(["m"]);
      expect((await jsonOf(await fetch(`${s.url}/models/m`))).id).toBe("m");
      expect((await fetch(`${s.url}/models/nope`)).status).toBe(404);
      const emb = await at("/embeddings", { input: "x" });
      expect(emb.status).toBe(400);
      expect((await jsonOf(emb)).error.message).toContain("model 'm' does not produce embeddings");
      const tok = await jsonOf(await at("/tokenize", { prompt: "ab" }));
      expect(tok.tokens).toEqual([97, 98]);
      // Claude Code and other clients send names of their own.
      const o = new OpenAI({ baseURL: s.url, apiKey: "x", maxRetries: 0 });
      const r = await o.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "yo" }], temperature: 0 });
      expect(r.model).toBe("m");
      expect(r.choices[0]!.message.content).toBe("Echo: yo");
      const a = new Anthropic({ baseURL: s.url, apiKey: "x", maxRetries: 0 });
      const msg = await a.messages.create({ model: "claude-sonnet-4-5-20250929", max_tokens: 50, ...GREEDY, messages: [{ role: "user", content: "cc" }] });
      expect(msg.model).toBe("m");
      expect(msg.content).toEqual([{ type: "text", text: "Echo: cc" }] as never);
      expect((await a.messages.countTokens({ model: "claude-haiku-4-5", messages: [{ role: "user", content: "x" }] })).input_tokens).toBeGreaterThan(0);
      const noModel = await at("/v1/messages", { max_tokens: 50, temperature: 0, messages: [{ role: "user", content: "none" }] });
      expect((await jsonOf(noModel)).content[0].text).toBe("Echo: none");
    } finally {
      await s.stop();
      removeDir(dir2);
    }
  });

  test("with several models, a request must name one: none is a 400 naming them, an unknown one a 404", async () => {
    const r = await post("/v1/chat/completions", JSON.stringify({ messages: [{ role: "user", content: "x" }] }));
    expect(r.status).toBe(400);
    expect((await jsonOf(r)).error).toMatchObject({ param: "model", message: "model is required: this server serves tiny, other" });
    const a = await post("/v1/messages", JSON.stringify({ max_tokens: 5, messages: [{ role: "user", content: "x" }] }));
    expect(a.status).toBe(400);
    expect((await jsonOf(a)).error.type).toBe("invalid_request_error");
    expect((await post("/chat/completions", JSON.stringify({ model: "nope", messages: [{ role: "user", content: "x" }] }))).status).toBe(404);
  });

  test("--strict-model-names (or RMLX_STRICT_MODEL_NAMES=1) keeps to the served names", async () => {
    const dir2 = fakeModels("m");
    const flag = await serve(["--model", join(dir2, "m"), "--strict-model-names"], ENV);
    const env = await serve(["--model", join(dir2, "m")], { ...ENV, RMLX_STRICT_MODEL_NAMES: "1" });
    try {
      for (const s of [flag, env]) {
        const ask = (model?: string) =>
          postJson(s.url, "/v1/chat/completions", { model, messages: [{ role: "user", content: "x" }] });
        expect((await ask("m")).status).toBe(200);
        expect((await ask("gpt-4o")).status).toBe(404);
        expect((await ask()).status).toBe(400);
      }
    } finally {
      await flag.stop();
      await env.stop();
      removeDir(dir2);
    }
  });

  test("--alias names the models in --model order (or RMLX_ALIAS, comma-separated); misuse is refused at start", async () => {
    const dir2 = fakeModels("a", "b");
    const names = async (s: Served) => (await jsonOf(await fetch(`${s.url}/v1/models`))).data.map((m: { id: string }) => m.id).sort();
    const one = await serve(["--model", join(dir2, "a"), "--alias", "qwen3:8b", "--strict-model-names"], ENV);
    const two = await serve(["--model", join(dir2, "a"), "--model", join(dir2, "b"), "--alias", "first", "--alias", "second"], ENV);
    const partial = await serve(["--model", join(dir2, "a"), "--model", join(dir2, "b"), "--alias", "first"], ENV);
    const env = await serve(["--model", join(dir2, "a"), "--model", join(dir2, "b")], { ...ENV, RMLX_ALIAS: "x,y" });
    const flagWins = await serve(["--model", join(dir2, "a"), "--alias", "flag"], { ...ENV, RMLX_ALIAS: "env" });
    try {
      expect(await names(one)).toEqual(["qwen3:8b"]);
      const o = new OpenAI({ baseURL: `${one.url}/v1`, apiKey: "x", maxRetries: 0 });
      const r = await o.chat.completions.create({ model: "qwen3:8b", messages: [{ role: "user", content: "al" }], temperature: 0 });
      expect(r.model).toBe("qwen3:8b");
      expect(await rejection(o.chat.completions.create({ model: "a", messages: [{ role: "user", content: "x" }] }))).toBeInstanceOf(OpenAI.NotFoundError);
      expect(await names(two)).toEqual(["first", "second"]);
      expect(await names(partial)).toEqual(["b", "first"]);
      expect(await names(env)).toEqual(["x", "y"]);
      expect(await names(flagWins)).toEqual(["flag"]);
    } finally {
      for (const s of [one, two, partial, env, flagWins]) await s.stop();
    }
    const start = (...args: string[]) =>
      Bun.spawnSync([process.execPath, join(import.meta.dir, "../../src/cli/main.ts"), "serve", "--no-metrics", ...args], { env: { ...process.env, ...ENV } });
    const folder = start("--model", dir2, "--alias", "x");
    expect(folder.exitCode).toBe(2);
    expect(folder.stderr.toString()).toContain("is a folder of models, not one model directory");
    const many = start("--model", join(dir2, "a"), "--alias", "x", "--alias", "y");
    expect(many.exitCode).toBe(2);
    expect(many.stderr.toString()).toContain("2 aliases for 1 --model arguments");
    const clash = start("--model", join(dir2, "a"), "--model", join(dir2, "b"), "--alias", "b");
    expect(clash.exitCode).toBe(2);
    expect(clash.stderr.toString()).toContain("two models are named 'b'");
    removeDir(dir2);
  });

  test("/v1/completions with a list of prompts: n choices per prompt in order, usage summed, streaming too", async () => {
    const ask = { model: "tiny", prompt: ["abc", "de"], max_tokens: 50, temperature: 0, n: 2 };
    const r = await openai.completions.create(ask);
    expect(r.choices.map((c) => [c.index, c.text])).toEqual([
      [0, "Echo: abc"],
      [1, "Echo: abc"],
      [2, "Echo: de"],
      [3, "Echo: de"],
    ]);
    expect(r.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 2 * "Echo: abc".length + 2 * "Echo: de".length });
    const ids = await openai.completions.create({ model: "tiny", prompt: [[104, 105], [121, 111]], max_tokens: 50, temperature: 0, echo: true });
    expect(ids.choices.map((c) => c.text)).toEqual(["Echo: hi", "Echo: yo"]);
    const echoed = await openai.completions.create({ model: "tiny", prompt: ["a", "b"], max_tokens: 50, temperature: 0, echo: true });
    expect(echoed.choices.map((c) => c.text)).toEqual(["aEcho: a", "bEcho: b"]);
    const s = await openai.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } });
    const text = ["", "", "", ""];
    let usage;
    for await (const c of s) {
      for (const ch of c.choices) text[ch.index] += ch.text;
      if (c.usage) usage = c.usage;
    }
    expect(text).toEqual(["Echo: abc", "Echo: abc", "Echo: de", "Echo: de"]);
    expect(usage).toEqual(r.usage);
    const empty = await post("/v1/completions", JSON.stringify({ model: "tiny", prompt: [] }));
    expect(empty.status).toBe(400);
  });
});
