// Constrained decoding for response_format json_object / json_schema: before each sampling step, the logits of
// every token whose bytes cannot continue a schema-valid JSON text are set to -Infinity.
//
// The vocabulary is prepared once per tokenizer: token ids sorted by their bytes, with the length of the common
// prefix each shares with the previous one. Walking that list keeps one grammar state per byte depth, so a
// prefix shared by many tokens is stepped once, and a rejected prefix skips every token that starts with it:
// the walk costs about what a trie would, with flat typed arrays instead of nodes.
import { compileSchema } from "./json_schema.ts";
import { type GrammarState, canEnd, initialState, stepByte, stringRoom, utf8Step } from "./json_grammar.ts";

export interface TokenBytes {
  /** All tokens' bytes, concatenated; token i is blob[offsets[i], offsets[i+1]). */
  blob: Uint8Array;
  offsets: Int32Array;
}

/** Token ids sorted by their bytes, with each one's common-prefix length with the previous one. */
export class SortedTokens {
  readonly ids: Int32Array;
  readonly lcp: Int32Array;

  constructor(ids: number[], { blob, offsets }: TokenBytes) {
    const cmp = (a: number, b: number) => {
      const a0 = offsets[a]!, a1 = offsets[a + 1]!, b0 = offsets[b]!, b1 = offsets[b + 1]!;
      const n = Math.min(a1 - a0, b1 - b0);
      for (let k = 0; k < n; k++) {
        const d = blob[a0 + k]! - blob[b0 + k]!;
        if (d !== 0) return d;
      }
      return a1 - a0 - (b1 - b0);
    };
    ids.sort(cmp);
    this.ids = Int32Array.from(ids);
    this.lcp = new Int32Array(ids.length);
    for (let i = 1; i < ids.length; i++) {
      const a = ids[i - 1]!, b = ids[i]!;
      const a0 = offsets[a]!, b0 = offsets[b]!;
      const n = Math.min(offsets[a + 1]! - a0, offsets[b + 1]! - b0);
      let k = 0;
      while (k < n && blob[a0 + k] === blob[b0 + k]) k++;
      this.lcp[i] = k;
    }
  }

  /**
   * Sets mask[id] = 1 for every token of the list whose bytes `step` accepts one after another from `state`
   * (null: rejected). One state is kept per byte depth, so a prefix shared by neighbours is stepped once.
   */
  walk<S>(state: S, step: (state: S, byte: number) => S | null, { blob, offsets }: TokenBytes, mask: Uint8Array): void {
    const sorted = this.ids, lcp = this.lcp, n = sorted.length;
    const states: S[] = [state];
    let valid = 0; // states[0..valid] hold the states after the current path's first `valid` bytes
    let i = 0;
    while (i < n) {
      const id = sorted[i]!;
      const start = offsets[id]!, len = offsets[id + 1]! - start;
      let d = Math.min(lcp[i]!, valid);
      let dead = false;
      for (; d < len; d++) {
        const next = step(states[d]!, blob[start + d]!);
        if (next === null) {
          dead = true;
          break;
        }
        states[d + 1] = next;
      }
      if (dead) {
        valid = d;
        // Every following token that shares these d+1 bytes dies on the same byte.
        i++;
        while (i < n && lcp[i]! > d) i++;
        continue;
      }
      valid = len;
      mask[id] = 1;
      i++;
    }
  }
}

/** The JSON grammar's step for SortedTokens.walk: no state left is a rejection. */
function stepJson(state: GrammarState, b: number): GrammarState | null {
  const next = stepByte(state, b);
  return next.length === 0 ? null : next;
}

const isPlainStringByte = (b: number) => b >= 0x20 && b !== 0x22 && b !== 0x5c;

/**
 * The characters a token adds inside a string when it starts between two characters, or -1 when it cannot go
 * there without stepping: a quote, backslash or control byte, or bytes that are not well-formed UTF-8 (its last
 * character may be cut short: the next token finishes it).
 */
function plainChars(blob: Uint8Array, start: number, end: number): number {
  let chars = 0;
  let u8 = 0;
  for (let k = start; k < end; k++) {
    const b = blob[k]!;
    if (!isPlainStringByte(b)) return -1;
    if (u8 === 0) chars++;
    u8 = utf8Step(u8, b);
    if (u8 < 0) return -1;
  }
  return chars;
}

