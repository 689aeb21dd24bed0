import { describe, expect, test } from "bun:test";
import { ConstraintVocab, JsonConstraint } from "../../src/engine/json_constraint.ts";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { mulberry32 } from "../rng.ts";
import { tokenizerDir } from "../text/fixtures.ts";

// A synthetic vocabulary: every printable ASCII byte, a few multi-byte UTF-8 pieces, and multi-character
// tokens like real BPE vocabularies have (some of which cross JSON structure boundaries).
const PIECES = [
  ...Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i)),
  "\n", "é", "日本", "{\"", "\":", "\": ", "\", \"", "\",", "\"}", "}}", "]}", "true", "false", "null", "123", "0.", "e-",
  "name", "age", "tags", " \"", "\"name\"", "\"age\": 4", "  ", "\n  ", "[\"", "\"]", ", ", "\\u00", "\\n", "xyz",
];
const EOS = PIECES.length;
const SPECIAL = EOS + 1;

function vocab(): ConstraintVocab {
  const enc = new TextEncoder();
  const parts = [...PIECES.map((p) => enc.encode(p)), enc.encode("<eos>"), enc.encode("<special>")];
  const offsets = new Int32Array(parts.length + 1);
  for (let i = 0; i < parts.length; i++) offsets[i + 1] = offsets[i]! + parts[i]!.length;
  const blob = new Uint8Array(offsets[parts.length]!);
  parts.forEach((p, i) => blob.set(p, offsets[i]!));
  return new ConstraintVocab({ blob, offsets }, new Set([EOS, SPECIAL]), [EOS]);
}
const V = vocab();

/** Samples uniformly among allowed tokens (biased towards ending once possible) until EOS. */
function sample(schema: unknown, seed: number, maxTokens = 400): string {
  const c = new JsonConstraint(schema, V);
  const rand = mulberry32(seed);
  const logits = new Float32Array(V.size);
  const dec = new TextDecoder();
  const bytes: number[] = [];
  for (let step = 0; step < maxTokens; step++) {
    logits.fill(0);
    c.apply(logits);
    const allowed = [...logits.keys()].filter((i) => logits[i] !== -Infinity);
    expect(allowed.length).toBeGreaterThan(0);
    expect(allowed).not.toContain(SPECIAL);
    // Past a few tokens, prefer closing: keeps random texts short.
    const closers = allowed.filter((i) => i === EOS || /^[\]}"]/.test(PIECES[i] ?? ""));
    const pool = step > 30 && closers.length > 0 && rand() < 0.7 ? closers : allowed;
    const tok = pool[Math.floor(rand() * pool.length)]!;
    expect(c.accept(tok)).toBe(true);
    if (tok === EOS) return dec.decode(new Uint8Array(bytes));
    bytes.push(...new TextEncoder().encode(PIECES[tok]!));
  }
  throw new Error(`no EOS within ${maxTokens} tokens: ${dec.decode(new Uint8Array(bytes))}`);
}

