// Our chat rendering and tokenization against transformers' apply_chat_template and encode on the same Qwen3
// tokenizer files (fixture made by scripts/make_fixtures.py on a machine with transformers).
import { describe, expect, test, setDefaultTimeout } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ChatMessage, ToolSpec } from "../../src/engine/types.ts";
import { ChatTemplate, applyChatTemplate } from "../../src/text/chat_template.ts";
import { Detokenizer } from "../../src/text/detokenizer.ts";
import { loadTokenizer, tokenizerConfig, TOKENIZER_TIMEOUT_MS } from "./fixtures.ts";

setDefaultTimeout(TOKENIZER_TIMEOUT_MS);

const FIXTURE = join(import.meta.dir, "..", "fixtures", "text", "qwen3_chat.json");

interface Fixture {
  cases: { name: string; messages: ChatMessage[]; tools?: ToolSpec[]; kwargs: Record<string, unknown>; text: string; ids: number[] }[];
  strings: { text: string; ids: number[] }[];
}

describe.skipIf(!existsSync(FIXTURE))("Qwen3 against transformers", () => {
  const fx: Fixture = existsSync(FIXTURE) ? JSON.parse(readFileSync(FIXTURE, "utf8")) : { cases: [], strings: [] };
  const tok = loadTokenizer("qwen3");
  const template = ChatTemplate.fromConfig(tokenizerConfig("qwen3"))!;

  for (const c of fx.cases) {
    test(`chat template: ${c.name}`, () => {
      const { add_generation_prompt, ...kwargs } = c.kwargs;
      const { text, ids } = applyChatTemplate(tok, template, {
        messages: c.messages,
        tools: c.tools,
        addGenerationPrompt: add_generation_prompt === true,
        kwargs,
      });
      expect(text).toBe(c.text);
      expect(ids).toEqual(c.ids);
    });
  }

  test("tool-call arguments sent as JSON strings (as OpenAI clients do) render as transformers renders objects", () => {
    const withCalls = fx.cases.filter((c) => c.messages.some((m) => m.tool_calls));
    expect(withCalls.length).toBeGreaterThan(0);
    for (const c of withCalls) {
      const messages = c.messages.map((m) => ({
        ...m,
        tool_calls: m.tool_calls?.map((t) => ({ ...t, function: { ...t.function, arguments: JSON.stringify(t.function.arguments) } })),
      }));
      const { add_generation_prompt, ...kwargs } = c.kwargs;
      expect(template.render({ messages, tools: c.tools, addGenerationPrompt: add_generation_prompt === true, kwargs })).toBe(c.text);
    }
  });

  test("encode and decode of plain strings", () => {
    for (const s of fx.strings) {
      expect(tok.encode(s.text, { addSpecialTokens: false })).toEqual(s.ids);
      expect(tok.decode(s.ids)).toBe(s.text);
      const d = new Detokenizer(tok, { skipSpecialTokens: false });
      expect(s.ids.map((id) => d.push(id)).join("") + d.flush()).toBe(s.text);
    }
  });
});
