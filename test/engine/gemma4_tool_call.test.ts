import { describe, expect, test } from "bun:test";
import { ForcedGemma4Call } from "../../src/engine/gemma4_tool_call.ts";
import { ConstraintVocab } from "../../src/engine/json_constraint.ts";
import type { ToolSpec } from "../../src/engine/types.ts";
import { parseToolCalls } from "../../src/text/tool_parsers.ts";

// A byte-level vocabulary: ids 0-255 are single bytes, a few multi-byte pieces, then Gemma 4's special tokens and
// an end token.
const enc = new TextEncoder();
const words = ["call:", "get_", "weather", "Paris", "Ro", "true", "query", "{", "}", ":", ","];
const SPECIALS = ["<|tool_call>", "<tool_call|>", '<|"|>', "<turn|>"];
const pieces = [...Array.from({ length: 256 }, (_, b) => new Uint8Array([b])), ...words.map((w) => enc.encode(w)), ...SPECIALS.map((s) => enc.encode(s))];
const OPEN = 256 + words.length;
const CLOSE = OPEN + 1;
const QUOTE = OPEN + 2;
const EOS = OPEN + 3;
const offsets = new Int32Array(pieces.length + 1);
pieces.forEach((p, i) => (offsets[i + 1] = offsets[i]! + p.length));
const blob = new Uint8Array(offsets[pieces.length]!);
pieces.forEach((p, i) => blob.set(p, offsets[i]!));
const vocab = new ConstraintVocab({ blob, offsets }, new Set([OPEN, CLOSE, QUOTE, EOS]), [EOS]);

const TOOLS: ToolSpec[] = [
  { type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { enum: ["Paris", "Rome"] } }, required: ["city"] } } },
  { type: "function", function: { name: "get_time", parameters: { type: "object", properties: { utc: { type: "boolean" } }, required: ["utc"] } } },
  {
    type: "function",
    function: {
      name: "search",
      parameters: { type: "object", properties: { query: { type: "string" }, limit: { type: "integer" }, filters: { type: "object" } }, required: ["query"] },
    },
  },
];

/** Drives the processor with pseudo-random logits (a stand-in for any model) until it allows only the end. */
function run(seed: number, tools = TOOLS): string {
  const p = new ForcedGemma4Call(tools, vocab, { open: OPEN, close: CLOSE, quote: QUOTE });
  let s = seed >>> 0;
  const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296;
  const out: number[] = [];
  for (let step = 0; step < 600; step++) {
    const logits = Float32Array.from({ length: EOS + 1 }, (_, i) => rand() * 4 + (i === QUOTE || i === 0x7d || i === 0x5d ? 0.4 * (step / 40) : 0));
    p.apply(logits);
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    if (!Number.isFinite(logits[best]!)) throw new Error(`dead end after ${JSON.stringify(new TextDecoder().decode(Uint8Array.from(out.flatMap((id) => [...pieces[id]!]))))} state ${JSON.stringify((p as unknown as { state: unknown }).state)}`);
    expect(p.accept(best)).toBe(true);
    if (best === EOS) return new TextDecoder().decode(Uint8Array.from(out.flatMap((id) => [...pieces[id]!])));
    out.push(best);
  }
  throw new Error("no end within 600 tokens");
}

describe("forced Gemma 4 tool call", () => {
  test("any model's output becomes one call in Gemma 4's syntax to a declared tool, with valid arguments", () => {
    const seen = new Set<string>();
    for (let seed = 1; seed <= 24; seed++) {
      const text = run(seed);
      expect(text.startsWith("<|tool_call>call:")).toBe(true);
      expect(text.endsWith("<tool_call|>")).toBe(true);
      const r = parseToolCalls("gemma4", text);
      expect({ text, content: r.content, calls: r.toolCalls.length }).toEqual({ text, content: "", calls: 1 });
      const call = r.toolCalls[0]!.function;
      const args = JSON.parse(call.arguments);
      seen.add(call.name);
      if (call.name === "get_weather") expect(["Paris", "Rome"]).toContain(args.city);
      else if (call.name === "get_time") expect(typeof args.utc).toBe("boolean");
      else {
        expect(call.name).toBe("search");
        expect(typeof args.query).toBe("string");
        if ("limit" in args) expect(Number.isInteger(args.limit)).toBe(true);
        if ("filters" in args) expect(typeof args.filters).toBe("object");
      }
    }
    expect(seen.size).toBeGreaterThan(1);
  });

  test("a named tool: only that one", () => {
    for (let seed = 30; seed < 36; seed++) {
      const r = parseToolCalls("gemma4", run(seed, [TOOLS[0]!]));
      expect(r.toolCalls.map((c) => c.function.name)).toEqual(["get_weather"]);
    }
  });

  test("tokens off the grammar are refused, specials only where the syntax has them", () => {
    const p = new ForcedGemma4Call(TOOLS, vocab, { open: OPEN, close: CLOSE, quote: QUOTE });
    const logits = new Float32Array(EOS + 1).fill(1);
    p.apply(logits);
    expect([...logits.keys()].filter((i) => logits[i] !== -Infinity)).toEqual([OPEN]);
    expect(p.accept(0x61)).toBe(false);
    expect(p.accept(OPEN)).toBe(true);
    const callWord = 256 + words.indexOf("call:");
    expect(p.accept(callWord)).toBe(true);
    expect(p.accept(256 + words.indexOf("get_"))).toBe(true);
    expect(p.accept(256 + words.indexOf("weather"))).toBe(true);
    expect(p.accept(0x7b)).toBe(true); // {
    expect(p.accept(0x7d)).toBe(false); // city is required
    for (const b of enc.encode("city:")) expect(p.accept(b)).toBe(true);
    expect(p.accept(0x50)).toBe(false); // a string starts with the quote token
    expect(p.accept(QUOTE)).toBe(true);
    expect(p.accept(256 + words.indexOf("Ro"))).toBe(true);
    expect(p.accept(QUOTE)).toBe(false); // "Ro" is not one of the enum's values
    for (const b of enc.encode("me")) expect(p.accept(b)).toBe(true);
    expect(p.accept(QUOTE)).toBe(true);
    expect(p.accept(EOS)).toBe(false);
    expect(p.accept(0x7d)).toBe(true);
    expect(p.accept(CLOSE)).toBe(true);
    expect(p.accept(EOS)).toBe(true);
  });
});
