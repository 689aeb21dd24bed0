// The hook through which a request's output is constrained (JSON schema / grammar masks): called on each row of
// logits before sampling, then told which token was sampled.
import { RmlxError } from "../errors.ts";
import { ALL_MASKED } from "./sampler.ts";

export interface LogitsProcessor {
  /** Adjusts one row of logits in place (e.g. -Infinity on tokens the constraint forbids). */
  apply(logits: Float32Array): void;
  /** Advances by the sampled token; false when the token breaks the constraint (generation then stops). */
  accept(tokenId: number): boolean;
}

/** Buffers allowedTokens reuses, so that a constrained decode step allocates nothing for its mask. */
export interface MaskScratch {
  row: Float32Array;
  allowed: Uint8Array;
}

/**
 * The tokens p allows next, 1 a token, over a vocabulary of `vocab` (the logits' width), for a pick made where
 * the logits are: p.apply on a row of zeros, so every phase p moves through on apply moves the same way (call it
 * once a pick, in place of apply). Null when every token is allowed; otherwise scratch.allowed, valid until its
 * next use. Throws, as sampling would, when no token is allowed.
 */
export function allowedTokens(p: LogitsProcessor, vocab: number, scratch: MaskScratch): Uint8Array | null {
  if (scratch.row.length !== vocab) {
    scratch.row = new Float32Array(vocab);
    scratch.allowed = new Uint8Array(vocab);
  }
  const { row, allowed } = scratch;
  row.fill(0);
  p.apply(row);
  let n = 0;
  for (let i = 0; i < vocab; i++) n += allowed[i] = row[i] === -Infinity ? 0 : 1;
  if (n === 0) throw new RmlxError("invalid_argument", ALL_MASKED);
  return n === vocab ? null : allowed;
}

/**
 * A constraint that starts where the reasoning section ends. Templates that open the section in the prompt (Qwen3.5,
 * the Qwen3 thinking models) make the output begin as reasoning, which the reply's JSON or tool call must not be
 * written into: until the closing tag is sampled (or forced by a thinking budget) the model writes freely, except
 * that it may not end there.
 */
export class AfterReasoning implements LogitsProcessor {
  private inside = true;

  constructor(
    private readonly inner: LogitsProcessor,
    private readonly close: number,
    private readonly eos: readonly number[],
  ) {}

  apply(logits: Float32Array): void {
    if (!this.inside) return this.inner.apply(logits);
    for (const e of this.eos) if (e < logits.length) logits[e] = -Infinity;
  }

  accept(tokenId: number): boolean {
    if (!this.inside) return this.inner.accept(tokenId);
    if (tokenId === this.close) this.inside = false;
    return !this.eos.includes(tokenId);
  }
}
