import { HttpError } from "./errors.ts";
import type { ServerContext } from "./generation.ts";
import type { EmbeddingsBodyT } from "./schemas.ts";

/**
 * POST /v1/embeddings. Every architecture rmlx runs today is a causal language model, whose hidden states are not
 * trained as sentence embeddings, so a known model is refused rather than answered with vectors of no use.
 */
export function embeddings(ctx: ServerContext, body: EmbeddingsBodyT): Response {
  const m = ctx.models.resolve(body.model);
  throw new HttpError(400, `model '${m.name}' does not produce embeddings`, { param: "model", code: "model_not_supported" });
}
