// tool_choice "required" or a named tool on Gemma 4: the output is forced to be one call in Gemma 4's own syntax,
//   <|tool_call>call:NAME{key:value,...}<tool_call|>
// then the end. <|tool_call>, <tool_call|> and the string quote <|"|> are special tokens, chosen by id; the rest is
// a byte-level grammar over the vocabulary: a declared tool's name, its parameters as bare keys (each at most once,
// the required ones before "}"), and values by the parameter's schema: strings (an enum's values only) between
// quote tokens, numbers and booleans as JSON has them, and anything else as Gemma's nested values (objects with
// bare keys, lists, strings, numbers, true/false/null).
import { RmlxError } from "../errors.ts";
import type { ConstraintVocab } from "./json_constraint.ts";
import { canEnd, initialState, stepByte, type GrammarState } from "./json_grammar.ts";
import { compileSchema } from "./json_schema.ts";
import type { LogitsProcessor } from "./logits_processor.ts";
import type { ToolSpec } from "./types.ts";

/** The special tokens of the syntax. */
export interface Gemma4CallTokens {
  open: number;
  close: number;
  quote: number;
}

const OPEN = -1;
const CLOSE = -2;
const QUOTE = -3;
/** A byte 0-255, or one of the special tokens above. */
type Sym = number;

interface Tool {
  name: string;
  params: readonly string[] | null;
  required: readonly string[];
  props: Record<string, unknown>;
}

/** A nested value in Gemma's syntax; `stack` holds the open brackets. */
interface Nested {
  stack: string;
  sub: "value" | "firstValue" | "str" | "atom" | "key" | "firstKey" | "after" | "done";
  buf: string;
}

type Value =
  | { v: "json"; g: GrammarState }
  /** A string between quote tokens; `vals` limits it to an enum's values. */
  | { v: "str"; vals: readonly string[] | null; buf: string; phase: "open" | "in" | "closed" }
  /** `need`: the bracket an object- or list-typed parameter's value starts with. */
  | { v: "nested"; n: Nested; need?: "{" | "[" };

type State =
  | { k: "open" }
  | { k: "lit"; text: string; i: number }
  | { k: "name"; buf: string }
  | { k: "key"; tool: Tool; used: readonly string[]; buf: string; first: boolean }
  | { k: "value"; tool: Tool; used: readonly string[]; value: Value }
  | { k: "after"; tool: Tool; used: readonly string[] }
  | { k: "close" }
  | { k: "end" };

const NAME = /^[\w.-]+$/;
const KEY = /^\w+$/;
const ATOM = /^(-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null)$/;
/** Text that an atom may still become. */
const atomPrefix = (s: string) => /^-?(\d+(\.\d*)?([eE][-+]?\d*)?)?$/.test(s) || ["true", "false", "null"].some((w) => w.startsWith(s));

function tool(t: ToolSpec): Tool | null {
  const p = t.function.parameters;
  const props = p && typeof p.properties === "object" && p.properties !== null ? (p.properties as Record<string, unknown>) : null;
  const required = Array.isArray(p?.required) ? (p.required as unknown[]).filter((r): r is string => typeof r === "string") : [];
  if (!NAME.test(t.function.name) || !required.every((r) => KEY.test(r))) return null;
  return { name: t.function.name, params: props ? Object.keys(props).filter((k) => KEY.test(k)) : null, required, props: props ?? {} };
}

/** How a parameter's value starts, from its schema. */
function valueFor(t: Tool, key: string): Value {
  const s = t.props[key];
  const schema = s !== null && typeof s === "object" ? (s as Record<string, unknown>) : {};
  const strings = Array.isArray(schema.enum) && schema.enum.every((e) => typeof e === "string") ? (schema.enum as string[]) : null;
  if (strings) return { v: "str", vals: strings, buf: "", phase: "open" };
  if (schema.type === "string") return { v: "str", vals: null, buf: "", phase: "open" };
  if (schema.type === "number" || schema.type === "integer" || schema.type === "boolean") return { v: "json", g: initialState(compileSchema(schema)) };
  const need = schema.type === "object" ? "{" : schema.type === "array" ? "[" : undefined;
  return { v: "nested", n: { stack: "", sub: "value", buf: "" }, ...(need ? { need } : {}) };
}

