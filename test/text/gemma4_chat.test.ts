// Gemma 4's chat conventions: turns, the thought channel, tool declarations, calls and results, rendered with a
// template in Gemma 4's format (gemma4_template.ts).
import { describe, expect, test } from "bun:test";
import { outputShaper } from "../../src/server/output.ts";
import { ChatTemplate } from "../../src/text/chat_template.ts";
import { chatOutputParserFor } from "../../src/text/output.ts";
import { GEMMA4_THOUGHT_TAGS, promptOpensReasoning } from "../../src/text/reasoning.ts";
import { toolParserFor } from "../../src/text/tool_parsers.ts";
import { GEMMA4_TEST_TEMPLATE as TEMPLATE } from "./gemma4_template.ts";


const template = new ChatTemplate(TEMPLATE, { bos_token: "<bos>" });
const TOOLS = [{ type: "function" as const, function: { name: "get_weather", description: "Weather now", parameters: { type: "object" } } }];

describe("Gemma 4 chat format", () => {
  test("turns, the empty thought channel when thinking is off, and <|think|> when it is on", () => {
    const messages = [
      { role: "system", content: " Be brief. " },
      { role: "user", content: "Hi" },
    ];
    expect(template.render({ messages })).toBe("<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>");
    const on = template.render({ messages, kwargs: { enable_thinking: true } });
    expect(on).toBe("<bos><|turn>system\n<|think|>Be brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n");
    // neither prompt leaves a thought channel open: output starts as content unless the model opens one
    expect(promptOpensReasoning(on, GEMMA4_THOUGHT_TAGS)).toBe(false);
    expect(promptOpensReasoning(template.render({ messages }), GEMMA4_THOUGHT_TAGS)).toBe(false);
    expect(promptOpensReasoning("<|turn>model\n<|channel>thought\n", GEMMA4_THOUGHT_TAGS)).toBe(true);
  });

  test("OpenAI tool messages become the calling turn's tool_responses, named after the call they answer", () => {
    const text = template.render({
      tools: TOOLS,
      messages: [
        { role: "user", content: "Paris and Rome?" },
        {
          role: "assistant",
          content: "",
          tool_calls: [
            { id: "a", type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } },
            { id: "b", type: "function", function: { name: "get_time", arguments: { city: "Rome", utc: true } } },
          ],
        },
        { role: "tool", tool_call_id: "b", content: "noon" },
        { role: "tool", tool_call_id: "a", content: '{"temperature": 18, "sky": "clear"}' },
      ],
    });
    expect(text).toBe(
      "<bos><|turn>system\n<|tool>declaration:get_weather{<|\"|>description<|\"|>:<|\"|>Weather now<|\"|>}<tool|><turn|>\n" +
        "<|turn>user\nParis and Rome?<turn|>\n" +
        '<|turn>model\n<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|><|tool_call>call:get_time{city:<|"|>Rome<|"|>,utc:true}<tool_call|>' +
        '<|tool_response>response:get_time{value:<|"|>noon<|"|>}<tool_response|>' +
        '<|tool_response>response:get_weather{sky:<|"|>clear<|"|>,temperature:18}<tool_response|>' +
        // no new model turn after the results: the model goes on in the turn that called
        "<|channel>thought\n<channel|>",
    );
  });

  test("a template that reads tool messages itself gets them as they are", () => {
    const own = new ChatTemplate("{%- for m in messages -%}{{ m['role'] }}:{{ m['tool_call_id'] }}:{{ m['tool_responses'] is defined }};{%- endfor -%}");
    const text = own.render({
      messages: [
        { role: "assistant", content: "", tool_calls: [{ id: "a", type: "function", function: { name: "f", arguments: "{}" } }] },
        { role: "tool", tool_call_id: "a", content: "x" },
      ],
      addGenerationPrompt: false,
    });
    expect(text).toBe("assistant::false;tool:a:false;");
  });

  test("the thought channel is reasoning, calls are tool calls, streamed in small pieces", () => {
    expect(toolParserFor({ modelType: "gemma4_text", chatTemplate: TEMPLATE })).toBe("gemma4");
    const out = '<|channel>thought\nThe user wants Paris.<channel|>Checking.<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>';
    const p = chatOutputParserFor({ modelType: "gemma4_text", chatTemplate: TEMPLATE, tools: TOOLS });
    const got = { reasoning: "", content: "", calls: [] as string[] };
    for (let i = 0; i < out.length; i += 3) {
      const d = p.feed(out.slice(i, i + 3));
      got.reasoning += d.reasoning;
      got.content += d.content;
      got.calls.push(...d.toolCalls.map((c) => `${c.function.name} ${c.function.arguments}`));
    }
    const end = p.flush();
    got.content += end.content;
    got.calls.push(...end.toolCalls.map((c) => `${c.function.name} ${c.function.arguments}`));
    expect(got).toEqual({ reasoning: "The user wants Paris.", content: "Checking.", calls: ['get_weather {"city":"Paris"}'] });
  });

  test("the server's shaper uses the model's own reasoning markers", () => {
    const info = { modelType: "gemma4_text", reasoning: true, reasoningTags: GEMMA4_THOUGHT_TAGS };
    const shaper = outputShaper({ info, startsInReasoning: false });
    const a = shaper.feed("<|channel>thought\nhmm<channel|>Yes.");
    const b = shaper.flush();
    expect({ reasoning: a.reasoning + b.reasoning, content: a.content + b.content }).toEqual({ reasoning: "hmm", content: "Yes." });
  });
});
