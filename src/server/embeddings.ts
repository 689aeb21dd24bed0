// POST /v1/embeddings (OpenAI): texts or token ids in, one vector each out, as floats or base64 of little-endian
// float32. `dimensions` keeps the first N values and renormalises them (Matryoshka), which only makes sense for a
// model whose embeddings are normalised; every input of a request runs in one batch.
import { l2normalize } from "../engine/embedder.ts";
import { HttpError } from "./errors.ts";
import { withModel, type ServerContext } from "./generation.ts";
import type { EmbeddingsBodyT } from "./schemas.ts";

/** The request's inputs as a list: one string or one id list becomes a list of one. */
function inputsOf(input: EmbeddingsBodyT["input"]): (string | number[])[] {
  if (typeof input === "string") return [input];
  if (input.every((x) => typeof x === "number")) return [input as number[]];
  return input as (string | number[])[];
}

function base64Of(v: Float32Array): string {
  // Float32Array is little-endian on every platform rmlx runs on, as OpenAI's base64 format is
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64");
}

export async function embeddings(ctx: ServerContext, body: EmbeddingsBodyT): Promise<Response> {
  return withModel(
    ctx,
    body.model,
    async (m) => {
      const info = m.info?.embedding;
      if (!info) throw new HttpError(500, `model '${m.name}' loaded without its embedding settings`);
      const dims = body.dimensions;
      if (dims !== undefined && dims > info.dimension) {
        throw new HttpError(400, `dimensions ${dims} is more than model '${m.name}' gives (${info.dimension})`, { param: "dimensions" });
      }
      if (dims !== undefined && dims !== info.dimension && !info.normalize) {
        throw new HttpError(400, `model '${m.name}' does not support dimensions: its embeddings are not normalised, so a shortened one is not a Matryoshka embedding`, {
          param: "dimensions",
        });
      }
      if (body.prompt_name !== undefined && !info.prompts.includes(body.prompt_name)) {
        const known = info.prompts.length ? info.prompts.join(", ") : "it has none";
        throw new HttpError(400, `prompt_name '${body.prompt_name}' is not a prompt of model '${m.name}' (${known})`, { param: "prompt_name" });
      }
      const request = { inputs: inputsOf(body.input), truncate: body.truncate ?? false, ...(body.prompt_name !== undefined ? { promptName: body.prompt_name } : {}) };
      const { embeddings: vectors, promptTokens } = await ctx.engine.embed(m.name, request);
      const base64 = body.encoding_format === "base64";
      const data = vectors.map((full, index) => {
        let v = full;
        if (dims !== undefined && dims < full.length) {
          v = full.slice(0, dims);
          l2normalize(v);
        }
        return { object: "embedding", index, embedding: base64 ? base64Of(v) : Array.from(v) };
      });
      return Response.json({ object: "list", data, model: m.name, usage: { prompt_tokens: promptTokens, total_tokens: promptTokens } });
    },
    "embed",
  );
}
