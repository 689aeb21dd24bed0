import { describe, expect, test } from "bun:test";
import type { ToolSpec } from "../../src/engine/types.ts";
import {
  type ToolCall,
  type ToolParserKind,
  type ToolParserOptions,
  createToolParser,
  parseToolCalls,
  toolParserFor,
} from "../../src/text/tool_parsers.ts";
import { parsePythonCalls } from "../../src/text/pylit.ts";
import { pythonicCalls } from "../../src/text/tool_prompt.ts";
import { tokenizerConfig } from "./fixtures.ts";

interface Expected {
  content: string;
  calls: { name: string; args: unknown }[];
}

const shape = (calls: ToolCall[]) =>
  calls.map((c) => {
    expect(c.type).toBe("function");
    expect(c.id).toMatch(/^call_[A-Za-z0-9]{24}$/);
    return { name: c.function.name, args: JSON.parse(c.function.arguments) };
  });

/** Checks the whole-text parse, then the same text streamed one character at a time. */
function check(kind: ToolParserKind, text: string, want: Expected, opts: ToolParserOptions = {}) {
  const whole = parseToolCalls(kind, text, opts);
  expect(whole.content).toBe(want.content);
  expect(shape(whole.toolCalls)).toEqual(want.calls);

  const p = createToolParser(kind, opts);
  const pieces: string[] = [];
  const calls: ToolCall[] = [];
  for (const ch of text) {
    const r = p.feed(ch);
    pieces.push(r.content);
    calls.push(...r.toolCalls);
  }
  const end = p.flush();
  pieces.push(end.content);
  calls.push(...end.toolCalls);
  expect(pieces.join("")).toBe(want.content);
  expect(shape(calls)).toEqual(want.calls);
  return pieces;
}

const tools = (...specs: [string, Record<string, string>][]): ToolSpec[] =>
  specs.map(([name, props]) => ({
    type: "function",
    function: {
      name,
      parameters: { type: "object", properties: Object.fromEntries(Object.entries(props).map(([k, t]) => [k, { type: t }])) },
    },
  }));

describe("hermes (Qwen) tool calls", () => {
  test("text then two calls; layout whitespace dropped; no markup in any streamed piece", () => {
    const text =
      'Let me check.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' +
      '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>';
    const pieces = check("hermes", text, {
      content: "Let me check.",
      calls: [
        { name: "get_weather", args: { city: "Paris" } },
        { name: "get_time", args: { tz: "CET" } },
      ],
    });
    for (const p of pieces) expect(p).not.toMatch(/[<>{}]/);
  });

  test("text with angle brackets but no call passes through unchanged", () => {
    const text = "a < b, and <tool is not <tool_call, really>\n";
    check("hermes", text, { content: text, calls: [] });
  });

  test("a call whose body is not a call stays visible as text", () => {
    check("hermes", "x <tool_call>{bad json}</tool_call> y", { content: "x<tool_call>{bad json}</tool_call> y", calls: [] });
  });

  test("a call left open at the end of the stream still counts", () => {
    check("hermes", '<tool_call>\n{"name": "f", "arguments": {}}\n', { content: "", calls: [{ name: "f", args: {} }] });
  });

  test("arguments given as a JSON string", () => {
    check("hermes", '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', {
      content: "",
      calls: [{ name: "f", args: { a: 1 } }],
    });
  });

  test("Qwen3-Coder XML body, values typed by the tool schema", () => {
    const text =
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=zip>\n75001\n</parameter>\n" +
      "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";
    check(
      "hermes",
      text,
      { content: "", calls: [{ name: "get_weather", args: { city: "Paris", zip: "75001", days: 3 } }] },
      { tools: tools(["get_weather", { city: "string", zip: "string", days: "integer" }]) },
    );
  });
});

