import { describe, expect, test } from "bun:test";
import { ConstraintVocab } from "../../src/engine/json_constraint.ts";
import { ForcedToolCall, toolCallSchema } from "../../src/engine/tool_constraint.ts";
import type { ToolSpec } from "../../src/engine/types.ts";

// A byte-level vocabulary: ids 0-255 are single bytes, then the tool-call tags and an end token.
const OPEN = 256;
const CLOSE = 257;
const EOS = 258;
const enc = new TextEncoder();
const pieces = [...Array.from({ length: 256 }, (_, b) => new Uint8Array([b])), enc.encode("<tool_call>"), enc.encode("</tool_call>"), new Uint8Array(0)];
const offsets = new Int32Array(pieces.length + 1);
pieces.forEach((p, i) => (offsets[i + 1] = offsets[i]! + p.length));
const blob = new Uint8Array(offsets[pieces.length]!);
pieces.forEach((p, i) => blob.set(p, offsets[i]!));
const vocab = new ConstraintVocab({ blob, offsets }, new Set([EOS]), [EOS]);

const TOOLS: ToolSpec[] = [
  { type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { enum: ["Paris", "Rome"] } }, required: ["city"] } } },
  { type: "function", function: { name: "get_time", parameters: { type: "object", properties: { utc: { type: "boolean" } }, required: ["utc"] } } },
];

/** Drives the processor with pseudo-random logits (a stand-in for any model) until it allows only the end. */
function run(seed: number, prefix: number[], suffix: number[], argsKey: "arguments" | "parameters"): string {
  const p = new ForcedToolCall(toolCallSchema(TOOLS, argsKey), vocab, prefix, suffix);
  let s = seed >>> 0;
  const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296);
  const bytes: number[] = [];
  for (let step = 0; step < 400; step++) {
    const logits = Float32Array.from({ length: EOS + 1 }, () => rand() * 4);
    p.apply(logits);
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    expect(p.accept(best)).toBe(true);
    if (best === EOS) return new TextDecoder().decode(Uint8Array.from(bytes));
    bytes.push(...pieces[best]!);
  }
  throw new Error("no end within 400 tokens");
}

describe("forced tool call", () => {
  test("Hermes format: tags forced around a JSON call to one of the tools", () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const text = run(seed, [OPEN, 10], [10, CLOSE], "arguments");
      const m = /^<tool_call>\n([\s\S]*)\n<\/tool_call>$/.exec(text);
      expect(m).not.toBeNull();
      const call = JSON.parse(m![1]!);
      expect(["get_weather", "get_time"]).toContain(call.name);
      if (call.name === "get_weather") expect(["Paris", "Rome"]).toContain(call.arguments.city);
      else expect(typeof call.arguments.utc).toBe("boolean");
    }
  });

  test("bare JSON format (Llama 3): the call alone, arguments under 'parameters'", () => {
    const call = JSON.parse(run(9, [], [], "parameters"));
    expect(Object.keys(call).sort()).toEqual(["name", "parameters"]);
  });

  test("a token off the forced path is refused", () => {
    const p = new ForcedToolCall(toolCallSchema(TOOLS, "arguments"), vocab, [OPEN, 10], [10, CLOSE]);
    const logits = new Float32Array(EOS + 1);
    p.apply(logits);
    expect([...logits].filter(Number.isFinite).length).toBe(1);
    expect(Number.isFinite(logits[OPEN]!)).toBe(true);
    expect(p.accept(65)).toBe(false);
  });
});
