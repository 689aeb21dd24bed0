import { describe, expect, test } from "bun:test";
import { GEMMA4_THOUGHT_TAGS, ReasoningParser, promptOpensReasoning, reasoningTagsFor } from "../../src/text/reasoning.ts";
import { ChatTemplate } from "../../src/text/chat_template.ts";
import { tokenizerConfig } from "./fixtures.ts";

function whole(text: string, startInReasoning = false) {
  const p = new ReasoningParser({ startInReasoning });
  const a = p.feed(text);
  const b = p.flush();
  return { reasoning: a.reasoning + b.reasoning, content: a.content + b.content };
}

function streamed(text: string, startInReasoning = false) {
  const p = new ReasoningParser({ startInReasoning });
  let reasoning = "";
  let content = "";
  const contentPieces: string[] = [];
  for (const ch of text) {
    const r = p.feed(ch);
    reasoning += r.reasoning;
    content += r.content;
    contentPieces.push(r.content);
  }
  const end = p.flush();
  return { reasoning: reasoning + end.reasoning, content: content + end.content, contentPieces };
}

function check(text: string, want: { reasoning: string; content: string }, startInReasoning = false) {
  expect(whole(text, startInReasoning)).toEqual(want);
  const s = streamed(text, startInReasoning);
  expect({ reasoning: s.reasoning, content: s.content }).toEqual(want);
  return s;
}

describe("ReasoningParser", () => {
  test("Qwen3 with thinking on: the output opens and closes the section", () => {
    const s = check("<think>\nThe user greets me.\nI greet back.\n</think>\n\nHello!", {
      reasoning: "The user greets me.\nI greet back.",
      content: "Hello!",
    });
    // No piece of a tag reaches the content while streaming.
    for (const p of s.contentPieces) expect(p).not.toContain("<");
  });

  test("the prompt opened the section: output starts inside it", () => {
    check("Let me think.\n\nDone.\n</think>\n\nAnswer: 4", { reasoning: "Let me think.\n\nDone.", content: "Answer: 4" }, true);
  });

  test("thinking off: an empty section in the prompt, plain content out", () => {
    check("Just the answer.", { reasoning: "", content: "Just the answer." });
  });

  test("an unfinished section (cut by max tokens) is all reasoning", () => {
    check("<think>\nstill going, maybe </thi", { reasoning: "still going, maybe </thi", content: "" });
  });

  test("angle brackets that are not tags stay where they are", () => {
    check("<think>a<b and </th not yet</think>x < y <thin", { reasoning: "a<b and </th not yet", content: "x < y <thin" });
  });
});

describe("Gemma 4 thought channel", () => {
  test("split streamed one character at a time", () => {
    const text = "<|channel>thought\nPlan: add.\n<channel|>The sum is 4.";
    const p = new ReasoningParser({ tags: GEMMA4_THOUGHT_TAGS });
    let reasoning = "";
    let content = "";
    for (const ch of text) {
      const r = p.feed(ch);
      reasoning += r.reasoning;
      content += r.content;
      expect(r.content).not.toContain("<");
    }
    const end = p.flush();
    expect({ reasoning: reasoning + end.reasoning, content: content + end.content }).toEqual({
      reasoning: "Plan: add.",
      content: "The sum is 4.",
    });
  });

  test("thinking off closes an empty channel in the prompt; the model type picks the tags", () => {
    expect(promptOpensReasoning("<|turn>model\n<|channel>thought\n<channel|>", GEMMA4_THOUGHT_TAGS)).toBe(false);
    expect(reasoningTagsFor({ modelType: "gemma4" })).toEqual(GEMMA4_THOUGHT_TAGS);
  });
});

describe("prompt and model detection", () => {
  const qwen = ChatTemplate.fromConfig(tokenizerConfig("qwen3"))!;
  const messages = [{ role: "user", content: "Hi" }];

  test("Qwen3's template leaves no open section, with thinking on or off", () => {
    expect(promptOpensReasoning(qwen.render({ messages, kwargs: { enable_thinking: true } }))).toBe(false);
    expect(promptOpensReasoning(qwen.render({ messages, kwargs: { enable_thinking: false } }))).toBe(false);
  });

  test("a prompt ending in <think> opens one", () => {
    expect(promptOpensReasoning("<|im_start|>assistant\n<think>\n")).toBe(true);
    expect(promptOpensReasoning("<think>a</think>\n<|im_start|>user")).toBe(false);
  });

  test("tags from the template or model type", () => {
    expect(reasoningTagsFor({ chatTemplate: qwen.source() })).toEqual({ open: "<think>", close: "</think>" });
    expect(reasoningTagsFor({ modelType: "qwen3_moe" })).toBeDefined();
    expect(reasoningTagsFor({ chatTemplate: tokenizerConfig("gemma3").chat_template as string, modelType: "gemma3" })).toBeUndefined();
  });
});
