// --prompt-overflow truncate: what a prompt too long for the context keeps, on the built-in model's tokenizer and
// chat template. Older turns go first, then tools, then the end of the system message; the newest user turn stays.
import { describe, expect, test } from "bun:test";
import { builtinModelDir } from "../../src/builtin/index.ts";
import { cutPromptMiddle, encodePrompt, encodeToFit, loadSession } from "../../src/engine/session.ts";
import type { ChatMessage, ToolSpec } from "../../src/engine/types.ts";

const s = loadSession(builtinModelDir());
const text = (ids: number[]) => s.tokenizer.decode(ids, { skipSpecialTokens: false });
const words = (n: number, w = "word") => Array.from({ length: n }, (_, i) => `${w}${i}`).join(" ");
const TOOL: ToolSpec = { type: "function", function: { name: "lookup", description: words(150, "tool"), parameters: { type: "object" } } };

describe("encodeToFit", () => {
  test("a prompt that fits is left alone", () => {
    const req = { messages: [{ role: "user", content: "What is curl?" }], maxTokens: 64 };
    const fit = encodeToFit(s, req, 1024);
    expect(fit.truncatedFrom).toBeUndefined();
    expect(fit.ids).toEqual(encodePrompt(s, req).ids);
  });

  test("older turns go first, whole, oldest first; the system message and the newest turn stay", () => {
    const messages: ChatMessage[] = [{ role: "system", content: "Be brief." }];
    for (let i = 0; i < 6; i++) messages.push({ role: "user", content: `question ${i} ${words(40)}` }, { role: "assistant", content: `answer ${i} ${words(40)}` });
    messages.push({ role: "user", content: "What is curl?" });
    const whole = encodePrompt(s, { messages }).ids.length;
    const fit = encodeToFit(s, { messages, maxTokens: 50 }, 400);
    expect(fit.truncatedFrom).toBe(whole);
    expect(fit.ids.length).toBeLessThanOrEqual(400 - 50);
    const kept = text(fit.ids);
    expect(kept.startsWith("<|im_start|>system\nBe brief.<|im_end|>")).toBe(true);
    expect(kept.endsWith("<|im_start|>user\nWhat is curl?<|im_end|>\n<|im_start|>assistant\n")).toBe(true);
    expect(kept).not.toContain("question 0 ");
    expect(kept).toContain("answer 5 ");
    // Whole turns: a user question never loses its answer while a later one stays.
    for (let i = 0; i < 6; i++) expect(kept.includes(`question ${i} `)).toBe(kept.includes(`answer ${i} `));
  });

  test("then the tools, then the end of the system message", () => {
    const system = `You are a helpful assistant. ${words(300, "rule")}`;
    const messages: ChatMessage[] = [{ role: "system", content: system }, { role: "user", content: "What is curl?" }];
    const withTools = { messages, tools: [TOOL], maxTokens: 1000 };
    const fit = encodeToFit(s, withTools, 400);
    // A quarter of the context is kept for the reply.
    expect(fit.ids.length).toBeLessThanOrEqual(300);
    expect(fit.ids.length).toBeGreaterThan(250);
    const kept = text(fit.ids);
    expect(kept).not.toContain("tool0");
    expect(kept.startsWith("<|im_start|>system\nYou are a helpful assistant. rule0 rule1")).toBe(true);
    expect(kept).not.toContain("rule299");
    expect(kept.endsWith("<|im_start|>user\nWhat is curl?<|im_end|>\n<|im_start|>assistant\n")).toBe(true);
    // Tools that fit once the system message is short enough are kept.
    const short = encodeToFit(s, { messages: [{ role: "user", content: words(100) }], tools: [TOOL], maxTokens: 10 }, 2000);
    expect(short.truncatedFrom).toBeUndefined();
  });

  test("a raw prompt, or a newest turn too long alone, loses its middle tokens", () => {
    const prompt = words(600);
    const ids = s.tokenizer.encode(prompt);
    const fit = encodeToFit(s, { prompt, maxTokens: 16 }, 256);
    expect(fit.truncatedFrom).toBe(ids.length);
    expect(fit.ids.length).toBe(256 - 16);
    expect(fit.ids.slice(0, 20)).toEqual(ids.slice(0, 20));
    expect(fit.ids.slice(-20)).toEqual(ids.slice(-20));
    const long = encodeToFit(s, { messages: [{ role: "user", content: words(600) }], maxTokens: 16 }, 256);
    expect(long.ids.length).toBe(240);
    expect(text(long.ids).endsWith("<|im_end|>\n<|im_start|>assistant\n")).toBe(true);
  });
});

test("cutPromptMiddle keeps a head of at most 256 tokens and the rest from the end", () => {
  const ids = Array.from({ length: 5000 }, (_, i) => i);
  const cut = cutPromptMiddle(ids, 2000);
  expect(cut.length).toBe(2000);
  expect(cut.slice(0, 256)).toEqual(ids.slice(0, 256));
  expect(cut.slice(256)).toEqual(ids.slice(5000 - 1744));
  expect(cutPromptMiddle(ids.slice(0, 100), 2000)).toHaveLength(100);
});
