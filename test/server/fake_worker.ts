// A stand-in engine speaking the worker protocol of src/engine/types.ts, for protocol tests of the HTTP server.
// One character is one token (its char code). What it "generates" is decided by the last user message:
//   contains "weather" with tools given,
//   or a tool call is required            -> a Hermes-style <tool_call> for get_weather (else the first tool)
//   contains "[prompt]"                   -> the rendered prompt
//   contains "[request]"                  -> what the server asked for: template kwargs, thinking budget, constraints
//   contains "[think]"                  -> a <think> section, then an answer
//   contains "[busy]"                   -> blocks its thread for 300 ms per token, 5 tokens ("busy ")
//   contains "[slow]"                   -> one token every 20 ms until max_tokens
//   otherwise, greedy                   -> "Echo: " + the message; sampled: letters from a PRNG seeded by `seed`
// A prompt containing "[cached]" reports its first half as read from the prefix cache.
// A load directory whose name contains "broken" fails to load; one containing "slowload" takes 500 ms. A
// generation_config.json in it gives the model's sampling defaults, as with the real engine; --ctx-size caps the
// context of 512.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { samplingDefaults } from "../../src/engine/session.ts";
import type { ChatMessage, EngineConfig, FromWorker, GenerateRequest, ToWorker } from "../../src/engine/types.ts";
import { mulberry32 } from "../rng.ts";

declare const self: Worker;

const CONTEXT = 512;
const context = () => Math.min(CONTEXT, config.contextLength ?? CONTEXT);
let config: EngineConfig = { kvMemoryBytes: 0, maxRunning: 32, maxWaiting: 256, prefillChunk: 2048, prefixCache: true };
const running = new Map<string, { tokens: number; cancelled: boolean }>();
const loaded = new Set<string>();

const post = (m: FromWorker) => self.postMessage(m);
// A sliding-window pool of its own holds at most WINDOW tokens of each sequence.
const WINDOW = 8;
const stats = () =>
  post({
    type: "stats",
    running: running.size,
    waiting: 0,
    kvUsed: [...running.values()].reduce((a, r) => a + r.tokens, 0),
    kvTotal: 100000,
    kvWindowUsed: [...running.values()].reduce((a, r) => a + Math.min(r.tokens, WINDOW), 0),
    kvWindowTotal: 4096,
    // 64 bytes per token of KV
    kvUsedBytes: 64 * [...running.values()].reduce((a, r) => a + r.tokens, 0),
    kvTotalBytes: 64 * 100000,
  });

function generationConfig(dir: string): Record<string, unknown> | undefined {
  const path = join(dir, "generation_config.json");
  return existsSync(path) ? JSON.parse(readFileSync(path, "utf8")) : undefined;
}

function render(messages: ChatMessage[], tools: unknown): string {
  return messages.map((m) => `<|${m.role}|>${m.content ?? ""}${m.tool_calls ? JSON.stringify(m.tool_calls) : ""}`).join("\n") +
    (tools ? `\n<|tools|>${JSON.stringify(tools)}` : "") + "\n<|assistant|>";
}


function script(req: GenerateRequest): { text: string; mode: "fast" | "slow" | "busy" } {
  const prompt = typeof req.prompt === "string" ? req.prompt : String.fromCharCode(...(req.prompt ?? []));
  const last = [...(req.messages ?? [])].reverse().find((m) => m.role === "user")?.content ?? prompt;
  if (req.tools?.length && (last.includes("weather") || req.requireToolCall)) {
    const name = req.tools.find((t) => t.function.name === "get_weather")?.function.name ?? req.tools[0]!.function.name;
    return { text: `<tool_call>\n{"name": "${name}", "arguments": {"city": "Paris"}}\n</tool_call>`, mode: "fast" };
  }
  if (last.includes("[prompt]")) return { text: render(req.messages ?? [], req.tools), mode: "fast" };
  if (last.includes("[request]")) {
    const { templateKwargs, thinkingBudget, requireToolCall, jsonSchema, maxTokens, sampling } = req;
    return { text: JSON.stringify({ templateKwargs, thinkingBudget, requireToolCall, jsonSchema, maxTokens, sampling }), mode: "fast" };
  }
  if (last.includes("[think]")) return { text: "<think>\nLet me think.\n</think>\n\nThe answer is 42.", mode: "fast" };
  if (last.includes("[busy]")) return { text: "busy ", mode: "busy" };
  if (last.includes("[slow]")) return { text: "x".repeat(req.maxTokens), mode: "slow" };
  if (req.sampling.temperature === 0) return { text: `Echo: ${last}`, mode: "fast" };
  const rand = req.sampling.seed !== undefined ? mulberry32(req.sampling.seed) : Math.random;
  let text = "";
  for (let i = 0; i < Math.min(req.maxTokens, 24); i++) text += String.fromCharCode(97 + Math.floor(rand() * 26));
  return { text, mode: "fast" };
}

