import { describe, expect, test, setDefaultTimeout } from "bun:test";
import type { ChatMessage, ToolSpec } from "../../src/engine/types.ts";
import { RmlxError } from "../../src/errors.ts";
import { ChatTemplate, applyChatTemplate } from "../../src/text/chat_template.ts";
import { toolInstructions } from "../../src/text/tool_prompt.ts";
import { loadTokenizer, tokenizerConfig, TOKENIZER_TIMEOUT_MS } from "./fixtures.ts";

setDefaultTimeout(TOKENIZER_TIMEOUT_MS);

// Expected prompts are written from the templates' documented turn structure:
// Qwen3 (ChatML): <|im_start|>{role}\n{content}<|im_end|>\n per turn; tools listed in the system turn inside
// <tools></tools>, one JSON object per line; assistant tool calls as <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>;
// tool results inside a user turn as \n<tool_response>\n...\n</tool_response>; with enable_thinking=false the
// generation prompt carries an empty <think>\n\n</think>\n\n block.

const qwen = ChatTemplate.fromConfig(tokenizerConfig("qwen3"))!;

const WEATHER: ToolSpec = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the weather",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};

describe("Qwen3 chat template", () => {
  const basic: ChatMessage[] = [
    { role: "system", content: "You are terse." },
    { role: "user", content: "Hi" },
  ];

  test("system + user with a generation prompt", () => {
    expect(qwen.render({ messages: basic })).toBe(
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    );
  });

  test("without the generation prompt", () => {
    expect(qwen.render({ messages: basic, addGenerationPrompt: false })).toBe(
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    );
  });

  test("enable_thinking false closes an empty think block; true leaves the prompt open", () => {
    const head = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    expect(qwen.render({ messages: basic, kwargs: { enable_thinking: false } })).toBe(head + "<think>\n\n</think>\n\n");
    expect(qwen.render({ messages: basic, kwargs: { enable_thinking: true } })).toBe(head);
  });

  test("earlier assistant turns lose their reasoning", () => {
    const messages: ChatMessage[] = [
      { role: "user", content: "2+2?" },
      { role: "assistant", content: "<think>\nadd them\n</think>\n\n4" },
      { role: "user", content: "and 3+3?" },
    ];
    expect(qwen.render({ messages })).toBe(
      "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nand 3+3?<|im_end|>\n<|im_start|>assistant\n",
    );
  });

  test("tools, an assistant tool call with JSON-string arguments and a tool result", () => {
    const messages: ChatMessage[] = [
      { role: "system", content: "Be useful." },
      { role: "user", content: "Weather in Paris?" },
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } }],
      },
      { role: "tool", tool_call_id: "call_1", content: "18C" },
    ];
    const toolLine =
      '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", ' +
      '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}';
    const expected =
      "<|im_start|>system\nBe useful.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" +
      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" +
      toolLine +
      "\n</tools>\n\nFor each function call, return a json object with function name and arguments within " +
      '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' +
      "<|im_start|>user\nWeather in Paris?<|im_end|>\n" +
      // The arguments string was parsed and re-serialised by tojson, hence the space after the colon.
      '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n' +
      "<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>\n" +
      "<|im_start|>assistant\n";
    expect(qwen.render({ messages, tools: [WEATHER] })).toBe(expected);
  });

  test("the rendered prompt tokenizes without extra special tokens", () => {
    const tok = loadTokenizer("qwen3");
    const { text, ids } = applyChatTemplate(tok, qwen, { messages: [{ role: "user", content: "Hi" }] });
    expect(text).toBe("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    // <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n
    expect(ids).toEqual([151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198]);
    expect(tok.idToToken(13048)).toBe("Hi");
    expect(tok.idToToken(77091)).toBe("assistant");
  });
});

