// tool_choice "required" or a named tool for models that write calls in the XML form (Qwen3-Coder, Qwen3.5/3.6):
//   <tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n ... </function>\n</tool_call>
// then the end. The whole call is a byte-level grammar over the vocabulary: a declared tool's name, its declared
// parameters (each at most once, the required ones before </function>), and each value by the parameter's schema:
// string parameters are free text up to "</parameter>" (an enum's values only, when it has one), the others a
// JSON text that follows the schema (what the templates write for them, and what the parser reads back).
// A little whitespace may come first, as models put it after </think>.
import { RmlxError } from "../errors.ts";
import type { ConstraintVocab } from "./json_constraint.ts";
import { canEnd, initialState, stepByte, utf8Step, type GrammarState } from "./json_grammar.ts";
import { compileSchema } from "./json_schema.ts";
import type { LogitsProcessor } from "./logits_processor.ts";
import type { ToolSpec } from "./types.ts";

const HEAD = "<tool_call>\n<function=";
const PARAM_OPEN = "<parameter=";
const PARAM_CLOSE = "</parameter>";
const TAIL = "</function>\n</tool_call>";
/** Whitespace bytes allowed before the call. */
const MAX_LEAD = 4;
const GT = 0x3e;
const NL = 0x0a;
const LT = 0x3c;

interface Tool {
  name: string;
  /** Parameter names, or null when the tool declares none (then any name is allowed). */
  params: readonly string[] | null;
  required: readonly string[];
  props: Record<string, unknown>;
}

type Value =
  /** Free text of at most `max` characters. */
  | { v: "text"; max: number }
  | { v: "enum"; vals: readonly string[] }
  | { v: "json"; g: GrammarState };

type State =
  | { k: "lead"; n: number }
  /** Fixed text, then `then`. */
  | { k: "lit"; text: string; i: number; then: State }
  | { k: "name"; buf: string }
  /** Inside the function: the next parameter or the end of the call; `buf` holds what of either is written. */
  | { k: "body"; tool: Tool; used: readonly string[]; buf: string }
  | { k: "key"; tool: Tool; used: readonly string[]; buf: string }
  /**
   * A value. Free text only: `m` counts the bytes of "</parameter>" matched at its end so far, `u8` is the UTF-8
   * state (0 between characters) and `len` the characters written.
   */
  | { k: "value"; tool: Tool; used: readonly string[]; value: Value; buf: string; m: number; u8: number; len: number }
  | { k: "end" };

// Names and keys end at ">" and are written on one line.
const NAME = /^[^>\s<]+$/;

function tool(t: ToolSpec): Tool | null {
  const p = t.function.parameters;
  const props = p && typeof p.properties === "object" && p.properties !== null ? (p.properties as Record<string, unknown>) : null;
  const required = Array.isArray(p?.required) ? (p.required as unknown[]).filter((r): r is string => typeof r === "string") : [];
  if (!NAME.test(t.function.name) || !required.every((r) => NAME.test(r))) return null;
  return { name: t.function.name, params: props ? Object.keys(props).filter((k) => NAME.test(k)) : null, required, props: props ?? {} };
}

function schemaTypes(s: Record<string, unknown>): string[] {
  if (typeof s.type === "string") return [s.type];
  if (Array.isArray(s.type)) return s.type.filter((t): t is string => typeof t === "string");
  return [];
}

/** How a parameter's value is written, from its schema. */
function valueFor(t: Tool, key: string): Value {
  const raw = t.props[key];
  const s = raw !== null && typeof raw === "object" ? (raw as Record<string, unknown>) : {};
  if (Array.isArray(s.enum) && s.enum.length > 0 && s.enum.every((e) => typeof e === "string")) return { v: "enum", vals: s.enum as string[] };
  if (schemaTypes(s).includes("string")) return { v: "text", max: typeof s.maxLength === "number" ? s.maxLength : Infinity };
  return { v: "json", g: initialState(compileSchema(s)) };
}

