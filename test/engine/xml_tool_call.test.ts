import { describe, expect, test } from "bun:test";
import { ConstraintVocab } from "../../src/engine/json_constraint.ts";
import { AfterReasoning } from "../../src/engine/logits_processor.ts";
import { ForcedXmlCall } from "../../src/engine/xml_tool_call.ts";
import type { ToolSpec } from "../../src/engine/types.ts";
import { parseToolCalls } from "../../src/text/tool_parsers.ts";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { mulberry32 } from "../rng.ts";
import { tokenizerDir } from "../text/fixtures.ts";

// Bytes, then pieces a real vocabulary has (some spanning the call's parts), a reasoning close tag and an end token.
const enc = new TextEncoder();
const dec = new TextDecoder();
const extra = ["<tool_call>", "\n<function=", "get_weather", ">\n", "<parameter=", "city", "Paris", "\n</parameter>", "\n</parameter>\n", "</function>", "\n</tool_call>", "true", "12", "</think>"];
const pieces = [...Array.from({ length: 256 }, (_, b) => new Uint8Array([b])), ...extra.map((t) => enc.encode(t)), new Uint8Array(0)];
const EOS = pieces.length - 1;
const THINK_CLOSE = pieces.length - 2;
const offsets = new Int32Array(pieces.length + 1);
pieces.forEach((p, i) => (offsets[i + 1] = offsets[i]! + p.length));
const blob = new Uint8Array(offsets[pieces.length]!);
pieces.forEach((p, i) => blob.set(p, offsets[i]!));
const vocab = new ConstraintVocab({ blob, offsets }, new Set([EOS, THINK_CLOSE]), [EOS]);
const idOf = (text: string) => (text.length === 1 ? text.charCodeAt(0) : 256 + extra.indexOf(text));

const TOOLS: ToolSpec[] = [
  { type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { enum: ["Paris", "Rome"] }, days: { type: "integer" } }, required: ["city"] } } },
  { type: "function", function: { name: "get_time", parameters: { type: "object", properties: { utc: { type: "boolean" } }, required: ["utc"] } } },
  { type: "function", function: { name: "note", parameters: { type: "object", properties: { text: { type: "string" }, tags: { type: "array", items: { type: "string" } } } } } },
];

/** Random logits, with the closing-tag pieces favoured after a while so free text ends; the text up to the end. */
function drive(p: { apply(l: Float32Array): void; accept(t: number): boolean }, seed: number, maxSteps = 600): string {
  const rand = mulberry32(seed);
  const bytes: number[] = [];
  for (let step = 0; step < maxSteps; step++) {
    const logits = Float32Array.from({ length: EOS + 1 }, () => rand() * 4);
    if (step > 20) for (const t of ["\n</parameter>", '"', "]"]) logits[idOf(t)]! += 3;
    p.apply(logits);
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    expect(Number.isFinite(logits[best]!)).toBe(true);
    expect(p.accept(best)).toBe(true);
    if (best === EOS) return dec.decode(Uint8Array.from(bytes));
    bytes.push(...pieces[best]!);
  }
  throw new Error(`no end within ${maxSteps} tokens`);
}

/** Feeds a text byte by byte; the index of the first refused byte, or -1. */
function refusedAt(text: string, tools = TOOLS): number {
  const p = new ForcedXmlCall(tools, vocab);
  const bytes = enc.encode(text);
  for (let i = 0; i < bytes.length; i++) if (!p.accept(bytes[i]!)) return i;
  return -1;
}

