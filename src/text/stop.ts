// Stop strings on streamed text: text that may be the start of a stop string is held back until the next piece
// decides it, and the text is cut right before the first stop string that completes.

import { findFirst, partialSuffixLength } from "./holdback.ts";

export interface StopResult {
  /** Text safe to show now. */
  text: string;
  /** The stop string that ended the stream, when one did (text then ends right before it). */
  stop?: string;
}

export class StopStrings {
  private readonly stops: string[];
  private held = "";
  private hit: string | undefined;

  constructor(stops: readonly string[]) {
    this.stops = [...new Set(stops.filter((s) => s.length > 0))];
  }

  /** The stop string that was hit, if any; after a hit, further pieces are ignored. */
  get stopped(): string | undefined {
    return this.hit;
  }

  push(piece: string): StopResult {
    if (this.hit !== undefined) return { text: "" };
    const buf = this.held + piece;
    if (this.stops.length === 0) return { text: buf };
    // Only the held tail and the new piece can hold a stop string that was not complete before.
    const found = findFirst(buf, this.stops);
    if (found) {
      this.hit = found.marker;
      this.held = "";
      return { text: buf.slice(0, found.index), stop: found.marker };
    }
    const keep = partialSuffixLength(buf, this.stops);
    this.held = buf.slice(buf.length - keep);
    return { text: buf.slice(0, buf.length - keep) };
  }

  /** The held-back tail once the stream has ended without a stop string. */
  flush(): string {
    const rest = this.hit === undefined ? this.held : "";
    this.held = "";
    return rest;
  }
}
