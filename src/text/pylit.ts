// A reader for the Python call lists some models write as tool calls, e.g.
// [get_weather(city="Paris", days=3), get_time(tz='UTC')]: names with keyword arguments whose values are
// Python literals (strings, numbers, True/False/None, lists, tuples, dicts).

import { TextReader } from "./text_reader.ts";

export interface PyCall {
  name: string;
  args: Record<string, unknown>;
}

class PyReader extends TextReader {
  ident(): string {
    this.ws();
    const m = /^[A-Za-z_][\w.]*/.exec(this.s.slice(this.pos));
    if (!m) this.fail("expected a name");
    this.pos += m[0].length;
    return m[0];
  }

  call(): PyCall {
    const name = this.ident();
    this.expect("(");
    const args: Record<string, unknown> = {};
    if (!this.eat(")")) {
      do {
        if (this.eat(")")) return { name, args };
        const key = this.ident();
        this.expect("=");
        args[key] = this.value();
      } while (this.eat(","));
      this.expect(")");
    }
    return { name, args };
  }

  value(): unknown {
    this.ws();
    const c = this.s[this.pos];
    if (c === '"' || c === "'") return this.string();
    if (c === "[" || c === "(") return this.sequence(c === "[" ? "]" : ")");
    if (c === "{") return this.dict();
    const m = /^(?:True|False|None|null|true|false|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)/.exec(this.s.slice(this.pos));
    if (!m) this.fail("expected a value");
    this.pos += m[0].length;
    const t = m[0];
    if (t === "True" || t === "true") return true;
    if (t === "False" || t === "false") return false;
    if (t === "None" || t === "null") return null;
    return Number(t);
  }

  string(): string {
    const q = this.s[this.pos]!;
    const triple = this.s.startsWith(q.repeat(3), this.pos);
    const close = triple ? q.repeat(3) : q;
    this.pos += close.length;
    let out = "";
    while (this.pos < this.s.length) {
      if (this.s.startsWith(close, this.pos)) {
        this.pos += close.length;
        return out;
      }
      const c = this.s[this.pos++]!;
      if (c !== "\\") {
        out += c;
        continue;
      }
      const e = this.s[this.pos++];
      const simple: Record<string, string> = { n: "\n", t: "\t", r: "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"' };
      if (e !== undefined && e in simple) out += simple[e];
      else if (e === "u" || e === "x") {
        const len = e === "u" ? 4 : 2;
        const hex = this.s.slice(this.pos, this.pos + len);
        if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== len) this.fail("bad escape");
        out += String.fromCharCode(parseInt(hex, 16));
        this.pos += len;
      } else out += "\\" + (e ?? "");
    }
    this.fail("unterminated string");
  }

  sequence(close: string): unknown[] {
    this.pos++;
    const out: unknown[] = [];
    while (!this.eat(close)) {
      out.push(this.value());
      if (!this.eat(",")) {
        this.expect(close);
        break;
      }
    }
    return out;
  }

  dict(): Record<string, unknown> {
    this.pos++;
    const out: Record<string, unknown> = {};
    while (!this.eat("}")) {
      const k = this.value();
      this.expect(":");
      out[String(k)] = this.value();
      if (!this.eat(",")) {
        this.expect("}");
        break;
      }
    }
    return out;
  }
}

/** Parses "[f(a=1), g()]" or a single "f(a=1)"; throws SyntaxError when the text is anything else. */
export function parsePythonCalls(text: string): PyCall[] {
  const r = new PyReader(text);
  const calls: PyCall[] = [];
  if (r.eat("[")) {
    while (!r.eat("]")) {
      calls.push(r.call());
      if (!r.eat(",")) {
        r.expect("]");
        break;
      }
    }
  } else calls.push(r.call());
  r.ws();
  if (r.pos !== text.length) r.fail("unexpected text after the calls");
  return calls;
}
