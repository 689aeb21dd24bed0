// Tool calls in a model's output, turned into OpenAI-shaped calls. One parser per convention:
//   hermes       Qwen 2.5/3, Hermes and most ChatML models: <tool_call>{"name": ..., "arguments": {...}}</tool_call>,
//                several allowed (an XML body, as below, is read too).
//   qwen3_coder  Qwen3-Coder and Qwen3.5/3.6: <tool_call>\n<function=name>\n<parameter=k>\nvalue\n</parameter>\n
//                </function>\n</tool_call>, values as text typed by the tool's schema; a <function=...> block
//                written without the <tool_call> wrapper counts too, and a JSON body is read as hermes would.
//   llama3_json  Llama 3.1+: the reply is {"name": ..., "parameters": {...}}, optionally after <|python_tag|>,
//                several separated by ";".
//   pythonic     Gemma 3's documented function-calling prompt: the reply is [f(a=1), g(b="x")], optionally in a
//                ```tool_code fence; a {"name": ..., "parameters": ...} reply, the other common Gemma prompt, too.
//   gemma4       Gemma 4's native tokens: <|tool_call>call:name{key:<|"|>text<|"|>,n:1}<tool_call|>, several allowed.
// Every parser streams: feed() returns the text that is safe to show and the calls completed so far; markup
// (or text that may still turn into markup) is held back, so none of it reaches the content.

import type { ToolSpec } from "./chat_types.ts";
import { findFirst, partialSuffixLength } from "./holdback.ts";
import { parseGemma4Call } from "./gemma4_args.ts";
import { parsePythonCalls } from "./pylit.ts";

export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export interface ToolParseResult {
  content: string;
  toolCalls: ToolCall[];
}

export type ToolParserKind = "hermes" | "qwen3_coder" | "llama3_json" | "pythonic" | "gemma4";

export const QWEN_CALL_OPEN = "<tool_call>";
export const QWEN_CALL_CLOSE = "</tool_call>";
export const XML_FUNCTION_OPEN = "<function=";
export const XML_FUNCTION_CLOSE = "</function>";

export const GEMMA4_CALL_OPEN = "<|tool_call>";
export const GEMMA4_CALL_CLOSE = "<tool_call|>";
/** Gemma 4's string quote, a token of its own. */
export const GEMMA4_QUOTE = '<|"|>';

/**
 * Markers the parsers read that some tokenizers mark as special tokens (Gemma 4's): a detokenizer that drops
 * special tokens must keep these, or the calls and reasoning they delimit could not be found.
 */
export const TOOL_MARKERS = [GEMMA4_CALL_OPEN, GEMMA4_CALL_CLOSE, GEMMA4_QUOTE];

export interface ToolCallParser {
  feed(delta: string): ToolParseResult;
  /**
   * The end of the stream: releases held text, or completes a call the model did not close. When the length limit
   * cut the reply (`truncated`), markup that did not become a call is dropped rather than shown as text.
   */
  flush(truncated?: boolean): ToolParseResult;
}

export interface ToolParserOptions {
  /** The request's tools: calls to other names are left as text (for conventions without markup), and
   * parameter types guide the conversion of XML-style parameter values. */
  tools?: ToolSpec[];
}

const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

function newToolCallId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  let s = "call_";
  for (const b of bytes) s += ID_ALPHABET[b % ID_ALPHABET.length];
  return s;
}