const startValue = (tool: Tool, used: readonly string[], key: string): State => ({
  k: "value",
  tool,
  used: [...used, key],
  value: valueFor(tool, key),
  buf: "",
  m: 0,
  u8: 0,
  len: 0,
});

/** After a value: the rest of its closing tag ("\n</parameter>\n", from `from`), then the function body again. */
const closeValue = (tool: Tool, used: readonly string[], from: number): State => ({
  k: "lit",
  text: "\n" + PARAM_CLOSE + "\n",
  i: from,
  then: { k: "body", tool, used, buf: "" },
});

function moreParams(tool: Tool, used: readonly string[]): boolean {
  return tool.params === null || tool.params.some((p) => !used.includes(p));
}

function step(st: State, b: number, tools: readonly Tool[]): State | null {
  const c = String.fromCharCode(b);
  switch (st.k) {
    case "lead":
      if ((b === 0x20 || b === NL) && st.n < MAX_LEAD) return { k: "lead", n: st.n + 1 };
      return step({ k: "lit", text: HEAD, i: 0, then: { k: "name", buf: "" } }, b, tools);
    case "lit": {
      if (st.text.charCodeAt(st.i) !== b) return null;
      return st.i + 1 === st.text.length ? st.then : { ...st, i: st.i + 1 };
    }
    case "name": {
      if (b === GT) {
        const t = tools.find((x) => x.name === st.buf);
        return t ? { k: "lit", text: "\n", i: 0, then: { k: "body", tool: t, used: [], buf: "" } } : null;
      }
      const buf = st.buf + c;
      return b < 0x80 && tools.some((t) => t.name.startsWith(buf)) ? { k: "name", buf } : null;
    }
    case "body": {
      const buf = st.buf + c;
      if (moreParams(st.tool, st.used) && PARAM_OPEN.startsWith(buf)) {
        return buf === PARAM_OPEN ? { k: "key", tool: st.tool, used: st.used, buf: "" } : { ...st, buf };
      }
      if (st.tool.required.every((r) => st.used.includes(r)) && TAIL.startsWith(buf)) {
        return buf === TAIL ? { k: "end" } : { ...st, buf };
      }
      return null;
    }
    case "key": {
      const { tool, used } = st;
      if (b === GT) {
        const known = tool.params === null ? st.buf.length > 0 : tool.params.includes(st.buf);
        return known && !used.includes(st.buf) ? { k: "lit", text: "\n", i: 0, then: startValue(tool, used, st.buf) } : null;
      }
      const buf = st.buf + c;
      if (b >= 0x80 || !NAME.test(buf)) return null;
      const fits = tool.params === null || tool.params.some((p) => p.startsWith(buf) && !used.includes(p));
      return fits ? { ...st, buf } : null;
    }
    case "value": {
      const { tool, used, value } = st;
      if (value.v === "text") {
        // Free text, well-formed UTF-8: "</parameter>" ends it (the newline the template writes before it is
        // layout, which the parser drops; "<" appears in it only at its start), and once the length bound is
        // reached only that may follow.
        const starts = (b & 0xc0) !== 0x80;
        const len = st.len + (starts ? 1 : 0);
        if (st.u8 === 0 && b === PARAM_CLOSE.charCodeAt(st.m)) {
          return st.m + 1 === PARAM_CLOSE.length ? closeValue(tool, used, PARAM_CLOSE.length + 1) : { ...st, m: st.m + 1, len };
        }
        const u8 = utf8Step(st.u8, b);
        // At the bound, one newline may still come: the layout before the closing tag.
        if (u8 < 0 || (starts && st.len >= value.max && !(b === NL && st.len === value.max))) return null;
        return { ...st, m: b === LT ? 1 : 0, u8, len };
      }
      if (value.v === "enum") {
        if (b === NL && value.vals.includes(st.buf)) return closeValue(tool, used, 1);
        const buf = st.buf + c;
        return value.vals.some((v) => v.startsWith(buf)) ? { ...st, buf } : null;
      }
      // A JSON value ends with the newline that starts its closing tag.
      if (b === NL && canEnd(value.g)) return closeValue(tool, used, 1);
      const g = stepByte(value.g, b);
      return g.length > 0 ? { ...st, value: { v: "json", g } } : null;
    }
    case "end":
      return null;
  }
}

