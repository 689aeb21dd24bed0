// A byte-level recognizer for JSON texts that follow a compiled schema. A state is a small set of alternative
// stacks (alternatives come from unions and from literals that may end or go on); a stack is an immutable
// linked list of frames, so stepping shares structure and a state can be kept per trie depth for free.
import type { SchemaNode } from "./json_schema.ts";

/** Whitespace bytes allowed in a row between tokens; bounds the degenerate "spaces forever" loop. */
const MAX_WS = 8;

type Frame =
  | { t: "value"; s: SchemaNode; ws: number; up: Frame | null }
  | { t: "obj"; s: Extract<SchemaNode, { k: "object" }>; ph: "open" | "comma" | "colon" | "after"; seen: readonly string[]; key: string; ws: number; up: Frame | null }
  | { t: "key"; obj: Extract<Frame, { t: "obj" }>; buf: string; esc: number }
  | { t: "arr"; s: Extract<SchemaNode, { k: "array" }>; ph: "open" | "comma" | "after"; n: number; ws: number; up: Frame | null }
  | { t: "str"; esc: number; len: number; min: number; max: number; up: Frame | null }
  | { t: "num"; integer: boolean; ph: NumPhase; up: Frame | null }
  | { t: "lit"; options: string[]; pos: number; up: Frame | null }
  | { t: "done" };

type NumPhase = "sign" | "zero" | "int" | "dot" | "frac" | "e" | "esign" | "exp";
const NUM_TERMINAL = new Set<NumPhase>(["zero", "int", "frac", "exp"]);

export type GrammarState = readonly Frame[];

const isWs = (b: number) => b === 0x20 || b === 0x0a || b === 0x09 || b === 0x0d;
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isHex = (b: number) => isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
const DONE: Frame = { t: "done" };

const ANY_OPTIONS: SchemaNode[] = [];
function anyOptions(): SchemaNode[] {
  if (ANY_OPTIONS.length === 0) {
    const any: SchemaNode = { k: "any" };
    ANY_OPTIONS.push(
      { k: "object", props: new Map(), required: new Set(), additional: any },
      { k: "array", items: any, min: 0, max: Infinity },
      { k: "string", minLength: 0, maxLength: Infinity },
      { k: "number", integer: false },
      { k: "literal", options: ["true", "false", "null"] },
    );
  }
  return ANY_OPTIONS;
}

export function initialState(schema: SchemaNode): GrammarState {
  return [{ t: "value", s: schema, ws: 0, up: null }];
}

/** The state after one more byte; empty when the byte is not allowed. */
export function stepByte(state: GrammarState, b: number): GrammarState {
  if (state.length === 1) return step(state[0]!, b);
  const out: Frame[] = [];
  for (const f of state) for (const g of step(f, b)) out.push(g);
  return out;
}

/**
 * Inside a string with no escape pending, every byte but the quote, the backslash and control bytes only extends
 * the string, so tokens made of such bytes need no stepping: they fit when their characters fit the length
 * bound. Returns how many more characters the string may take (Infinity when unbounded), or -1 when the state
 * is not such a string.
 */
export function stringRoom(state: GrammarState): number {
  if (state.length !== 1) return -1;
  const f = state[0]!;
  return f.t === "str" && f.esc === 0 ? f.max - f.len : -1;
}

/** Whether the text so far is a complete value (the number at the end, if any, may stop here). */
export function canEnd(state: GrammarState): boolean {
  for (const f of state) {
    if (f.t === "done") return true;
    if (f.t === "num" && NUM_TERMINAL.has(f.ph) && f.up === null) return true;
  }
  return false;
}

/** A frame's parent after the child value finished. */
function completed(up: Frame | null): Frame {
  if (up === null) return DONE;
  switch (up.t) {
    case "obj":
      return { ...up, ph: "after", ws: 0 };
    case "arr":
      return { ...up, ph: "after", n: up.n + 1, ws: 0 };
    default:
      throw new Error(`json grammar: ${up.t} cannot hold a value`);
  }
}