function makeCall(name: string, args: Record<string, unknown>): ToolCall {
  return { id: newToolCallId(), type: "function", function: { name, arguments: JSON.stringify(args) } };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** {"name", "arguments"|"parameters"} -> a call; anything else -> undefined. */
function jsonCall(v: unknown): ToolCall | undefined {
  if (!isObject(v) || typeof v.name !== "string" || v.name.length === 0) return undefined;
  const args = v.arguments ?? v.parameters ?? {};
  let parsed: unknown = args;
  if (typeof args === "string") {
    try {
      parsed = JSON.parse(args);
    } catch {
      return undefined;
    }
  }
  return isObject(parsed) ? makeCall(v.name, parsed) : undefined;
}

/** The JSON-schema types a tool declares for one of its parameters (several for `type: [..]` or anyOf). */
function toolParamTypes(tools: ToolSpec[] | undefined, fn: string, param: string): string[] {
  const spec = tools?.find((t) => t.function?.name === fn)?.function.parameters;
  const props = isObject(spec) && isObject(spec.properties) ? spec.properties : undefined;
  const p = props?.[param];
  if (!isObject(p)) return [];
  const types: string[] = [];
  const add = (s: unknown) => {
    if (!isObject(s)) return;
    if (typeof s.type === "string") types.push(s.type);
    else if (Array.isArray(s.type)) for (const t of s.type) if (typeof t === "string") types.push(t);
    if (Array.isArray(s.enum) && s.type === undefined) {
      for (const e of s.enum) types.push(e === null ? "null" : typeof e === "string" ? "string" : typeof e === "boolean" ? "boolean" : "number");
    }
    for (const k of ["anyOf", "oneOf"]) if (Array.isArray(s[k])) for (const x of s[k] as unknown[]) add(x);
  };
  add(p);
  return types;
}

const jsonOr = (raw: string): unknown => {
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
};

/**
 * One XML-style parameter value as the tool's schema types it. The templates write strings as they are and
 * objects and lists as JSON, but other values through Jinja's `string` filter, which in Python gives True, False
 * and None: those are read too. A value that fits none of its declared types stays text.
 */
function xmlValue(raw: string, types: string[]): unknown {
  const t = raw.trim();
  const want = (k: string) => types.length === 0 || types.includes(k);
  if (types.includes("string") && !(types.includes("null") && /^(null|None)$/.test(t))) return raw;
  if (want("null") && /^(null|None)$/.test(t)) return null;
  if (want("boolean") && /^(true|false|True|False)$/.test(t)) return t.toLowerCase() === "true";
  if ((want("integer") || want("number")) && /^-?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(t)) {
    const n = Number(t);
    if (Number.isFinite(n) && (want("number") || Number.isInteger(n))) return n;
  }
  if (want("object") || want("array")) {
    const v = jsonOr(t);
    if (v !== undefined && (types.length === 0 || (Array.isArray(v) ? want("array") : isObject(v) ? want("object") : false))) return v;
  }
  // Undeclared parameters: any JSON text is taken as such, the rest is text.
  if (types.length === 0) {
    const v = jsonOr(t);
    if (v !== undefined) return v;
  }
  return raw;
}

/**
 * <function=name><parameter=k>v</parameter>...</function>. A parameter left without its closing tag ends where
 * the next one, or the function, begins (models trained on this format sometimes skip it).
 */
function xmlCall(body: string, tools: ToolSpec[] | undefined): ToolCall | undefined {
  const fm = /^<function=([^>\s]+)>([\s\S]*?)(?:<\/function>)?$/.exec(body);
  if (!fm) return undefined;
  const name = fm[1]!;
  const inner = fm[2]!;
  const args: Record<string, unknown> = {};
  const re = /<parameter=([^>\s]+)>([\s\S]*?)(?:<\/parameter>|(?=<parameter=)|$)/g;
  let rest = inner;
  for (const m of inner.matchAll(re)) {
    // The template writes each value on its own lines: one newline either side is layout, not value.
    const raw = m[2]!.replace(/^\n/, "").replace(/\n$/, "");
    args[m[1]!] = xmlValue(raw, toolParamTypes(tools, name, m[1]!));
    rest = rest.replace(m[0], "");
  }
  // Anything but layout outside the parameters means this is not a call.
  if (rest.trim().length > 0) return undefined;
  return makeCall(name, args);
}

const NONE: ToolParseResult = { content: "", toolCalls: [] };

interface TagPair {
  open: string;
  close: string;
  /** The tags are part of the body the parser reads (Qwen3-Coder's bare <function=...> blocks). */
  inBody?: boolean;
}

/** Calls between an opening and a closing tag, anywhere in the output; a convention may have several pairs. */
class TaggedParser implements ToolCallParser {
  private buf = "";
  private pair: TagPair | undefined;
  /** How much of a call's body has been searched for the closing tag already (long arguments stream in). */
  private searched = 0;
  private calls = 0;
  private readonly opens: string[];

  constructor(
    private readonly pairs: readonly TagPair[],
    private readonly parseBody: (body: string) => ToolCall | undefined,
  ) {
    this.opens = pairs.map((p) => p.open);
  }

  private body(pair: TagPair, inner: string): string {
    return pair.inBody ? pair.open + inner + pair.close : inner;
  }

  feed(delta: string): ToolParseResult {
    this.buf += delta;
    let content = "";
    const toolCalls: ToolCall[] = [];
    for (;;) {
      if (!this.pair) {
        const open = findFirst(this.buf, this.opens);
        if (!open) break;
        // Whitespace between text and a call (or between calls) is layout.
        content += this.buf.slice(0, open.index).trimEnd();
        this.buf = this.buf.slice(open.index + open.marker.length);
        this.pair = this.pairs.find((p) => p.open === open.marker)!;
        this.searched = 0;
      }
      const { open, close } = this.pair;
      const at = this.buf.indexOf(close, Math.max(0, this.searched - close.length + 1));
      if (at < 0) {
        this.searched = this.buf.length;
        return { content, toolCalls };
      }
      const inner = this.buf.slice(0, at);
      this.buf = this.buf.slice(at + close.length);
      const call = this.parseBody(this.body(this.pair, inner));
      this.pair = undefined;
      if (call) {
        toolCalls.push(call);
        this.calls++;
      } else content += open + inner + close;
    }
    // Hold back what may start a tag, and trailing whitespace that may turn out to precede one.
    const keep = partialSuffixLength(this.buf, this.opens);
    const safe = this.buf.slice(0, this.buf.length - keep);
    const trimmed = safe.trimEnd();
    content += trimmed;
    this.buf = this.buf.slice(trimmed.length);
    return { content, toolCalls };
  }

  flush(truncated = false): ToolParseResult {
    const rest = this.buf;
    this.buf = "";
    const pair = this.pair;
    if (pair) {
      this.pair = undefined;
      // The body may be whole with its closing tag cut short.
      const inner = rest.slice(0, rest.length - partialSuffixLength(rest, [pair.close]));
      const call = this.parseBody(pair.inBody ? pair.open + inner : inner);
      if (call) return { content: "", toolCalls: [call] };
      return { content: truncated ? "" : pair.open + rest, toolCalls: [] };
    }
    const text = truncated ? rest.slice(0, rest.length - partialSuffixLength(rest, this.opens)) : rest;
    return { content: this.calls > 0 ? text.trimEnd() : text, toolCalls: [] };
  }
}

/** Hermes / Qwen: a JSON object, or Qwen3-Coder's XML form, between <tool_call> and </tool_call>. */
function hermesBody(opts: ToolParserOptions): (body: string) => ToolCall | undefined {
  return (body) => {
    const t = body.trim();
    if (t.startsWith("<function=")) return xmlCall(t, opts.tools);
    try {
      return jsonCall(JSON.parse(t));
    } catch {
      return undefined;
    }
  };
}

function gemma4Body(body: string): ToolCall | undefined {
  try {
    const c = parseGemma4Call(body);
    return makeCall(c.name, c.args);
  } catch {
    return undefined;
  }
}

type Verdict = "yes" | "no" | "maybe";

/**
 * Conventions where the whole reply is the call (no markup around it): the start of the reply decides. While
 * it may be a call it is held; once its structure closes, it is either calls or, if not, released as text.
 */
abstract class ReplyIsCallParser implements ToolCallParser {
  private buf = "";
  private mode: "start" | "call" | "text" = "start";
  private calls = 0;

  constructor(protected readonly opts: ToolParserOptions) {}

  /** Does text (starting with no whitespace) open a call? */
  protected abstract classify(text: string): Verdict;
  /** Index just past the call structure at the start of text, or undefined while it is incomplete. */
  protected abstract structureEnd(text: string): number | undefined;
  /** The calls the structure holds, or undefined if it is not a call after all. */
  protected abstract parse(structure: string): ToolCall[] | undefined;
  /** Separators allowed between consecutive structures. */
  protected separators = /^[\s]*/;

  private allowed(calls: ToolCall[]): boolean {
    const names = this.opts.tools?.map((t) => t.function?.name);
    return !names || calls.every((c) => names.includes(c.function.name));
  }

  feed(delta: string): ToolParseResult {
    if (this.mode === "text") return { content: delta, toolCalls: [] };
    this.buf += delta;
    const toolCalls: ToolCall[] = [];
    for (;;) {
      const lead = this.separators.exec(this.buf)![0].length;
      const t = this.buf.slice(lead);
      if (this.mode === "start") {
        if (t.length === 0) return { content: "", toolCalls };
        const v = this.classify(t);
        if (v === "maybe") return { content: "", toolCalls };
        if (v === "no") return { content: this.release(), toolCalls };
        this.mode = "call";
      }
      const end = this.structureEnd(t);
      if (end === undefined) return { content: "", toolCalls };
      const calls = this.parse(t.slice(0, end));
      if (!calls || !this.allowed(calls)) return { content: this.release(), toolCalls };
      toolCalls.push(...calls);
      this.calls += calls.length;
      this.buf = t.slice(end);
      this.mode = "start";
    }
  }

  /** Gives up on a call: everything held becomes text, and so does the rest of the stream. */
  private release(): string {
    const out = this.calls > 0 ? this.buf.replace(this.separators, "") : this.buf;
    this.buf = "";
    this.mode = "text";
    return out;
  }

  flush(truncated = false): ToolParseResult {
    if (this.mode === "text") return NONE;
    const t = this.buf.replace(this.separators, "");
    if (this.mode === "call") {
      const calls = this.parse(t);
      if (calls && this.allowed(calls)) {
        this.buf = "";
        return { content: "", toolCalls: calls };
      }
    }
    // What is held is (or may be) the start of a call: cut off by the length limit, it is no content.
    const content = truncated ? "" : this.calls > 0 ? t : this.buf;
    this.buf = "";
    return { content, toolCalls: [] };
  }
}

/** Index just past the bracketed structure opening at text[from], honouring quoted strings; undefined if open. */
function balancedEnd(text: string, from: number, quotes: string): number | undefined {
  let depth = 0;
  let quote = "";
  for (let i = from; i < text.length; i++) {
    const c = text[i]!;
    if (quote) {
      if (c === "\\") i++;
      else if (c === quote) quote = "";
      continue;
    }
    if (quotes.includes(c)) quote = c;
    else if (c === "{" || c === "[" || c === "(") depth++;
    else if (c === "}" || c === "]" || c === ")") {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return undefined;
}

class Llama3JsonParser extends ReplyIsCallParser {
  private static readonly TAG = "<|python_tag|>";
  protected override separators = /^[\s;]*/;

  protected classify(t: string): Verdict {
    if (t.startsWith(Llama3JsonParser.TAG)) return "yes";
    if (Llama3JsonParser.TAG.startsWith(t)) return "maybe";
    return t.startsWith("{") ? "yes" : "no";
  }

  protected structureEnd(t: string): number | undefined {
    let i = t.startsWith(Llama3JsonParser.TAG) ? Llama3JsonParser.TAG.length : 0;
    while (i < t.length && /\s/.test(t[i]!)) i++;
    if (i === t.length) return undefined;
    // Not a JSON object (the tag also introduces plain code): parse() refuses it and the text is released.
    if (t[i] !== "{") return t.length;
    return balancedEnd(t, i, '"');
  }

  protected parse(s: string): ToolCall[] | undefined {
    const body = s.startsWith(Llama3JsonParser.TAG) ? s.slice(Llama3JsonParser.TAG.length) : s;
    try {
      const call = jsonCall(JSON.parse(body));
      return call ? [call] : undefined;
    } catch {
      return undefined;
    }
  }
}

class PythonicParser extends ReplyIsCallParser {
  private static readonly FENCE = "```tool_code";
  private static readonly CALL_START = /^\[\s*[A-Za-z_][\w.]*\s*\(/;
  private static readonly CALL_PREFIX = /^\[\s*(?:[A-Za-z_][\w.]*\s*)?$/;

  protected classify(t: string): Verdict {
    if (t.startsWith(PythonicParser.FENCE) || t.startsWith("{")) return "yes";
    if (PythonicParser.FENCE.startsWith(t)) return "maybe";
    if (PythonicParser.CALL_START.test(t)) return "yes";
    return PythonicParser.CALL_PREFIX.test(t) ? "maybe" : "no";
  }

  protected structureEnd(t: string): number | undefined {
    if (t.startsWith(PythonicParser.FENCE)) {
      const close = t.indexOf("```", PythonicParser.FENCE.length);
      return close < 0 ? undefined : close + 3;
    }
    return balancedEnd(t, 0, t.startsWith("{") ? '"' : "\"'");
  }

  protected parse(s: string): ToolCall[] | undefined {
    if (s.startsWith("{")) {
      try {
        const call = jsonCall(JSON.parse(s));
        return call ? [call] : undefined;
      } catch {
        return undefined;
      }
    }
    let body = s;
    if (body.startsWith(PythonicParser.FENCE)) body = body.slice(PythonicParser.FENCE.length).replace(/```$/, "");
    body = body.trim();
    // Some replies wrap the call list in print(...), as in the tool_code examples.
    const printed = /^print\(([\s\S]*)\)$/.exec(body);
    if (printed) body = printed[1]!.trim();
    try {
      const calls = parsePythonCalls(body);
      return calls.length > 0 ? calls.map((c) => makeCall(c.name, c.args)) : undefined;
    } catch {
      return undefined;
    }
  }
}

export function createToolParser(kind: ToolParserKind, opts: ToolParserOptions = {}): ToolCallParser {
  switch (kind) {
    case "hermes":
      return new TaggedParser([{ open: QWEN_CALL_OPEN, close: QWEN_CALL_CLOSE }], hermesBody(opts));
    case "qwen3_coder":
      return new TaggedParser(
        [
          { open: QWEN_CALL_OPEN, close: QWEN_CALL_CLOSE },
          { open: XML_FUNCTION_OPEN, close: XML_FUNCTION_CLOSE, inBody: true },
        ],
        hermesBody(opts),
      );
    case "gemma4":
      return new TaggedParser([{ open: GEMMA4_CALL_OPEN, close: GEMMA4_CALL_CLOSE }], gemma4Body);
    case "llama3_json":
      return new Llama3JsonParser(opts);
    case "pythonic":
      return new PythonicParser(opts);
  }
}

/** Whole-text parse: the same parser, fed everything at once. */
export function parseToolCalls(kind: ToolParserKind, text: string, opts: ToolParserOptions = {}): ToolParseResult {
  const p = createToolParser(kind, opts);
  const a = p.feed(text);
  const b = p.flush();
  return { content: a.content + b.content, toolCalls: [...a.toolCalls, ...b.toolCalls] };
}

/** The convention a model uses, from its chat template's text and its config.json model_type. */
export function toolParserFor(info: { modelType?: string; chatTemplate?: string }): ToolParserKind | undefined {
  const tpl = info.chatTemplate ?? "";
  const type = (info.modelType ?? "").toLowerCase();
  if (tpl.includes(GEMMA4_CALL_OPEN)) return "gemma4";
  // Qwen3-Coder and Qwen3.5/3.6 teach the XML form inside the same <tool_call> tags as Hermes' JSON.
  if (tpl.includes(QWEN_CALL_OPEN) && tpl.includes(XML_FUNCTION_OPEN)) return "qwen3_coder";
  if (tpl.includes(QWEN_CALL_OPEN)) return "hermes";
  if (tpl.includes("<|python_tag|>") || tpl.includes('"parameters": dictionary')) return "llama3_json";
  // A template that does not render tools gets them folded into the prompt in the pythonic convention.
  if (type.startsWith("gemma4")) return "gemma4";
  if (tpl.includes("tool_code") || type.startsWith("gemma") || (tpl.length > 0 && !/\btools\b/.test(tpl))) return "pythonic";
  if (type.startsWith("qwen3_5") || type.startsWith("qwen3_coder")) return "qwen3_coder";
  if (type.startsWith("qwen") || type.startsWith("hermes")) return "hermes";
  if (type.startsWith("llama")) return "llama3_json";
  return undefined;
}
