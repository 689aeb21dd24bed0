// A byte-level recognizer for JSON texts that follow a compiled schema. A state is a small set of alternative
// stacks (alternatives come from unions and from literals that may end or go on); a stack is an immutable
// linked list of frames, so stepping shares structure and a state can be kept per trie depth for free.
//
// Tokens are byte strings that may end inside a character, so strings and keys carry the UTF-8 sequence in
// progress: only well-formed UTF-8 is accepted (no stray continuation bytes, overlong forms, surrogates or code
// points past U+10FFFF), and a \u escape of a high surrogate must be followed by one of a low surrogate. String
// lengths count code points, as JSON Schema's minLength and maxLength do.
import { byteString, type SchemaNode } from "./json_schema.ts";

/** Whitespace bytes allowed in a row between tokens; bounds the degenerate "spaces forever" loop. */
const MAX_WS = 8;

type Frame =
  | { t: "value"; s: SchemaNode; ws: number; up: Frame | null }
  | { t: "obj"; s: Extract<SchemaNode, { k: "object" }>; ph: "open" | "comma" | "colon" | "after"; seen: readonly string[]; key: string; ws: number; up: Frame | null }
  | { t: "key"; obj: Extract<Frame, { t: "obj" }>; buf: string; esc: number; u8: number }
  | { t: "arr"; s: Extract<SchemaNode, { k: "array" }>; ph: "open" | "comma" | "after"; n: number; ws: number; up: Frame | null }
  /**
   * esc: 0 none, 1 after a backslash, 2-5 hex digits of a \u escape still to come + 1; cu: the escape's digits so
   * far; low: a high surrogate was escaped, so a low one must follow; u8: the UTF-8 sequence in progress (utf8Step).
   */
  | { t: "str"; esc: number; cu: number; low: boolean; u8: number; len: number; min: number; max: number; up: Frame | null }
  | { t: "num"; integer: boolean; ph: NumPhase; up: Frame | null }
  | { t: "lit"; options: string[]; pos: number; up: Frame | null }
  | { t: "done" };

type NumPhase = "sign" | "zero" | "int" | "dot" | "frac" | "e" | "esign" | "exp";
const NUM_TERMINAL = new Set<NumPhase>(["zero", "int", "frac", "exp"]);

export type GrammarState = readonly Frame[];

const isWs = (b: number) => b === 0x20 || b === 0x0a || b === 0x09 || b === 0x0d;
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isHex = (b: number) => isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
const hexValue = (b: number) => (isDigit(b) ? b - 0x30 : (b | 0x20) - 0x61 + 10);
/** The one-character escapes: " \ / b f n r t. */
const SIMPLE_ESCAPES = new Set([0x22, 0x5c, 0x2f, 0x62, 0x66, 0x6e, 0x72, 0x74]);
const DONE: Frame = { t: "done" };

// A UTF-8 sequence in progress, as one small number: 0 between characters, otherwise an index into CONTINUATION,
// whose entry is the range the next byte must fall in and the state after it. The narrowed ranges after E0, ED,
// F0 and F4 are what keep out overlong forms, UTF-16 surrogates and code points past U+10FFFF.
const CONTINUATION: readonly (readonly [number, number, number])[] = [
  [0, -1, 0],
  [0x80, 0xbf, 0], // 1: the last byte of any character
  [0x80, 0xbf, 1], // 2: two to go
  [0xa0, 0xbf, 1], // 3: after E0
  [0x80, 0x9f, 1], // 4: after ED
  [0x80, 0xbf, 2], // 5: three to go
  [0x90, 0xbf, 2], // 6: after F0
  [0x80, 0x8f, 2], // 7: after F4
];

/** The UTF-8 state after byte b (0: a character is complete), or -1 where b cannot come next. */
export function utf8Step(state: number, b: number): number {
  if (state > 0) {
    const [lo, hi, next] = CONTINUATION[state]!;
    return b >= lo && b <= hi ? next : -1;
  }
  if (b < 0x80) return 0;
  if (b < 0xc2) return -1;
  if (b < 0xe0) return 1;
  if (b === 0xe0) return 3;
  if (b === 0xed) return 4;
  if (b < 0xf0) return 2;
  if (b === 0xf0) return 6;
  if (b < 0xf4) return 5;
  if (b === 0xf4) return 7;
  return -1;
}

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
 * Inside a string between two characters (no escape or UTF-8 sequence pending), a token without quote, backslash
 * or control bytes whose bytes are well-formed UTF-8 (its last character may be cut short) only extends the
 * string, so such tokens need no stepping: they fit when their characters fit the length bound. Returns how many
 * more characters the string may take (Infinity when unbounded), or -1 when the state is not such a string.
 */