describe("JSON constrained decoding", () => {
  const person = {
    type: "object",
    properties: {
      name: { type: "string", maxLength: 12 },
      age: { type: "integer" },
      tags: { type: "array", items: { enum: ["a", "b", 3] }, minItems: 1, maxItems: 3 },
    },
    required: ["name", "age"],
    additionalProperties: false,
  };

  test("random walks under a schema always produce valid instances", () => {
    for (let seed = 1; seed <= 40; seed++) {
      const text = sample(person, seed);
      const v = JSON.parse(text);
      expect(typeof v.name).toBe("string");
      expect([...v.name].length).toBeLessThanOrEqual(12);
      expect(Number.isInteger(v.age)).toBe(true);
      for (const k of Object.keys(v)) expect(["name", "age", "tags"]).toContain(k);
      if (v.tags !== undefined) {
        expect(v.tags.length).toBeGreaterThanOrEqual(1);
        expect(v.tags.length).toBeLessThanOrEqual(3);
        for (const t of v.tags) expect(["a", "b", 3]).toContain(t);
      }
    }
  });

  test("json_object mode admits any object and nothing else at the top", () => {
    for (let seed = 1; seed <= 30; seed++) {
      const v = JSON.parse(sample({ type: "object" }, seed));
      expect(typeof v).toBe("object");
      expect(Array.isArray(v)).toBe(false);
    }
  });

  test("unions, $ref and nullable types", () => {
    const schema = {
      $defs: { point: { type: "object", properties: { x: { type: "number" } }, required: ["x"] } },
      anyOf: [{ $ref: "#/$defs/point" }, { type: ["boolean", "null"] }],
    };
    for (let seed = 1; seed <= 30; seed++) {
      const v = JSON.parse(sample(schema, seed));
      if (v !== null && typeof v === "object") expect(typeof v.x).toBe("number");
      else expect(v === null || typeof v === "boolean").toBe(true);
    }
  });

  test("EOS only once the value is complete; required keys gate the closing brace", () => {
    const c = new JsonConstraint(person, V);
    const logits = new Float32Array(V.size);
    const feed = (s: string) => {
      for (const ch of s) expect(c.accept(PIECES.indexOf(ch))).toBe(true);
    };
    feed('{"name":"x"');
    c.apply(logits);
    expect(logits[PIECES.indexOf("}")]).toBe(-Infinity);
    expect(logits[PIECES.indexOf(",")]).toBe(0);
    expect(logits[EOS]).toBe(-Infinity);
    feed(',"age":42');
    logits.fill(0);
    c.apply(logits);
    expect(logits[PIECES.indexOf("}")]).toBe(0);
    expect(logits[PIECES.indexOf(".")]).toBe(-Infinity); // integer
    expect(logits[PIECES.indexOf("7")]).toBe(0);
    feed("}");
    logits.fill(0);
    c.apply(logits);
    expect([...logits.keys()].filter((i) => logits[i] === 0)).toEqual([EOS]);
    expect(c.complete).toBe(true);
  });

  test("a top-level number can end at EOS; keys outside a closed schema are refused", () => {
    const n = new JsonConstraint({ type: "number" }, V);
    for (const ch of "-12.5e3") expect(n.accept(PIECES.indexOf(ch))).toBe(true);
    expect(n.complete).toBe(true);
    expect(n.accept(EOS)).toBe(true);
    const o = new JsonConstraint(person, V);
    expect(o.accept(PIECES.indexOf('{"'))).toBe(true);
    expect(o.accept(PIECES.indexOf("x"))).toBe(false);
  });

  test("schemas that cannot be enforced are refused clearly", () => {
    expect(() => new JsonConstraint({ type: "tuple" }, V)).toThrow("unknown type");
    expect(() => new JsonConstraint({ $ref: "#/nope" }, V)).toThrow("does not resolve");
    expect(() => new JsonConstraint({ type: "object", required: ["a"], additionalProperties: false }, V)).toThrow("required property");
  });
});

