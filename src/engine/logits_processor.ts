// The hook through which a request's output is constrained (JSON schema / grammar masks): called on each row of
// logits before sampling, then told which token was sampled.

export interface LogitsProcessor {
  /** Adjusts one row of logits in place (e.g. -Infinity on tokens the constraint forbids). */
  apply(logits: Float32Array): void;
  /** Advances by the sampled token; false when the token breaks the constraint (generation then stops). */
  accept(tokenId: number): boolean;
}