export function stringRoom(state: GrammarState): number {
  if (state.length !== 1) return -1;
  const f = state[0]!;
  return f.t === "str" && f.esc === 0 && f.u8 === 0 && !f.low ? f.max - f.len : -1;
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
      return b === 0x22 ? [{ t: "str", esc: 0, cu: 0, low: false, u8: 0, len: 0, min: s.minLength, max: s.maxLength, up }] : [];
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
    if (b === 0x75) return [{ ...f, esc: 5, cu: 0 }];
    return !f.low && SIMPLE_ESCAPES.has(b) ? [{ ...f, esc: 0 }] : [];
  }
  if (f.esc > 1) return hexStep(f, b);
  // After an escaped high surrogate only the escape of a low one may come.
  if (f.low) return b === 0x5c ? [{ ...f, esc: 1 }] : [];
  if (f.u8 > 0) {
    const u8 = utf8Step(f.u8, b);
    return u8 < 0 ? [] : [{ ...f, u8 }];
  }
  if (b === 0x22) return f.len >= f.min ? [completed(f.up)] : [];
  if (b < 0x20 || f.len >= f.max) return [];
  // A character counts where it starts: its lead byte, or the backslash of its escape.
  if (b === 0x5c) return [{ ...f, esc: 1, len: f.len + 1 }];
  const u8 = utf8Step(0, b);
  return u8 < 0 ? [] : [{ ...f, u8, len: f.len + 1 }];
}

/** One hex digit of a \\u escape; refused as soon as the code unit can no longer pair up as UTF-16 requires. */
function hexStep(f: Extract<Frame, { t: "str" }>, b: number): Frame[] {
  if (!isHex(b)) return [];
  const cu = f.cu * 16 + hexValue(b);
  const left = f.esc - 2;
  const lo = cu * 16 ** left;
  const hi = lo + 16 ** left - 1;
  // The second half of a pair must be a low surrogate; anything else must not be one.
  if (f.low ? hi < 0xdc00 || lo > 0xdfff : lo >= 0xdc00 && hi <= 0xdfff) return [];
  if (left > 0) return [{ ...f, esc: f.esc - 1, cu }];
  return [{ ...f, esc: 0, cu: 0, low: !f.low && cu >= 0xd800 && cu <= 0xdbff }];
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
  if (f.esc === 0 && f.u8 === 0 && b === 0x22) {
    const key = decodeKey(f.buf);
    if (key === null) return [];
    if (keys ? !keys.includes(key) : f.obj.seen.includes(key)) return [];
    return [{ ...f.obj, ph: "colon", key, ws: 0 }];
  }
  if (b < 0x20) return [];
  let esc = 0;
  let u8 = 0;
  if (f.esc === 1) {
    if (b === 0x75) esc = 5;
    else if (!SIMPLE_ESCAPES.has(b)) return [];
  } else if (f.esc > 1) {
    if (!isHex(b)) return [];
    esc = f.esc === 2 ? 0 : f.esc - 1;
  } else if (f.u8 === 0 && b === 0x5c) {
    esc = 1;
  } else {
    u8 = utf8Step(f.u8, b);
    if (u8 < 0) return [];
  }
  const buf = f.buf + String.fromCharCode(b);
  // With a closed key set, the raw bytes so far must be a prefix of some allowed key's JSON text.
  if (keys && !keys.some((k) => jsonKeyBytes(k).startsWith(buf))) return [];
  return [{ ...f, buf, esc, u8 }];
}

const keyBytesCache = new Map<string, string>();
/** A key's JSON text without quotes, as the recognizer sees it: one char per UTF-8 byte. */
function jsonKeyBytes(k: string): string {
  let s = keyBytesCache.get(k);
  if (s === undefined) {
    s = byteString(JSON.stringify(k).slice(1, -1));
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
      return [{ t: "key", obj: f, buf: "", esc: 0, u8: 0 }];
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