describe("UTF-8 inside strings", () => {
  // One token per byte, so that every byte sequence can be offered.
  const BYTE_EOS = 256;
  const bytesVocab = (() => {
    const offsets = Int32Array.from({ length: 258 }, (_, i) => Math.min(i, 256));
    const blob = Uint8Array.from({ length: 256 }, (_, b) => b);
    return new ConstraintVocab({ blob, offsets }, new Set([BYTE_EOS]), [BYTE_EOS]);
  })();
  /** Whether the bytes (after a leading quote) are accepted, and whether the value is then complete. */
  const run = (schema: unknown, text: string | number[]) => {
    const c = new JsonConstraint(schema, bytesVocab);
    const bytes = typeof text === "string" ? [...new TextEncoder().encode(text)] : text;
    const accepted = bytes.every((b) => c.accept(b));
    return { accepted, complete: accepted && c.complete };
  };
  const str = { type: "string" };
  const q = 0x22;

  test("well-formed sequences pass; stray, overlong, surrogate and out-of-range bytes do not", () => {
    expect(run(str, '"aé日😀"').complete).toBe(true);
    for (const bad of [
      [q, 0x80], // a continuation byte with no lead
      [q, 0xc0, 0x80], // overlong NUL
      [q, 0xc3, q], // a lead byte cut short by the closing quote
      [q, 0xe0, 0x80, 0x80], // overlong three-byte form
      [q, 0xed, 0xa0, 0x80], // a UTF-16 surrogate encoded in UTF-8
      [q, 0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
      [q, 0xf8],
      [q, 0xff],
    ]) {
      expect(run(str, bad).accepted).toBe(false);
    }
    // A token may end inside a character: the next one finishes it.
    expect(run(str, [q, 0xe6, 0x97]).accepted).toBe(true);
    expect(run(str, [q, 0xe6, 0x97, 0xa5, q]).complete).toBe(true);
  });

  test("\\u escapes: surrogates only in pairs", () => {
    expect(run(str, '"\\ud83d\\ude00"').complete).toBe(true);
    expect(run(str, '"\\u00e9\\u65e5"').complete).toBe(true);
    expect(run(str, '"\\ude00').accepted).toBe(false);
    expect(run(str, '"\\ud83d"').accepted).toBe(false);
    expect(run(str, '"\\ud83dx').accepted).toBe(false);
    expect(run(str, '"\\ud83d\\n').accepted).toBe(false);
    expect(run(str, '"\\ud83d\\u0041').accepted).toBe(false);
  });

  test("minLength and maxLength count code points", () => {
    const two = { type: "string", minLength: 2, maxLength: 2 };
    expect(run(two, '"日本"').complete).toBe(true);
    expect(run(two, '"😀😀"').complete).toBe(true);
    expect(run(two, '"\\ud83d\\ude00\\u00e9"').complete).toBe(true);
    expect(run(two, '"日本語').accepted).toBe(false);
    expect(run(two, '"日"').accepted).toBe(false);
    expect(run(two, '"ab\\').accepted).toBe(false);
    // Keys and enum literals are bytes too.
    expect(run({ enum: ["café", "naïve"] }, '"naïve"').complete).toBe(true);
    expect(run({ type: "object", properties: { "é": { type: "integer" } }, required: ["é"] }, '{"é":1}').complete).toBe(true);
    expect(run({ type: "object" }, [0x7b, q, 0xff]).accepted).toBe(false);
  });
});

describe("UTF-8 with a real tokenizer (Qwen3's byte-level BPE)", () => {
  const tok = Tokenizer.fromModelDir(tokenizerDir("qwen3"));
  const eos = tok.eosTokenIds;
  const vocab = new ConstraintVocab(tok.allTokenBytes(), tok.specialTokenIds, eos);
  const { blob, offsets } = tok.allTokenBytes();
  // Tokens with bytes past ASCII: pieces of characters among them, the ones that broke maxLength.
  const nonAscii = new Uint8Array(vocab.size);
  for (let i = 0; i < vocab.size; i++) for (let k = offsets[i]!; k < offsets[i + 1]!; k++) if (blob[k]! >= 0x80) nonAscii[i] = 1;

  /** Samples among allowed tokens, mostly non-ASCII ones while there are any, until an end token. */
  function sample(schema: unknown, seed: number): Uint8Array {
    const c = new JsonConstraint(schema, vocab);
    const rand = mulberry32(seed);
    const logits = new Float32Array(vocab.size);
    const out: number[] = [];
    for (let step = 0; step < 300; step++) {
      logits.fill(0);
      c.apply(logits);
      const allowed: number[] = [];
      for (let i = 0; i < logits.length; i++) if (logits[i] === 0) allowed.push(i);
      expect(allowed.length).toBeGreaterThan(0);
      const ends = allowed.filter((i) => eos.includes(i) || (offsets[i + 1]! - offsets[i]! <= 2 && blob[offsets[i]!] === 0x22));
      const wide = allowed.filter((i) => nonAscii[i]);
      const r = rand();
      const pool = step > 12 && ends.length > 0 && r < 0.3 ? ends : wide.length > 0 && r < 0.85 ? wide : allowed;
      const id = pool[Math.floor(rand() * pool.length)]!;
      expect(c.accept(id)).toBe(true);
      if (eos.includes(id)) return Uint8Array.from(out);
      for (let k = offsets[id]!; k < offsets[id + 1]!; k++) out.push(blob[k]!);
    }
    throw new Error("no end within 300 tokens");
  }

  test("strings are well-formed UTF-8 and within their lengths in code points", () => {
    const schema = {
      type: "object",
      properties: { short: { type: "string", maxLength: 5 }, pair: { type: "string", minLength: 2, maxLength: 3 }, free: { type: "string" } },
      required: ["short", "pair", "free"],
      additionalProperties: false,
    };
    const fatal = new TextDecoder("utf-8", { fatal: true });
    let wideChars = 0;
    for (let seed = 1; seed <= 12; seed++) {
      const v = JSON.parse(fatal.decode(sample(schema, seed)));
      expect([...v.short].length).toBeLessThanOrEqual(5);
      expect([...v.pair].length).toBeGreaterThanOrEqual(2);
      expect([...v.pair].length).toBeLessThanOrEqual(3);
      for (const s of [v.short, v.pair, v.free] as string[]) {
        expect(s).not.toContain("\uFFFD");
        wideChars += [...s].filter((ch) => ch.codePointAt(0)! >= 0x80).length;
      }
    }
    // The walk did go through characters of several bytes, split across tokens or not.
    expect(wideChars).toBeGreaterThan(20);
  }, 60_000);
});
