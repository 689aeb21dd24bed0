import { describe, expect, test } from "bun:test";
import { ConstraintVocab } from "../../src/engine/json_constraint.ts";
import { ForcedPythonicCall, ForcedToolCall, toolCallSchema } from "../../src/engine/tool_constraint.ts";
import { parseToolCalls } from "../../src/text/tool_parsers.ts";
import type { ToolSpec } from "../../src/engine/types.ts";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { mulberry32 } from "../rng.ts";
import { tokenizerDir } from "../text/fixtures.ts";

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

describe("forced pythonic call (Gemma)", () => {
  // Bytes, then a few multi-byte pieces a real vocabulary has, some of which span the call's parts, and an end token.
  const extra = ["get_weather", "get", "_time", "(city", '="', '")', ")]", "Paris", "utc=", "True", "true", ", ", "[get"];
  const pyPieces = [...Array.from({ length: 256 }, (_, b) => new Uint8Array([b])), ...extra.map((t) => enc.encode(t)), new Uint8Array(0)];
  const PY_EOS = pyPieces.length - 1;
  const pyOffsets = new Int32Array(pyPieces.length + 1);
  pyPieces.forEach((p, i) => (pyOffsets[i + 1] = pyOffsets[i]! + p.length));
  const pyBlob = new Uint8Array(pyOffsets[pyPieces.length]!);
  pyPieces.forEach((p, i) => pyBlob.set(p, pyOffsets[i]!));
  const pyVocab = new ConstraintVocab({ blob: pyBlob, offsets: pyOffsets }, new Set([PY_EOS]), [PY_EOS]);
  const idOf = (text: string) => pyPieces.findIndex((p) => new TextDecoder().decode(p) === text && p.length === enc.encode(text).length);

  const PY_TOOLS: ToolSpec[] = [
    ...TOOLS,
    { type: "function", function: { name: "get_news", parameters: { type: "object", properties: { topic: { type: "string", maxLength: 12 }, count: { type: "integer" } } } } },
  ];

  function drive(seed: number): string {
    const p = new ForcedPythonicCall(PY_TOOLS, pyVocab);
    let s = seed >>> 0;
    const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296);
    const bytes: number[] = [];
    for (let step = 0; step < 400; step++) {
      const logits = Float32Array.from({ length: PY_EOS + 1 }, () => rand() * 4);
      p.apply(logits);
      let best = 0;
      for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
      expect(Number.isFinite(logits[best]!)).toBe(true);
      expect(p.accept(best)).toBe(true);
      if (best === PY_EOS) return new TextDecoder().decode(Uint8Array.from(bytes));
      bytes.push(...pyPieces[best]!);
    }
    throw new Error("no end within 400 tokens");
  }

  test("any model output becomes one call to a declared tool, with declared argument names and typed values", () => {
    const names = new Set<string>();
    for (let seed = 1; seed <= 12; seed++) {
      const text = drive(seed);
      expect(text).toMatch(/^\[[a-z_]+\(.*\)\]$/s);
      const { toolCalls, content } = parseToolCalls("pythonic", text, { tools: PY_TOOLS });
      expect(content).toBe("");
      expect(toolCalls.length).toBe(1);
      const name = toolCalls[0]!.function.name;
      const args = JSON.parse(toolCalls[0]!.function.arguments);
      names.add(name);
      if (name === "get_weather") {
        expect(Object.keys(args)).toEqual(["city"]);
        expect(["Paris", "Rome"]).toContain(args.city);
      } else if (name === "get_time") {
        expect(Object.keys(args)).toEqual(["utc"]);
        expect(typeof args.utc).toBe("boolean");
      } else {
        expect(name).toBe("get_news");
        for (const k of Object.keys(args)) expect(["topic", "count"]).toContain(k);
        if ("topic" in args) expect(args.topic.length).toBeLessThanOrEqual(12);
        if ("count" in args) expect(Number.isInteger(args.count)).toBe(true);
      }
    }
    expect(names.size).toBeGreaterThan(1);
  });

  /** Feeds a text byte by byte; the index of the first refused byte, or -1. */
  function refusedAt(text: string): number {
    const p = new ForcedPythonicCall(PY_TOOLS, pyVocab);
    const bytes = enc.encode(text);
    for (let i = 0; i < bytes.length; i++) if (!p.accept(bytes[i]!)) return i;
    return -1;
  }

  test("names, argument names, values and required arguments are checked", () => {
    expect(refusedAt('[get_weather(city="Rome")]')).toBe(-1);
    expect(refusedAt('[get_news(count=3, topic="ai")]')).toBe(-1);
    expect(refusedAt("[get_news()]")).toBe(-1);
    expect(refusedAt("[get_wind(")).toBe(6);
    expect(refusedAt("[get_weather)")).toBe(12);
    expect(refusedAt('[get_weather(town="Rome")]')).toBe(13);
    expect(refusedAt('[get_weather(city="Oslo")]')).toBe(19);
    expect(refusedAt("[get_weather()]")).toBe(13);
    expect(refusedAt("[get_time(utc=1)]")).toBe(14);
    expect(refusedAt("[get_news(count=1, count=2)]")).toBe(19);
    expect(refusedAt('[get_weather(city="Paris",')).toBe(25);
    expect(refusedAt("get_time(utc=true)")).toBe(0);
  });

  test("tools whose call could not be written in Python syntax are left out; none left is an error", () => {
    const odd: ToolSpec[] = [
      { type: "function", function: { name: "get-time", parameters: { type: "object", properties: {} } } },
      { type: "function", function: { name: "lookup", parameters: { type: "object", properties: { "user-id": { type: "string" } }, required: ["user-id"] } } },
      { type: "function", function: { name: "search", parameters: { type: "object", properties: { q: { type: "string" }, "x-y": { type: "string" } } } } },
    ];
    const p = new ForcedPythonicCall(odd, pyVocab);
    for (const b of enc.encode("[search(")) expect(p.accept(b)).toBe(true);
    expect(p.accept(0x78)).toBe(false);
    expect(p.accept(0x29)).toBe(true);
    expect(() => new ForcedPythonicCall(odd.slice(0, 2), pyVocab)).toThrow("identifiers");
  });

  test("the end token only after the closing bracket; pieces that span parts are allowed", () => {
    const p = new ForcedPythonicCall(PY_TOOLS, pyVocab);
    const allowed = () => {
      const logits = new Float32Array(PY_EOS + 1);
      p.apply(logits);
      return new Set([...logits.keys()].filter((i) => Number.isFinite(logits[i]!)));
    };
    expect([...allowed()].sort((a, b) => a - b)).toEqual([0x5b, idOf("[get")].sort((a, b) => a - b));
    for (const piece of ["[get", "_time", "(", "utc="]) expect(p.accept(idOf(piece) >= 0 && piece.length > 1 ? idOf(piece) : piece.charCodeAt(0))).toBe(true);
    const atValue = allowed();
    expect(atValue.has(idOf("true"))).toBe(true);
    expect(atValue.has(idOf("True"))).toBe(false);
    expect(atValue.has(PY_EOS)).toBe(false);
    expect(p.accept(idOf("true"))).toBe(true);
    const afterValue = allowed();
    expect(afterValue.has(idOf(")]"))).toBe(true);
    expect(afterValue.has(idOf(", "))).toBe(false);
    expect(p.accept(idOf(")]"))).toBe(true);
    expect([...allowed()]).toEqual([PY_EOS]);
    expect(p.accept(PY_EOS)).toBe(true);
  });
});