async function generate(req: GenerateRequest) {
  if (!loaded.has(req.model)) return post({ type: "error", id: req.id, code: "not_found", message: `model ${req.model} is not loaded` });
  const prompt = req.messages ? render(req.messages, req.tools) : typeof req.prompt === "string" ? req.prompt : String.fromCharCode(...(req.prompt ?? []));
  if (prompt.length >= context()) {
    return post({ type: "error", id: req.id, code: "context_length", message: `prompt is ${prompt.length} tokens, the context is ${context()}` });
  }
  if (running.size >= config.maxRunning + config.maxWaiting) {
    return post({ type: "error", id: req.id, code: "overloaded", message: "too many requests queued" });
  }
  const state = { tokens: prompt.length, cancelled: false };
  running.set(req.id, state);
  const t0 = performance.now();
  const cachedTokens = prompt.includes("[cached]") ? Math.floor(prompt.length / 2) : 0;
  post({ type: "started", id: req.id, promptTokens: prompt.length, cachedTokens, startsInReasoning: false });
  stats();
  let { text, mode } = script(req);
  let finishReason: "stop" | "length" = "stop";
  let stoppedBy: string | undefined;
  let cut = text.length;
  for (const s of req.stop) {
    const at = text.indexOf(s);
    if (at >= 0 && at < cut) {
      cut = at;
      stoppedBy = s;
    }
  }
  text = text.slice(0, cut);
  const limit = Math.min(req.maxTokens, context() - prompt.length);
  if (text.length > limit) {
    text = text.slice(0, limit);
    finishReason = "length";
    stoppedBy = undefined;
  } else if (mode === "slow") finishReason = "length";
  let ttft = 0;
  for (let i = 0; i < text.length; i++) {
    if (mode === "slow") await Bun.sleep(20);
    else if (mode === "busy") {
      const until = performance.now() + 300;
      while (performance.now() < until);
      await Bun.sleep(0);
    } else if (i % 8 === 0) await Bun.sleep(0);
    if (state.cancelled) return;
    if (i === 0) ttft = performance.now() - t0;
    state.tokens++;
    const ch = text[i]!;
    post({
      type: "delta",
      id: req.id,
      text: ch,
      tokenIds: [ch.charCodeAt(0)],
      logprobs: req.sampling.logprobs
        ? [{ token: ch, logprob: -0.5, bytes: [ch.charCodeAt(0)], top: Array.from({ length: req.sampling.topLogprobs ?? 0 }, (_, k) => ({ token: k === 0 ? ch : "?", logprob: -0.5 - k, bytes: [] })) }]
        : undefined,
    });
  }
  running.delete(req.id);
  post({
    type: "done",
    id: req.id,
    finishReason,
    stoppedBy,
    usage: { promptTokens: prompt.length, completionTokens: text.length, cachedTokens },
    timing: { queuedMs: 0, ttftMs: ttft, decodeTps: 1000, promptTps: 1000 },
  });
  stats();
}

self.onmessage = async (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  switch (m.type) {
    case "configure":
      config = m.config;
      return;
    case "load":
      if (m.dir.includes("slowload")) await Bun.sleep(500);
      if (m.dir.includes("broken")) return post({ type: "load_error", model: m.model, code: "bad_model", message: `cannot load ${m.dir}` });
      loaded.add(m.model);
      return post({
        type: "loaded",
        model: m.model,
        contextLength: context(),
        info: { modelType: "fake", toolParser: "hermes", reasoning: true, sampling: samplingDefaults(generationConfig(m.dir)) },
      });
    case "unload":
      loaded.delete(m.model);
      return post({ type: "unloaded", model: m.model });
    case "generate":
      return generate(m.request);
    case "cancel": {
      const r = running.get(m.id);
      if (r) r.cancelled = true;
      running.delete(m.id);
      return stats();
    }
    case "tokenize": {
      const text = m.messages ? render(m.messages, m.tools) : (m.text ?? "");
      return post({ type: "tokenized", rid: m.rid, tokens: [...text].map((c) => c.charCodeAt(0)), text });
    }
    case "detokenize":
      return post({ type: "detokenized", rid: m.rid, text: String.fromCharCode(...m.tokens) });
    case "shutdown":
      process.exit(0);
  }
};