const isKeyByte = (b: number) => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b === 0x5f;

function closed(n: Nested): Nested {
  return n.stack === "" ? { stack: "", sub: "done", buf: "" } : { ...n, sub: "after", buf: "" };
}

function nestedStep(n: Nested, s: Sym): Nested | null {
  const c = s >= 0 ? String.fromCharCode(s) : "";
  switch (n.sub) {
    case "value":
    case "firstValue":
      if (s === QUOTE) return { ...n, sub: "str" };
      if (c === "{") return { stack: n.stack + "{", sub: "firstKey", buf: "" };
      if (c === "[") return { stack: n.stack + "[", sub: "firstValue", buf: "" };
      if (c === "]" && n.sub === "firstValue") return closed({ ...n, stack: n.stack.slice(0, -1) });
      if (s >= 0 && /[-0-9tfn]/.test(c)) return { ...n, sub: "atom", buf: c };
      return null;
    case "str":
      return s === QUOTE ? closed(n) : s >= 0 ? n : null;
    case "atom":
      if (s >= 0 && atomPrefix(n.buf + c)) return { ...n, buf: n.buf + c };
      return ATOM.test(n.buf) ? nestedStep(closed(n), s) : null;
    case "firstKey":
      if (c === "}") return closed({ ...n, stack: n.stack.slice(0, -1) });
      return nestedStep({ ...n, sub: "key" }, s);
    case "key":
      if (s >= 0 && isKeyByte(s) && n.buf.length < 64) return { ...n, buf: n.buf + c };
      return c === ":" && n.buf.length > 0 ? { ...n, sub: "value", buf: "" } : null;
    case "after": {
      const top = n.stack[n.stack.length - 1];
      if (c === ",") return { ...n, sub: top === "{" ? "key" : "value", buf: "" };
      if ((c === "}" && top === "{") || (c === "]" && top === "[")) return closed({ ...n, stack: n.stack.slice(0, -1) });
      return null;
    }
    case "done":
      return null;
  }
}

function valueStep(v: Value, s: Sym): Value | null {
  switch (v.v) {
    case "json": {
      if (s < 0) return null;
      const g = stepByte(v.g, s);
      return g.length > 0 ? { v: "json", g } : null;
    }
    case "str": {
      if (v.phase === "open") return s === QUOTE ? { ...v, phase: "in" } : null;
      if (v.phase === "closed") return null;
      if (s === QUOTE) return v.vals === null || v.vals.includes(v.buf) ? { ...v, phase: "closed" } : null;
      if (s < 0) return null;
      const buf = v.buf + String.fromCharCode(s);
      return v.vals === null ? v : v.vals.some((e) => latin1(e).startsWith(buf)) ? { ...v, buf } : null;
    }
    case "nested": {
      if (v.need && s !== v.need.charCodeAt(0)) return null;
      const n = nestedStep(v.n, s);
      return n ? { v: "nested", n } : null;
    }
  }
}

function valueCanEnd(v: Value): boolean {
  if (v.v === "json") return canEnd(v.g);
  if (v.v === "str") return v.phase === "closed";
  return v.n.sub === "done" || (v.n.sub === "atom" && v.n.stack === "" && ATOM.test(v.n.buf));
}

/** UTF-8 bytes of a string as a string of byte-valued characters (what the byte steps build). */
function latin1(s: string): string {
  return String.fromCharCode(...new TextEncoder().encode(s));
}

function moreParams(t: Tool, used: readonly string[]): boolean {
  return t.params === null || t.params.some((p) => !used.includes(p));
}