describe("Gemma 3 chat template", () => {
  const cfg = tokenizerConfig("gemma3");
  const gemma = ChatTemplate.fromConfig(cfg)!;

  test("system folds into the first user turn; the template renders the BOS itself", () => {
    const messages: ChatMessage[] = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hello" },
      { role: "assistant", content: "Hi!" },
      { role: "user", content: "Bye" },
    ];
    const text = gemma.render({ messages });
    expect(text).toBe(
      "<bos><start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n<start_of_turn>model\nHi!<end_of_turn>\n" +
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n",
    );
    const tok = loadTokenizer("gemma3");
    const { ids } = applyChatTemplate(tok, gemma, { messages });
    expect(ids.filter((id) => id === tok.bosTokenId)).toHaveLength(1);
    expect(ids[0]).toBe(tok.bosTokenId!);
  });

  test("tools the template cannot render are folded into plain turns in the pythonic convention", () => {
    expect(gemma.supportsTools()).toBe(false);
    expect(qwen.supportsTools()).toBe(true);
    const messages: ChatMessage[] = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Weather in Oslo?" },
      { role: "assistant", content: null, tool_calls: [{ type: "function", function: { name: "get_weather", arguments: '{"city": "Oslo"}' } }] },
      { role: "tool", tool_call_id: "c1", content: "3C" },
    ];
    expect(gemma.render({ messages, tools: [WEATHER] })).toBe(
      "<bos><start_of_turn>user\nBe brief.\n\n" +
        toolInstructions([WEATHER]) +
        "\n\nWeather in Oslo?<end_of_turn>\n" +
        '<start_of_turn>model\n[get_weather(city="Oslo")]<end_of_turn>\n' +
        "<start_of_turn>user\nFunction result:\n3C<end_of_turn>\n<start_of_turn>model\n",
    );
    expect(toolInstructions([WEATHER])).toContain('"name": "get_weather"');
  });

  test("raise_exception becomes an invalid_argument error", () => {
    const bad: ChatMessage[] = [
      { role: "user", content: "a" },
      { role: "user", content: "b" },
    ];
    try {
      gemma.render({ messages: bad });
      throw new Error("expected a throw");
    } catch (e) {
      expect(e).toBeInstanceOf(RmlxError);
      expect((e as RmlxError).code).toBe("invalid_argument");
      expect((e as RmlxError).message).toContain("Conversation roles must alternate");
    }
  });
});

describe("template selection and helpers", () => {
  test("a list of named templates: default, and tool_use when tools are given", () => {
    const t = ChatTemplate.fromConfig({
      chat_template: [
        { name: "default", template: "D{{ messages[0].content }}" },
        { name: "tool_use", template: "T{{ tools[0].function.name }}" },
      ],
    })!;
    expect(t.render({ messages: [{ role: "user", content: "x" }] })).toBe("Dx");
    expect(t.render({ messages: [{ role: "user", content: "x" }], tools: [WEATHER] })).toBe("Tget_weather");
  });

  test("chat_template.jinja text wins over tokenizer_config", () => {
    const t = ChatTemplate.fromConfig({ chat_template: "config" }, "file")!;
    expect(t.render({ messages: [] })).toBe("file");
    expect(ChatTemplate.fromConfig({})).toBeUndefined();
  });

  test("tojson with indent, bos/eos variables, strftime_now and extra kwargs", () => {
    const t = ChatTemplate.fromConfig({
      bos_token: { content: "<s>" },
      eos_token: "</s>",
      chat_template:
        "{{ bos_token }}{{ tools[0].function.parameters | tojson(indent=2) }}|{{ strftime_now('%Y') | length }}|{{ mode }}{{ eos_token }}",
    })!;
    expect(t.render({ messages: [], tools: [WEATHER], kwargs: { mode: "m" } })).toBe(
      '<s>{\n  "type": "object",\n  "properties": {\n    "city": {\n      "type": "string"\n    }\n  },\n  "required": [\n    "city"\n  ]\n}|4|m</s>',
    );
  });

  test("tools and documents are none when absent, as transformers passes them", () => {
    const t = ChatTemplate.fromConfig({
      chat_template: "{% if tools is not none %}T{% endif %}{% if documents is none %}D{% endif %}{% if tools is defined %}d{% endif %}",
    })!;
    expect(t.render({ messages: [] })).toBe("Dd");
    expect(t.render({ messages: [], tools: [WEATHER] })).toBe("TDd");
  });

  test("a template that does not parse is a bad_model error", () => {
    expect(() => ChatTemplate.fromConfig({ chat_template: "{% if %}" })).toThrow(RmlxError);
  });
});
