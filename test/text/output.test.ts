import { describe, expect, test } from "bun:test";
import type { ToolSpec } from "../../src/engine/types.ts";
import { ChatTemplate } from "../../src/text/chat_template.ts";
import { type OutputDelta, chatOutputParserFor } from "../../src/text/output.ts";
import { tokenizerConfig } from "./fixtures.ts";

const WEATHER: ToolSpec = { type: "function", function: { name: "get_weather", parameters: { type: "object" } } };
const qwenTemplate = ChatTemplate.fromConfig(tokenizerConfig("qwen3"))!.source(true);

function streamAll(text: string, info: Parameters<typeof chatOutputParserFor>[0]): OutputDelta {
  const p = chatOutputParserFor(info);
  const all: OutputDelta = { reasoning: "", content: "", toolCalls: [] };
  const add = (d: OutputDelta) => {
    all.reasoning += d.reasoning;
    all.content += d.content;
    all.toolCalls.push(...d.toolCalls);
  };
  for (const ch of text) add(p.feed(ch));
  add(p.flush());
  return all;
}

describe("ChatOutputParser", () => {
  test("Qwen3: reasoning, then a tool call, streamed one character at a time", () => {
    const out = streamAll(
      '<think>\nI need the weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
      { modelType: "qwen3", chatTemplate: qwenTemplate, tools: [WEATHER] },
    );
    expect(out.reasoning).toBe("I need the weather.");
    expect(out.content).toBe("");
    expect(out.toolCalls.map((c) => [c.function.name, JSON.parse(c.function.arguments)])).toEqual([["get_weather", { city: "Oslo" }]]);
  });

  test("a call written inside the reasoning is not made", () => {
    const out = streamAll('<think>maybe <tool_call>{"name": "get_weather", "arguments": {}}</tool_call>?</think>No call.', {
      modelType: "qwen3",
      chatTemplate: qwenTemplate,
      tools: [WEATHER],
    });
    expect(out.toolCalls).toEqual([]);
    expect(out.content).toBe("No call.");
    expect(out.reasoning).toContain("<tool_call>");
  });

  test("without tools in the request, tool markup is ordinary content", () => {
    const text = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>';
    const out = streamAll(text, { modelType: "qwen3", chatTemplate: qwenTemplate });
    expect(out.content).toBe(text);
    expect(out.toolCalls).toEqual([]);
  });

  test("a prompt that opened <think> starts the output as reasoning", () => {
    const out = streamAll("plan\n</think>\n\nanswer", { modelType: "qwen3", prompt: "<|im_start|>assistant\n<think>\n" });
    expect(out).toEqual({ reasoning: "plan", content: "answer", toolCalls: [] });
  });

  test("a model without reasoning tags passes text through", () => {
    const out = streamAll("<think>not special here</think>", { modelType: "gemma3" });
    expect(out.content).toBe("<think>not special here</think>");
  });
});