function step(st: State, s: Sym, tools: readonly Tool[]): State | null {
  const c = s >= 0 ? String.fromCharCode(s) : "";
  switch (st.k) {
    case "open":
      return s === OPEN ? { k: "lit", text: "call:", i: 0 } : null;
    case "lit":
      if (c !== st.text[st.i]) return null;
      return st.i + 1 === st.text.length ? { k: "name", buf: "" } : { ...st, i: st.i + 1 };
    case "name": {
      if (c === "{") {
        const t = tools.find((x) => x.name === st.buf);
        return t ? { k: "key", tool: t, used: [], buf: "", first: true } : null;
      }
      const buf = st.buf + c;
      return s >= 0 && tools.some((x) => x.name.startsWith(buf)) ? { k: "name", buf } : null;
    }
    case "key": {
      const { tool: t, used } = st;
      if (c === ":") {
        const known = t.params === null ? st.buf.length > 0 : t.params.includes(st.buf);
        return known && !used.includes(st.buf) ? { k: "value", tool: t, used: [...used, st.buf], value: valueFor(t, st.buf) } : null;
      }
      if (c === "}" && st.first && st.buf === "") return t.required.length === 0 ? { k: "close" } : null;
      if (s < 0 || !isKeyByte(s)) return null;
      const buf = st.buf + c;
      const fits = t.params === null ? buf.length <= 64 : t.params.some((p) => p.startsWith(buf) && !used.includes(p));
      return fits ? { ...st, buf } : null;
    }
    case "value": {
      const value = valueStep(st.value, s);
      if (value) return { ...st, value };
      return valueCanEnd(st.value) ? step({ k: "after", tool: st.tool, used: st.used }, s, tools) : null;
    }
    case "after":
      if (c === ",") return moreParams(st.tool, st.used) ? { k: "key", tool: st.tool, used: st.used, buf: "", first: false } : null;
      if (c === "}") return st.tool.required.every((r) => st.used.includes(r)) ? { k: "close" } : null;
      return null;
    case "close":
      return s === CLOSE ? { k: "end" } : null;
    case "end":
      return null;
  }
}

/** Inside a string without an enum, where any bytes may follow. */
function inFreeString(st: State): boolean {
  if (st.k !== "value") return false;
  const v = st.value;
  return (v.v === "str" && v.phase === "in" && v.vals === null) || (v.v === "nested" && v.n.sub === "str");
}

export class ForcedGemma4Call implements LogitsProcessor {
  private state: State = { k: "open" };
  private readonly tools: Tool[];
  private readonly mask: Uint8Array;
  private readonly specials: readonly [number, Sym][];

  constructor(
    tools: readonly ToolSpec[],
    private readonly vocab: ConstraintVocab,
    ids: Gemma4CallTokens,
  ) {
    this.tools = tools.map(tool).filter((t): t is Tool => t !== null);
    if (this.tools.length === 0)
      throw new RmlxError("invalid_argument", "a required tool call needs a tool whose name and required parameters fit Gemma 4's call syntax");
    this.mask = new Uint8Array(vocab.size);
    this.specials = [
      [ids.open, OPEN],
      [ids.close, CLOSE],
      [ids.quote, QUOTE],
    ];
  }

  apply(logits: Float32Array): void {
    const mask = this.mask;
    const st = this.state;
    mask.fill(0);
    if (st.k === "end") for (const e of this.vocab.eos) mask[e] = 1;
    else if (inFreeString(st)) {
      // free text up to the closing quote: every token with bytes
      for (const id of this.vocab.all.ids) mask[id] = 1;
    } else this.walk(st);
    for (const [id, sym] of this.specials) if (st.k !== "end" && step(st, sym, this.tools)) mask[id] = 1;
    for (let i = 0; i < logits.length; i++) if (i >= mask.length || mask[i] === 0) logits[i] = -Infinity;
  }

  /** Marks every token whose bytes the grammar accepts from `start`. */
  private walk(start: State): void {
    this.vocab.all.walk(start, (st, b) => step(st, b, this.tools), this.vocab.bytes, this.mask);
  }

  accept(tokenId: number): boolean {
    if (this.vocab.eos.includes(tokenId)) return this.state.k === "end";
    const special = this.specials.find(([id]) => id === tokenId);
    let st: State | null = this.state;
    if (special) st = step(st, special[1], this.tools);
    else {
      if (this.vocab.special.has(tokenId)) return false;
      const { blob, offsets } = this.vocab.bytes;
      for (let k = offsets[tokenId]!; k < offsets[tokenId + 1]! && st; k++) st = step(st, blob[k]!, this.tools);
    }
    if (!st) return false;
    this.state = st;
    return true;
  }
}