function startValue(s: SchemaNode, b: number, up: Frame | null): Frame[] {
  switch (s.k) {
    case "union": {
      const out: Frame[] = [];
      for (const o of s.options) for (const f of startValue(o, b, up)) out.push(f);
      return out;
    }
    case "any": {
      const out: Frame[] = [];
      for (const o of anyOptions()) for (const f of startValue(o, b, up)) out.push(f);
      return out;
    }
    case "object":
      return b === 0x7b ? [{ t: "obj", s, ph: "open", seen: [], key: "", ws: 0, up }] : [];
    case "array":
      return b === 0x5b ? [{ t: "arr", s, ph: "open", n: 0, ws: 0, up }] : [];
    case "string":
      return b === 0x22 ? [{ t: "str", esc: 0, len: 0, min: s.minLength, max: s.maxLength, up }] : [];
    case "number":
      if (b === 0x2d) return [{ t: "num", integer: s.integer, ph: "sign", up }];
      if (b === 0x30) return [{ t: "num", integer: s.integer, ph: "zero", up }];
      if (isDigit(b)) return [{ t: "num", integer: s.integer, ph: "int", up }];
      return [];
    case "literal":
      return litStep({ t: "lit", options: s.options, pos: 0, up }, b);
  }
}

function litStep(f: Extract<Frame, { t: "lit" }>, b: number): Frame[] {
  const ch = String.fromCharCode(b);
  const keep = f.options.filter((o) => o.length > f.pos && o[f.pos] === ch);
  if (keep.length === 0) return [];
  const pos = f.pos + 1;
  const out: Frame[] = [];
  if (keep.some((o) => o.length === pos)) out.push(completed(f.up));
  const longer = keep.filter((o) => o.length > pos);
  if (longer.length > 0) out.push({ t: "lit", options: longer, pos, up: f.up });
  return out;
}

/** Keys the object may still take; null when any key is allowed. */
function allowedKeys(f: Extract<Frame, { t: "obj" }>): string[] | null {
  if (f.s.additional !== null) return null;
  return [...f.s.props.keys()].filter((k) => !f.seen.includes(k));
}

function requiredDone(f: Extract<Frame, { t: "obj" }>): boolean {
  for (const r of f.s.required) if (!f.seen.includes(r)) return false;
  return true;
}

function step(f: Frame, b: number): Frame[] {
  switch (f.t) {
    case "done":
      return [];
    case "value":
      if (isWs(b)) return f.ws < MAX_WS ? [{ ...f, ws: f.ws + 1 }] : [];
      return startValue(f.s, b, f.up);
    case "lit":
      return litStep(f, b);
    case "str":
      return strStep(f, b);
    case "num":
      return numStep(f, b);
    case "key":
      return keyStep(f, b);
    case "obj":
      return objStep(f, b);
    case "arr":
      return arrStep(f, b);
  }
}

function strStep(f: Extract<Frame, { t: "str" }>, b: number): Frame[] {
  if (f.esc === 1) {
    if (b === 0x75) return [{ ...f, esc: 5 }];
    return '"\\/bfnrt'.includes(String.fromCharCode(b)) ? [{ ...f, esc: 0, len: f.len + 1 }] : [];
  }
  if (f.esc > 1) {
    if (!isHex(b)) return [];
    return [{ ...f, esc: f.esc === 2 ? 0 : f.esc - 1, len: f.esc === 2 ? f.len + 1 : f.len }];
  }
  if (b === 0x22) return f.len >= f.min ? [completed(f.up)] : [];
  if (b < 0x20) return [];
  // Continuation bytes of a UTF-8 character do not count towards the length.
  const counts = (b & 0xc0) !== 0x80;
  if (counts && f.len >= f.max) return [];
  if (b === 0x5c) return [{ ...f, esc: 1 }];
  return [{ ...f, len: counts ? f.len + 1 : f.len }];
}

function numStep(f: Extract<Frame, { t: "num" }>, b: number): Frame[] {
  const next = (ph: NumPhase): Frame[] => [{ ...f, ph }];
  switch (f.ph) {
    case "sign":
      return b === 0x30 ? next("zero") : isDigit(b) ? next("int") : [];
    case "zero":
    case "int":
      if (f.ph === "int" && isDigit(b)) return next("int");
      if (!f.integer && b === 0x2e) return next("dot");
      if (!f.integer && (b === 0x65 || b === 0x45)) return next("e");
      break;
    case "dot":
      return isDigit(b) ? next("frac") : [];
    case "frac":
      if (isDigit(b)) return next("frac");
      if (b === 0x65 || b === 0x45) return next("e");
      break;
    case "e":
      return b === 0x2b || b === 0x2d ? next("esign") : isDigit(b) ? next("exp") : [];
    case "esign":
      return isDigit(b) ? next("exp") : [];
    case "exp":
      if (isDigit(b)) return next("exp");
      break;
  }
  // The number ended before this byte: the parent takes it.
  if (!NUM_TERMINAL.has(f.ph)) return [];
  return step(completed(f.up), b);
}

