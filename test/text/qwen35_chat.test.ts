// Qwen3.5 / Qwen3.6 chat behaviour with a template in their format (see qwen35_template.ts): thinking on unless
// enable_thinking is false, output that starts inside <think>, tool calls in the XML form read while streaming and
// rendered back into the next prompt.
import { describe, expect, test } from "bun:test";
import type { ChatMessage, ToolSpec } from "../../src/engine/types.ts";
import { ChatTemplate } from "../../src/text/chat_template.ts";
import { type OutputDelta, chatOutputParserFor } from "../../src/text/output.ts";
import { THINK_TAGS, promptOpensReasoning, reasoningTagsFor } from "../../src/text/reasoning.ts";
import { toolParserFor } from "../../src/text/tool_parsers.ts";
import { QWEN35_TEST_TEMPLATE } from "./qwen35_template.ts";

const template = new ChatTemplate(QWEN35_TEST_TEMPLATE);
const source = template.source(true);

const WEATHER: ToolSpec = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather for a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, days: { type: "integer" }, hourly: { type: "boolean" }, units: { anyOf: [{ type: "string" }, { type: "null" }] } },
      required: ["city"],
    },
  },
};

const info = (prompt: string, tools: ToolSpec[] = [WEATHER]) => ({ modelType: "qwen3_5_moe", chatTemplate: source, prompt, tools });

function stream(text: string, inf: Parameters<typeof chatOutputParserFor>[0], pieces?: string[]): OutputDelta {
  const p = chatOutputParserFor(inf);
  const all: OutputDelta = { reasoning: "", content: "", toolCalls: [] };
  const add = (d: OutputDelta) => {
    all.reasoning += d.reasoning;
    all.content += d.content;
    all.toolCalls.push(...d.toolCalls);
    pieces?.push(d.content);
  };
  for (const ch of text) add(p.feed(ch));
  add(p.flush());
  return all;
}

const user: ChatMessage[] = [{ role: "user", content: "Weather in Paris?" }];

describe("Qwen3.5 chat template", () => {
  test("the parsers come from the template: XML tool calls, <think> reasoning", () => {
    expect(toolParserFor({ chatTemplate: source, modelType: "qwen3_5_moe" })).toBe("qwen3_coder");
    expect(reasoningTagsFor({ chatTemplate: source })).toBe(THINK_TAGS);
    // Without a template the model type decides: Qwen3.5 writes the XML form, Qwen3 the JSON one.
    expect(toolParserFor({ modelType: "qwen3_5_moe_text" })).toBe("qwen3_coder");
    expect(toolParserFor({ modelType: "qwen3_5" })).toBe("qwen3_coder");
    expect(toolParserFor({ modelType: "qwen3_next" })).toBe("hermes");
    expect(toolParserFor({ modelType: "qwen3" })).toBe("hermes");
  });

  test("thinking is on by default: the generation prompt opens <think>; enable_thinking false closes it", () => {
    const on = template.render({ messages: user });
    expect(on.endsWith("<|im_start|>assistant\n<think>\n")).toBe(true);
    expect(promptOpensReasoning(on)).toBe(true);
    expect(promptOpensReasoning(template.render({ messages: user, kwargs: { enable_thinking: true } }))).toBe(true);
    const off = template.render({ messages: user, kwargs: { enable_thinking: false } });
    expect(off.endsWith("<|im_start|>assistant\n<think>\n\n</think>\n\n")).toBe(true);
    expect(promptOpensReasoning(off)).toBe(false);
  });

  test("tools are declared in the system turn; OpenAI-shaped calls and results render in the XML form", () => {
    const messages: ChatMessage[] = [
      { role: "system", content: "Be brief." },
      ...user,
      {
        role: "assistant",
        content: null,
        reasoning_content: "I need the tool.",
        tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city": "Paris", "days": 2, "opts": {"a": [1]}}' } }],
      },
      { role: "tool", tool_call_id: "call_1", content: "sunny" },
      { role: "tool", tool_call_id: "call_1", content: "22C" },
    ];
    const text = template.render({ messages, tools: [WEATHER] });
    expect(text.startsWith("<|im_start|>system\n# Tools")).toBe(true);
    expect(text).toContain('"name": "get_weather"');
    expect(text).toContain("Be brief.<|im_end|>");
    expect(text).toContain(
      "<|im_start|>assistant\n<think>\nI need the tool.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n" +
        '<parameter=days>\n2\n</parameter>\n<parameter=opts>\n{"a": [1]}\n</parameter>\n</function>\n</tool_call><|im_end|>\n',
    );
    expect(text).toContain("<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n22C\n</tool_response><|im_end|>\n");
    expect(text.endsWith("<|im_start|>assistant\n<think>\n")).toBe(true);
  });
});

describe("Qwen3.5 output", () => {
  const prompt = template.render({ messages: user, tools: [WEATHER] });

  test("output starts inside the reasoning the prompt opened; the reply after </think> is content", () => {
    const out = stream("The user wants weather.\nNo tool needed.\n</think>\n\nIt is sunny.", info(prompt, []));
    expect(out).toEqual({ reasoning: "The user wants weather.\nNo tool needed.", content: "It is sunny.", toolCalls: [] });
    // Thinking off: the prompt closed the section, everything is content.
    const off = template.render({ messages: user, kwargs: { enable_thinking: false } });
    expect(stream("It is sunny.", info(off, []))).toEqual({ reasoning: "", content: "It is sunny.", toolCalls: [] });
  });

  test("a call after the reasoning, streamed one character at a time: typed arguments, no markup in any piece", () => {
    const text =
      "I should call get_weather.\n</think>\n\nChecking.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n" +
      "<parameter=days>\n3\n</parameter>\n<parameter=hourly>\nTrue\n</parameter>\n<parameter=units>\nNone\n</parameter>\n</function>\n</tool_call>";
    const pieces: string[] = [];
    const out = stream(text, info(prompt), pieces);
    expect(out.reasoning).toBe("I should call get_weather.");
    expect(out.content).toBe("Checking.");
    for (const p of pieces) expect(p).not.toContain("<");
    expect(out.toolCalls.length).toBe(1);
    expect(out.toolCalls[0]!.function.name).toBe("get_weather");
    expect(JSON.parse(out.toolCalls[0]!.function.arguments)).toEqual({ city: "Paris", days: 3, hourly: true, units: null });
  });

  test("a call the model only thinks about is not made", () => {
    const text = "Maybe <tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>?\n</think>\n\nNo.";
    const out = stream(text, info(prompt));
    expect(out.toolCalls).toEqual([]);
    expect(out.content).toBe("No.");
    expect(out.reasoning).toContain("<function=get_weather>");
  });

  test("calls parsed from the output render back into the next prompt as the model wrote them", () => {
    const calls =
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nSão Paulo\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>\n" +
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nLima\n</parameter>\n</function>\n</tool_call>";
    const out = stream(`Two cities.\n</think>\n\n${calls}`, info(prompt));
    expect(out.toolCalls.map((c) => JSON.parse(c.function.arguments))).toEqual([{ city: "São Paulo", days: 2 }, { city: "Lima" }]);
    const next = template.render({
      messages: [
        ...user,
        { role: "assistant", content: out.content, reasoning_content: out.reasoning, tool_calls: out.toolCalls },
        ...out.toolCalls.map((c) => ({ role: "tool", tool_call_id: c.id, content: "ok" })),
      ],
      tools: [WEATHER],
    });
    expect(next).toContain(`<|im_start|>assistant\n<think>\nTwo cities.\n</think>\n\n${calls}<|im_end|>\n`);
  });
});
