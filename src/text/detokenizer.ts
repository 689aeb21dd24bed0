// Streaming detokenization: token ids in, text out, never half a character. Each token's bytes go through one
// streaming UTF-8 decoder, which keeps an incomplete sequence (a character split over byte-level or byte-fallback
// tokens) until its last byte arrives: constant work per token, whatever the length of the sequence.

import { REASONING_MARKERS } from "./reasoning.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { TOOL_MARKERS } from "./tool_parsers.ts";

export interface DetokenizerOptions {
  /** Leave out special tokens (<|im_end|>, <eos>, ...), except the markers the output parsers read. Default true. */
  skipSpecialTokens?: boolean;
}

/** Special tokens that stay in the text even when special tokens are skipped. */
const KEPT_MARKERS = [...TOOL_MARKERS, ...REASONING_MARKERS];

const keptIds = new WeakMap<Tokenizer, Set<number>>();

function keptSpecialIds(tokenizer: Tokenizer): Set<number> {
  let ids = keptIds.get(tokenizer);
  if (!ids) {
    ids = new Set();
    for (const m of KEPT_MARKERS) {
      const id = tokenizer.tokenToId(m);
      if (id !== undefined) ids.add(id);
    }
    keptIds.set(tokenizer, ids);
  }
  return ids;
}

export class Detokenizer {
  private readonly decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  private readonly skipSpecial: boolean;
  private readonly kept: Set<number>;
  /** Leading spaces still to drop (sentencepiece decoders strip the one that starts the text). */
  private stripLeft: number;
  private textSoFar = "";
  private tokenCount = 0;

  constructor(
    private readonly tokenizer: Tokenizer,
    opts: DetokenizerOptions = {},
  ) {
    this.skipSpecial = opts.skipSpecialTokens ?? true;
    this.kept = keptSpecialIds(tokenizer);
    this.stripLeft = tokenizer.convention.stripLeadingSpaces;
  }

  /** Text completed by this token ("" while a character is still incomplete). */
  push(tokenId: number): string {
    this.tokenCount++;
    if (this.skipSpecial && this.tokenizer.specialTokenIds.has(tokenId) && !this.kept.has(tokenId)) return "";
    return this.emit(this.decoder.decode(this.tokenizer.tokenBytes(tokenId), { stream: true }));
  }

  /** Whatever is left at the end: an incomplete byte sequence becomes U+FFFD, as a whole-text decode would. */
  flush(): string {
    return this.emit(this.decoder.decode());
  }

  /** All text emitted so far. */
  get text(): string {
    return this.textSoFar;
  }

  /** Tokens pushed so far, skipped ones included. */
  get tokens(): number {
    return this.tokenCount;
  }

  private emit(s: string): string {
    while (this.stripLeft > 0 && s.length > 0) {
      if (s.startsWith(" ")) {
        s = s.slice(1);
        this.stripLeft--;
      } else this.stripLeft = 0;
    }
    this.textSoFar += s;
    return s;
  }
}