describe("forced XML tool call (Qwen3-Coder, Qwen3.5)", () => {
  test("any model output becomes one call to a declared tool that the qwen3_coder parser reads back", () => {
    const names = new Set<string>();
    for (let seed = 1; seed <= 16; seed++) {
      const text = drive(new ForcedXmlCall(TOOLS, vocab), seed);
      expect(text).toMatch(/^\s*<tool_call>\n<function=[a-z_]+>\n[\s\S]*<\/function>\n<\/tool_call>$/);
      const { toolCalls, content } = parseToolCalls("qwen3_coder", text, { tools: TOOLS });
      expect(content).toBe("");
      expect(toolCalls.length).toBe(1);
      const name = toolCalls[0]!.function.name;
      const args = JSON.parse(toolCalls[0]!.function.arguments);
      names.add(name);
      if (name === "get_weather") {
        expect(["Paris", "Rome"]).toContain(args.city);
        if ("days" in args) expect(Number.isInteger(args.days)).toBe(true);
      } else if (name === "get_time") expect(typeof args.utc).toBe("boolean");
      else {
        expect(name).toBe("note");
        if ("text" in args) expect(typeof args.text).toBe("string");
        if ("tags" in args) expect(Array.isArray(args.tags)).toBe(true);
      }
    }
    expect(names.size).toBeGreaterThan(1);
  });

  test("names, parameter names, values, repeats and required parameters are checked", () => {
    const ok = "<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";
    expect(refusedAt(ok)).toBe(-1);
    expect(refusedAt("\n\n" + ok)).toBe(-1);
    expect(refusedAt("<tool_call>\n<function=get_wind>")).toBe(27);
    expect(refusedAt("<tool_call>\n<function=get_weather>\n</function>")).toBe(36);
    expect(refusedAt("<tool_call>\n<function=get_weather>\n<parameter=town>")).toBe(46);
    expect(refusedAt("<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo")).toBe(52);
    expect(refusedAt("<tool_call>\n<function=get_time>\n<parameter=utc>\nyes")).toBe(48);
    expect(refusedAt("<tool_call>\n<function=get_time>\n<parameter=utc>\nfalse\n</parameter>\n<parameter=utc>")).toBe(68);
    // Free text may hold newlines and tags other than its own closing one, which ends it with or without a newline.
    expect(refusedAt("<tool_call>\n<function=note>\n<parameter=text>\na <b>\n</para\nx\n</parameter>\n</function>\n</tool_call>")).toBe(-1);
    expect(refusedAt("<tool_call>\n<function=note>\n<parameter=text>\nx</parameter>\n</function>\n</tool_call>")).toBe(-1);
    expect(refusedAt("<tool_call>\n<function=note>\n<parameter=text>\nx</parameter>x")).toBe(58);
    expect(refusedAt("Sure: <tool_call>")).toBe(0);
    expect(refusedAt("     <tool_call>")).toBe(4);
  });

  test("the end token only after </tool_call>; pieces that span parts are allowed", () => {
    const p = new ForcedXmlCall(TOOLS, vocab);
    const allowed = () => {
      const logits = new Float32Array(EOS + 1);
      p.apply(logits);
      return new Set([...logits.keys()].filter((i) => Number.isFinite(logits[i]!)));
    };
    expect(allowed().has(idOf("<tool_call>"))).toBe(true);
    expect(allowed().has(EOS)).toBe(false);
    for (const piece of ["<tool_call>", "\n<function=", "get_weather", ">\n", "<parameter=", "city", ">\n"]) expect(p.accept(idOf(piece))).toBe(true);
    const atValue = allowed();
    expect(atValue.has(idOf("Paris"))).toBe(true);
    expect(atValue.has(idOf("true"))).toBe(false);
    expect(p.accept(idOf("Paris"))).toBe(true);
    expect(allowed().has(idOf("\n</parameter>\n"))).toBe(true);
    expect(p.accept(idOf("\n</parameter>\n"))).toBe(true);
    expect(allowed().has(idOf("</function>"))).toBe(true);
    expect(p.accept(idOf("</function>"))).toBe(true);
    expect(p.accept(idOf("\n</tool_call>"))).toBe(true);
    expect([...allowed()]).toEqual([EOS]);
  });

  test("a string parameter's maxLength bounds its text", () => {
    const short: ToolSpec[] = [{ type: "function", function: { name: "f", parameters: { type: "object", properties: { s: { type: "string", maxLength: 3 } }, required: ["s"] } } }];
    expect(refusedAt("<tool_call>\n<function=f>\n<parameter=s>\nabc\n</parameter>\n</function>\n</tool_call>", short)).toBe(-1);
    expect(refusedAt("<tool_call>\n<function=f>\n<parameter=s>\nabcd", short)).toBe(42);
    expect(refusedAt("<tool_call>\n<function=f>\n<parameter=s>\nabc\nd", short)).toBe(43);
    for (let seed = 1; seed <= 4; seed++) {
      const { toolCalls } = parseToolCalls("qwen3_coder", drive(new ForcedXmlCall(short, vocab), seed), { tools: short });
      expect([...JSON.parse(toolCalls[0]!.function.arguments).s].length).toBeLessThanOrEqual(3);
    }
  });
});