export class ConstraintVocab {
  readonly size: number;
  /** Every token with bytes that is not special, in byte order. */
  readonly all: SortedTokens;
  /** Tokens with a quote, backslash or control byte: the only ones to step inside a free string. */
  private readonly structural: SortedTokens;
  /** 1 for tokens that only extend a string, from between two characters (see plainChars). */
  private readonly plain: Uint8Array;
  /** Characters of each plain token, for strings with a length bound. */
  private readonly plainChars: Uint16Array;

  constructor(
    readonly bytes: TokenBytes,
    /** Ids that must never be produced through their bytes (special and control tokens). */
    readonly special: ReadonlySet<number>,
    /** Ids that end generation; allowed exactly when the JSON text is complete. */
    readonly eos: readonly number[],
  ) {
    this.size = bytes.offsets.length - 1;
    const { blob, offsets } = bytes;
    const usable: number[] = [];
    const structural: number[] = [];
    this.plain = new Uint8Array(this.size);
    this.plainChars = new Uint16Array(this.size);
    for (let i = 0; i < this.size; i++) {
      if (special.has(i) || offsets[i + 1]! === offsets[i]!) continue;
      usable.push(i);
      const chars = plainChars(blob, offsets[i]!, offsets[i + 1]!);
      if (chars >= 0) {
        this.plain[i] = 1;
        this.plainChars[i] = Math.min(chars, 0xffff);
        continue;
      }
      // Tokens of string bytes that are not well-formed from a character boundary (a stray continuation byte,
      // say) can never follow one, so the fast path leaves them out; mid-character states walk every token.
      let stringBytes = true;
      for (let k = offsets[i]!; k < offsets[i + 1]! && stringBytes; k++) stringBytes = isPlainStringByte(blob[k]!);
      if (!stringBytes) structural.push(i);
    }
    this.all = new SortedTokens(usable, bytes);
    this.structural = new SortedTokens(structural, bytes);
  }

  /** Marks in mask (1 = allowed) every token whose bytes the grammar accepts from state. */
  fillMask(state: GrammarState, mask: Uint8Array): void {
    const room = stringRoom(state);
    if (room === Infinity) {
      mask.set(this.plain);
      this.structural.walk(state, stepJson, this.bytes, mask);
    } else if (room >= 0) {
      const plain = this.plain, chars = this.plainChars;
      for (let i = 0; i < mask.length; i++) mask[i] = plain[i]! & (chars[i]! <= room ? 1 : 0);
      this.structural.walk(state, stepJson, this.bytes, mask);
    } else {
      mask.fill(0);
      this.all.walk(state, stepJson, this.bytes, mask);
    }
    if (canEnd(state)) for (const e of this.eos) mask[e] = 1;
  }
}

/** One request's constraint: the grammar state advanced by each sampled token. */
export class JsonConstraint {
  private state: GrammarState;
  private readonly mask: Uint8Array;

  constructor(
    schema: unknown,
    private readonly vocab: ConstraintVocab,
  ) {
    this.state = initialState(compileSchema(schema));
    this.mask = new Uint8Array(vocab.size);
  }

  /** Whether the text so far is a complete JSON value. */
  get complete(): boolean {
    return canEnd(this.state);
  }

  /** Sets disallowed logits to -Infinity. Logits beyond the tokenizer's vocabulary (padding rows) are masked too. */
  apply(logits: Float32Array): void {
    this.vocab.fillMask(this.state, this.mask);
    const m = this.mask;
    for (let i = 0; i < logits.length; i++) if (i >= m.length || m[i] === 0) logits[i] = -Infinity;
  }

  /** Advances by a sampled token; false when the token was not allowed (the caller should stop). */
  accept(tokenId: number): boolean {
    if (this.vocab.eos.includes(tokenId)) return canEnd(this.state);
    const { blob, offsets } = this.vocab.bytes;
    let s = this.state;
    for (let k = offsets[tokenId]!; k < offsets[tokenId + 1]!; k++) {
      s = stepByte(s, blob[k]!);
      if (s.length === 0) return false;
    }
    this.state = s;
    return true;
  }
}