function keyStep(f: Extract<Frame, { t: "key" }>, b: number): Frame[] {
  const keys = allowedKeys(f.obj);
  if (f.esc === 0 && b === 0x22) {
    const key = decodeKey(f.buf);
    if (key === null) return [];
    if (keys ? !keys.includes(key) : f.obj.seen.includes(key)) return [];
    return [{ ...f.obj, ph: "colon", key, ws: 0 }];
  }
  if (b < 0x20) return [];
  let esc = 0;
  if (f.esc === 1) {
    if (b === 0x75) esc = 5;
    else if (!'"\\/bfnrt'.includes(String.fromCharCode(b))) return [];
  } else if (f.esc > 1) {
    if (!isHex(b)) return [];
    esc = f.esc === 2 ? 0 : f.esc - 1;
  } else if (b === 0x5c) {
    esc = 1;
  }
  const buf = f.buf + String.fromCharCode(b);
  // With a closed key set, the raw bytes so far must be a prefix of some allowed key's JSON text.
  if (keys && !keys.some((k) => jsonKeyBytes(k).startsWith(buf))) return [];
  return [{ ...f, buf, esc }];
}

const keyBytesCache = new Map<string, string>();
/** A key's JSON text without quotes, as one char per UTF-8 byte (how the recognizer sees bytes). */
function jsonKeyBytes(k: string): string {
  let s = keyBytesCache.get(k);
  if (s === undefined) {
    const bytes = new TextEncoder().encode(JSON.stringify(k).slice(1, -1));
    s = String.fromCharCode(...bytes);
    keyBytesCache.set(k, s);
  }
  return s;
}

function decodeKey(raw: string): string | null {
  try {
    const bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0));
    return JSON.parse(`"${new TextDecoder("utf-8", { fatal: true }).decode(bytes)}"`) as string;
  } catch {
    return null;
  }
}

function objStep(f: Extract<Frame, { t: "obj" }>, b: number): Frame[] {
  if (isWs(b)) return f.ws < MAX_WS ? [{ ...f, ws: f.ws + 1 }] : [];
  switch (f.ph) {
    case "open":
    case "comma": {
      if (b === 0x7d) return f.ph === "open" && requiredDone(f) ? [completed(f.up)] : [];
      if (b !== 0x22) return [];
      const keys = allowedKeys(f);
      if (keys !== null && keys.length === 0) return [];
      return [{ t: "key", obj: f, buf: "", esc: 0 }];
    }
    case "colon":
      if (b !== 0x3a) return [];
      return [{ t: "value", s: f.s.props.get(f.key) ?? f.s.additional!, ws: 0, up: { ...f, seen: [...f.seen, f.key], ph: "after", ws: 0 } }];
    case "after":
      if (b === 0x7d) return requiredDone(f) ? [completed(f.up)] : [];
      if (b === 0x2c) {
        const keys = allowedKeys(f);
        return keys !== null && keys.length === 0 ? [] : [{ ...f, ph: "comma", ws: 0 }];
      }
      return [];
  }
}

function arrStep(f: Extract<Frame, { t: "arr" }>, b: number): Frame[] {
  if (isWs(b)) return f.ws < MAX_WS ? [{ ...f, ws: f.ws + 1 }] : [];
  switch (f.ph) {
    case "open":
      if (b === 0x5d) return f.s.min === 0 ? [completed(f.up)] : [];
      if (f.s.max === 0) return [];
      return startValue(f.s.items, b, { ...f, ph: "after" });
    case "comma":
      return startValue(f.s.items, b, { ...f, ph: "after" });
    case "after":
      if (b === 0x5d) return f.n >= f.s.min ? [completed(f.up)] : [];
      if (b === 0x2c) return f.n < f.s.max ? [{ ...f, ph: "comma", ws: 0 }] : [];
      return [];
  }
}