describe("qwen3_coder (Qwen3-Coder, Qwen3.5) tool calls", () => {
  const weather = tools(["get_weather", { city: "string", days: "integer", hourly: "boolean", temp: "number", opts: "object", tags: "array" }]);

  test("two calls after text; values typed by the schema (Python-style booleans too); layout dropped", () => {
    const text =
      "Let me check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n<parameter=days>\n2\n</parameter>\n" +
      '<parameter=hourly>\nFalse\n</parameter>\n<parameter=temp>\n-1.5\n</parameter>\n<parameter=opts>\n{"a": [1, 2]}\n</parameter>\n' +
      '<parameter=tags>\n["x"]\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n</parameter>\n</function>\n</tool_call>';
    const pieces = check(
      "qwen3_coder",
      text,
      {
        content: "Let me check.",
        calls: [
          { name: "get_weather", args: { city: "New York", days: 2, hourly: false, temp: -1.5, opts: { a: [1, 2] }, tags: ["x"] } },
          { name: "get_weather", args: { city: "42" } },
        ],
      },
      { tools: weather },
    );
    for (const p of pieces) expect(p).not.toContain("<");
  });

  test("string values keep their inner newlines and spacing; only the layout newline each side goes", () => {
    check(
      "qwen3_coder",
      "<tool_call>\n<function=get_weather>\n<parameter=city>\n  two\n\nlines \n</parameter>\n</function>\n</tool_call>",
      { content: "", calls: [{ name: "get_weather", args: { city: "  two\n\nlines " } }] },
      { tools: weather },
    );
  });

  test("a <function=...> block without the <tool_call> wrapper, and a parameter left unclosed", () => {
    check(
      "qwen3_coder",
      "Sure.\n<function=get_weather>\n<parameter=city>\nOslo\n<parameter=days>\n1\n</function>",
      { content: "Sure.", calls: [{ name: "get_weather", args: { city: "Oslo", days: 1 } }] },
      { tools: weather },
    );
  });

  test("values that do not fit their type stay text; undeclared parameters are JSON when they parse", () => {
    check(
      "qwen3_coder",
      "<tool_call>\n<function=f>\n<parameter=n>\nmany\n</parameter>\n<parameter=x>\n[1]\n</parameter>\n<parameter=y>\nhi\n</parameter>\n</function>\n</tool_call>",
      { content: "", calls: [{ name: "f", args: { n: "many", x: [1], y: "hi" } }] },
      { tools: tools(["f", { n: "integer" }]) },
    );
  });

  test("a JSON body in the same tags is read as Hermes would; a body that is neither stays text", () => {
    check("qwen3_coder", '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', { content: "", calls: [{ name: "f", args: { a: 1 } }] });
    check("qwen3_coder", "<tool_call>\n<function=f>\nstray text\n</function>\n</tool_call>", {
      content: "<tool_call>\n<function=f>\nstray text\n</function>\n</tool_call>",
      calls: [],
    });
  });

  test("cut off by the length limit inside a call: no markup shown", () => {
    const p = createToolParser("qwen3_coder");
    const a = p.feed("Ok.\n<tool_call>\n<function=get_weather>\n<parameter=ci");
    const b = p.flush(true);
    expect(a.content + b.content).toBe("Ok.");
  });
});

describe("llama3_json tool calls", () => {
  test("a bare JSON call", () => {
    check("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}', {
      content: "",
      calls: [{ name: "get_weather", args: { city: "Paris" } }],
    });
  });

  test("<|python_tag|> and two calls separated by ';'", () => {
    check("llama3_json", '<|python_tag|>{"name": "f", "parameters": {"a": "}"}}; {"name": "g", "parameters": {}}', {
      content: "",
      calls: [
        { name: "f", args: { a: "}" } },
        { name: "g", args: {} },
      ],
    });
  });

  test("plain text and JSON that is not a call are content", () => {
    check("llama3_json", "Sure, here you go: {}", { content: "Sure, here you go: {}", calls: [] });
    check("llama3_json", '  {"answer": 42} is the JSON', { content: '  {"answer": 42} is the JSON', calls: [] });
  });

  test("a call to a tool the request did not offer is content", () => {
    const text = '{"name": "rm_rf", "parameters": {}}';
    check("llama3_json", text, { content: text, calls: [] }, { tools: tools(["get_weather", {}]) });
  });
});

describe("pythonic (Gemma 3) tool calls", () => {
  test("a call list with Python literals", () => {
    const text =
      '[get_weather(city="London", days=3), get_time(tz=\'UTC\', exact=True, opts={"a": [1, 2.5, -4e2]}, none=None, t=(1, 2))]';
    check("pythonic", text, {
      content: "",
      calls: [
        { name: "get_weather", args: { city: "London", days: 3 } },
        { name: "get_time", args: { tz: "UTC", exact: true, opts: { a: [1, 2.5, -400] }, none: null, t: [1, 2] } },
      ],
    });
  });

  test("a ```tool_code fence", () => {
    check("pythonic", '```tool_code\nprint(get_weather(city="Paris, \\"FR\\""))\n```', {
      content: "",
      calls: [{ name: "get_weather", args: { city: 'Paris, "FR"' } }],
    });
  });

  test("a JSON call object", () => {
    check("pythonic", '{"name": "f", "parameters": {"x": 1}}', { content: "", calls: [{ name: "f", args: { x: 1 } }] });
  });

  test("markdown links, code fences and prose are content", () => {
    check("pythonic", "[link](http://x) text", { content: "[link](http://x) text", calls: [] });
    check("pythonic", "[see (this)] ok", { content: "[see (this)] ok", calls: [] });
    check("pythonic", "```python\nprint(1)\n```", { content: "```python\nprint(1)\n```", calls: [] });
    check("pythonic", "Hello there", { content: "Hello there", calls: [] });
  });
});

