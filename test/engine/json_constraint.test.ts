import { describe, expect, test } from "bun:test";
import { ConstraintVocab, JsonConstraint } from "../../src/engine/json_constraint.ts";
import { mulberry32 } from "../rng.ts";

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
