// Gemma 4's native tool-call syntax: call:NAME{key:value,...}, where strings are enclosed in the <|"|> token
// (no escaping inside), keys are bare or enclosed the same way, and other values are numbers, true/false/null,
// {...} objects and [...] lists.

import { TextReader } from "./text_reader.ts";

const QUOTE = '<|"|>';

class Reader extends TextReader {
  quoted(): string {
    const end = this.s.indexOf(QUOTE, this.pos);
    if (end < 0) this.fail("unterminated string");
    const v = this.s.slice(this.pos, end);
    this.pos = end + QUOTE.length;
    return v;
  }

  key(): string {
    if (this.eat(QUOTE)) return this.quoted();
    const m = /^[^:,{}[\]\s]+/.exec(this.s.slice(this.pos));
    if (!m) this.fail("expected a key");
    this.pos += m[0].length;
    return m[0];
  }

  object(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    if (this.eat("}")) return out;
    do {
      const k = this.key();
      if (!this.eat(":")) this.fail('expected ":"');
      out[k] = this.value();
    } while (this.eat(","));
    if (!this.eat("}")) this.fail('expected "}"');
    return out;
  }

  list(): unknown[] {
    const out: unknown[] = [];
    if (this.eat("]")) return out;
    do out.push(this.value());
    while (this.eat(","));
    if (!this.eat("]")) this.fail('expected "]"');
    return out;
  }

  value(): unknown {
    if (this.eat(QUOTE)) return this.quoted();
    if (this.eat("{")) return this.object();
    if (this.eat("[")) return this.list();
    this.ws();
    const m = /^[^,{}[\]]+/.exec(this.s.slice(this.pos));
    if (!m) this.fail("expected a value");
    this.pos += m[0].length;
    const t = m[0].trim();
    if (t === "true") return true;
    if (t === "false") return false;
    if (t === "null" || t === "None") return null;
    const n = Number(t);
    // Anything else unquoted is taken as text, as a lenient reader of model output should.
    return t !== "" && Number.isFinite(n) ? n : t;
  }
}

/** Parses "call:NAME{...}"; throws SyntaxError for anything else. */
export function parseGemma4Call(body: string): { name: string; args: Record<string, unknown> } {
  const m = /^\s*call:([^{\s]+)\s*\{/.exec(body);
  if (!m) throw new SyntaxError("expected call:NAME{...}");
  const r = new Reader(body);
  r.pos = m[0].length;
  const args = r.object();
  r.ws();
  if (r.pos !== body.length) r.fail("unexpected text after the call");
  return { name: m[1]!, args };
}