describe("forced calls with a real tokenizer: string arguments are well-formed UTF-8 within their lengths", () => {
  const tok = Tokenizer.fromModelDir(tokenizerDir("qwen3"));
  const eos = tok.eosTokenIds;
  const realVocab = new ConstraintVocab(tok.allTokenBytes(), tok.specialTokenIds, eos);
  const { blob: b, offsets: o } = tok.allTokenBytes();
  const nonAscii = new Uint8Array(realVocab.size);
  for (let i = 0; i < realVocab.size; i++) for (let k = o[i]!; k < o[i + 1]!; k++) if (b[k]! >= 0x80) nonAscii[i] = 1;
  const NOTE: ToolSpec[] = [
    { type: "function", function: { name: "note", parameters: { type: "object", properties: { title: { type: "string", maxLength: 6 } }, required: ["title"] } } },
  ];

  /** Prefers non-ASCII tokens (pieces of characters) whenever one is allowed, and closing quotes after a while. */
  function drive(p: ForcedToolCall | ForcedPythonicCall, seed: number): Uint8Array {
    const rand = mulberry32(seed);
    const out: number[] = [];
    for (let step = 0; step < 200; step++) {
      const logits = new Float32Array(realVocab.size);
      p.apply(logits);
      const allowed: number[] = [];
      for (let i = 0; i < logits.length; i++) if (logits[i] !== -Infinity) allowed.push(i);
      const wide = allowed.filter((i) => nonAscii[i]);
      const quote = allowed.filter((i) => o[i + 1]! - o[i]! === 1 && b[o[i]!] === 0x22);
      const r = rand();
      const pool = step > 10 && quote.length > 0 && r < 0.3 ? quote : wide.length > 0 && r < 0.9 ? wide : allowed;
      const id = pool[Math.floor(rand() * pool.length)]!;
      expect(p.accept(id)).toBe(true);
      if (eos.includes(id)) return Uint8Array.from(out);
      for (let k = o[id]!; k < o[id + 1]!; k++) out.push(b[k]!);
    }
    throw new Error("no end within 200 tokens");
  }

  const fatal = new TextDecoder("utf-8", { fatal: true });
  const ids = (text: string) => tok.encode(text, { addSpecialTokens: false });

  test("Hermes format", () => {
    for (let seed = 1; seed <= 8; seed++) {
      const p = new ForcedToolCall(toolCallSchema(NOTE, "arguments"), realVocab, ids("<tool_call>\n"), ids("\n</tool_call>"));
      const text = fatal.decode(drive(p, seed));
      const { toolCalls, content } = parseToolCalls("hermes", text, { tools: NOTE });
      expect(content).toBe("");
      const title: string = JSON.parse(toolCalls[0]!.function.arguments).title;
      expect([...title].length).toBeLessThanOrEqual(6);
      expect(title).not.toContain("\uFFFD");
    }
  }, 60_000);

  test("pythonic format", () => {
    for (let seed = 1; seed <= 8; seed++) {
      const text = fatal.decode(drive(new ForcedPythonicCall(NOTE, realVocab), seed));
      const { toolCalls } = parseToolCalls("pythonic", text, { tools: NOTE });
      const title: string = JSON.parse(toolCalls[0]!.function.arguments).title;
      expect([...title].length).toBeLessThanOrEqual(6);
    }
  }, 60_000);
});
