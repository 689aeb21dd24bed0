// A cursor over a string for the small hand-written parsers of tool-call syntaxes (pylit.ts, gemma4_args.ts).

export class TextReader {
  pos = 0;
  constructor(readonly s: string) {}

  fail(what: string): never {
    throw new SyntaxError(`${what} at offset ${this.pos}`);
  }

  ws(): void {
    while (this.pos < this.s.length && /\s/.test(this.s[this.pos]!)) this.pos++;
  }

  /** Skips whitespace, then t if it comes next. */
  eat(t: string): boolean {
    this.ws();
    if (!this.s.startsWith(t, this.pos)) return false;
    this.pos += t.length;
    return true;
  }

  expect(t: string): void {
    if (!this.eat(t)) this.fail(`expected "${t}"`);
  }
}