describe("gemma4 tool calls", () => {
  test("native syntax with <|\"|> strings, bare and quoted keys, nested values", () => {
    const text =
      '<|tool_call>call:get_weather{city:<|"|>Paris, FR {x}<|"|>,days:3,metric:true,' +
      'opts:{<|"|>a b<|"|>:[1,<|"|>x<|"|>,-2.5]},none:null}<tool_call|>';
    check("gemma4", text, {
      content: "",
      calls: [{ name: "get_weather", args: { city: "Paris, FR {x}", days: 3, metric: true, opts: { "a b": [1, "x", -2.5] }, none: null } }],
    });
  });

  test("text, then two calls", () => {
    check("gemma4", "Checking both.\n<|tool_call>call:a{}<tool_call|><|tool_call>call:b{x:1}<tool_call|>", {
      content: "Checking both.",
      calls: [
        { name: "a", args: {} },
        { name: "b", args: { x: 1 } },
      ],
    });
  });

  test("a malformed call stays visible", () => {
    check("gemma4", "<|tool_call>call:a{x:<|\"|>open}<tool_call|>", { content: '<|tool_call>call:a{x:<|"|>open}<tool_call|>', calls: [] });
  });
});

describe("pythonic calls written for prompts", () => {
  test("pythonicCalls output reads back to the same arguments", () => {
    const args = { s: 'a "quoted" \\ line\nnext', n: -2.5, b: false, z: null, list: [1, "x", true], obj: { k: [null] } };
    const text = pythonicCalls([{ type: "function", function: { name: "f", arguments: JSON.stringify(args) } }]);
    expect(text.startsWith("[f(s=")).toBe(true);
    expect(parsePythonCalls(text)).toEqual([{ name: "f", args }]);
  });
});

describe("choosing the parser", () => {
  test("from real chat templates and model types", () => {
    expect(toolParserFor({ chatTemplate: tokenizerConfig("qwen3").chat_template as string, modelType: "qwen3" })).toBe("hermes");
    // Qwen3-Coder / Qwen3.5 templates teach the XML body inside the same tags.
    expect(toolParserFor({ chatTemplate: "<tool_call>\\n<function=example>\\n<parameter=x> {{ tools }}", modelType: "qwen3_moe" })).toBe("qwen3_coder");
    expect(toolParserFor({ chatTemplate: tokenizerConfig("gemma3").chat_template as string, modelType: "gemma3_text" })).toBe(
      "pythonic",
    );
    // Llama 3.0's template renders no tools: they are folded into the prompt in the pythonic convention.
    expect(toolParserFor({ chatTemplate: tokenizerConfig("llama3").chat_template as string, modelType: "llama" })).toBe(
      "pythonic",
    );
    expect(toolParserFor({ modelType: "llama" })).toBe("llama3_json");
    expect(toolParserFor({ chatTemplate: "{{ '<|python_tag|>' }}" })).toBe("llama3_json");
    expect(toolParserFor({ chatTemplate: "{{- '<|tool_call>call:' + function['name'] + '{' -}} tools" })).toBe("gemma4");
    expect(toolParserFor({ modelType: "gemma4_text" })).toBe("gemma4");
    expect(toolParserFor({ modelType: "mamba" })).toBeUndefined();
  });
});

describe("a reply cut off by the length limit", () => {
  /** Streams the text a character at a time, then flushes as truncated. */
  const cut = (kind: ToolParserKind, text: string) => {
    const p = createToolParser(kind);
    let content = "";
    const calls: ToolCall[] = [];
    for (const ch of text) {
      const r = p.feed(ch);
      content += r.content;
      calls.push(...r.toolCalls);
    }
    const end = p.flush(true);
    return { content: content + end.content, calls: shape([...calls, ...end.toolCalls]) };
  };
  const call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>';

  test("a call cut in its body leaves no markup; complete calls before it stay", () => {
    expect(cut("hermes", call.slice(0, 30))).toEqual({ content: "", calls: [] });
    expect(cut("hermes", `Checking.\n${call}\n${call.slice(0, 25)}`)).toEqual({ content: "Checking.", calls: [{ name: "get_weather", args: { city: "Paris" } }] });
    expect(cut("hermes", "Let me look.<tool_c")).toEqual({ content: "Let me look.", calls: [] });
    // Left open by a model that stopped on its own, the markup stays visible.
    expect(parseToolCalls("hermes", call.slice(0, 30)).content).toBe(call.slice(0, 30));
  });

  test("a call whose body is whole but closing tag cut short is a call", () => {
    expect(cut("hermes", call.slice(0, -4))).toEqual({ content: "", calls: [{ name: "get_weather", args: { city: "Paris" } }] });
  });

  test("conventions without tags: the held start of a call is dropped", () => {
    expect(cut("llama3_json", '{"name": "get_weather", "parameters": {"ci')).toEqual({ content: "", calls: [] });
    expect(cut("pythonic", '[get_weather(city="Par')).toEqual({ content: "", calls: [] });
    expect(cut("pythonic", "Plain text cut short")).toEqual({ content: "Plain text cut short", calls: [] });
  });
});