export class ForcedXmlCall implements LogitsProcessor {
  private state: State = { k: "lead", n: 0 };
  private readonly tools: Tool[];
  private readonly mask: Uint8Array;
  /**
   * 1 for tokens of well-formed UTF-8 without a ">": from between two characters of unbounded free text they only
   * extend it (only a ">" can complete the closing tag). The others (`stepped`) are checked one by one.
   */
  private readonly plain: Uint8Array;
  private readonly stepped: Int32Array;
  /** Tokens with a newline byte: in a JSON value, the only ones whose meaning differs from the JSON grammar's. */
  private readonly withNl: Int32Array;

  constructor(
    tools: readonly ToolSpec[],
    private readonly vocab: ConstraintVocab,
  ) {
    this.tools = tools.map(tool).filter((t): t is Tool => t !== null);
    if (this.tools.length === 0) {
      throw new RmlxError("invalid_argument", "a required tool call needs a tool whose name and required parameters fit this model's call format");
    }
    this.mask = new Uint8Array(vocab.size);
    this.plain = new Uint8Array(vocab.size);
    const stepped: number[] = [];
    const nl: number[] = [];
    const { blob, offsets } = vocab.bytes;
    for (const id of this.vocab.all.ids) {
      const bytes = blob.subarray(offsets[id]!, offsets[id + 1]!);
      let u8 = 0;
      for (const b of bytes) if ((u8 = b === GT ? -1 : utf8Step(u8, b)) < 0) break;
      if (u8 === 0) this.plain[id] = 1;
      else stepped.push(id);
      if (bytes.includes(NL)) nl.push(id);
    }
    this.stepped = Int32Array.from(stepped);
    this.withNl = Int32Array.from(nl);
  }

  apply(logits: Float32Array): void {
    const mask = this.mask;
    const st = this.state;
    mask.fill(0);
    if (st.k === "end") for (const e of this.vocab.eos) mask[e] = 1;
    else if (st.k === "value" && st.value.v === "text") {
      if (st.u8 === 0 && st.value.max === Infinity) {
        mask.set(this.plain);
        for (const id of this.stepped) if (this.stepToken(st, id)) mask[id] = 1;
      } else for (const id of this.vocab.all.ids) if (this.stepToken(st, id)) mask[id] = 1;
    } else if (st.k === "value" && st.value.v === "json") {
      this.vocab.fillMask(st.value.g, mask);
      for (const e of this.vocab.eos) mask[e] = 0;
      this.check(st, this.withNl);
      if (canEnd(st.value.g)) this.walk(st);
    } else this.walk(st);
    for (let i = 0; i < logits.length; i++) if (i >= mask.length || mask[i] === 0) logits[i] = -Infinity;
  }

  /** Clears the allowed tokens among `ids` that the grammar does not accept from `st`. */
  private check(st: State, ids: Int32Array): void {
    for (const id of ids) if (this.mask[id] && !this.stepToken(st, id)) this.mask[id] = 0;
  }

  private stepToken(from: State, id: number): State | null {
    const { blob, offsets } = this.vocab.bytes;
    let st: State | null = from;
    for (let k = offsets[id]!; k < offsets[id + 1]! && st; k++) st = step(st, blob[k]!, this.tools);
    return st;
  }

  /** Marks every token whose bytes the grammar accepts from `start`. */
  private walk(start: State): void {
    this.vocab.all.walk(start, (st, b) => step(st, b, this.tools), this.vocab.bytes, this.mask);
  }

  accept(tokenId: number): boolean {
    if (this.vocab.eos.includes(tokenId)) return this.state.k === "end";
    if (this.vocab.special.has(tokenId)) return false;
    const st = this.stepToken(this.state, tokenId);
    if (!st) return false;
    this.state = st;
    return true;
  }
}