describe("a constraint after an open reasoning section", () => {
  test("reasoning is free (but may not end the reply); the call is forced once </think> is sampled", () => {
    const p = new AfterReasoning(new ForcedXmlCall(TOOLS, vocab), THINK_CLOSE, [EOS]);
    const logits = new Float32Array(EOS + 1);
    p.apply(logits);
    expect(logits[EOS]).toBe(-Infinity);
    expect(Number.isFinite(logits[idOf("x")]!)).toBe(true);
    for (const b of enc.encode("hmm, weather")) expect(p.accept(b)).toBe(true);
    expect(p.accept(THINK_CLOSE)).toBe(true);
    expect(p.accept(idOf("x"))).toBe(false);
    const q = new AfterReasoning(new ForcedXmlCall(TOOLS, vocab), THINK_CLOSE, [EOS]);
    for (const b of enc.encode("thinking")) q.accept(b);
    q.accept(THINK_CLOSE);
    const text = drive(q, 3);
    expect(parseToolCalls("qwen3_coder", text, { tools: TOOLS }).toolCalls.length).toBe(1);
  });
});

describe("forced XML call with a real tokenizer", () => {
  test("free-text values stay well-formed UTF-8 and parse back", () => {
    const tok = Tokenizer.fromModelDir(tokenizerDir("qwen3"));
    const eos = tok.eosTokenIds;
    const realVocab = new ConstraintVocab(tok.allTokenBytes(), tok.specialTokenIds, eos);
    const { blob: b, offsets: o } = tok.allTokenBytes();
    const NOTE: ToolSpec[] = [{ type: "function", function: { name: "note", parameters: { type: "object", properties: { title: { type: "string", maxLength: 6 } }, required: ["title"] } } }];
    const fatal = new TextDecoder("utf-8", { fatal: true });
    for (let seed = 1; seed <= 2; seed++) {
      const p = new ForcedXmlCall(NOTE, realVocab);
      const rand = mulberry32(seed);
      const out: number[] = [];
      for (let step = 0; step < 200; step++) {
        const logits = new Float32Array(realVocab.size);
        p.apply(logits);
        const allowed: number[] = [];
        for (let i = 0; i < logits.length; i++) if (logits[i] !== -Infinity) allowed.push(i);
        const wide = allowed.filter((i) => b[o[i]!]! >= 0x80);
        const pool = wide.length > 0 && rand() < 0.8 ? wide : allowed;
        const id = pool[Math.floor(rand() * pool.length)]!;
        expect(p.accept(id)).toBe(true);
        if (eos.includes(id)) break;
        for (let k = o[id]!; k < o[id + 1]!; k++) out.push(b[k]!);
      }
      const text = fatal.decode(Uint8Array.from(out));
      const { toolCalls } = parseToolCalls("qwen3_coder", text, { tools: NOTE });
      expect(toolCalls.length).toBe(1);
      expect([...JSON.parse(toolCalls[0]!.function.arguments).title].length).toBeLessThanOrEqual(6);
    }
  }, 60_000);
});
