import { DEFAULT_SAMPLING, type SamplingDefaults, type SamplingParams } from "../engine/types.ts";
import { HttpError } from "./errors.ts";
import type { ModelEntry } from "./models.ts";

/** The server's --temp, --top-p, --top-k, --min-p and --max-tokens: defaults for requests that leave them out. */
export interface ServerDefaults extends SamplingDefaults {
  maxTokens?: number;
}

/**
 * What stands in for a sampling field a request leaves out: the server's flag, else the model's
 * generation_config.json, else the built-in default (temperature 1, top_p 1, top_k and min_p off).
 */
export function defaultsFor(server: ServerDefaults | undefined, m: ModelEntry): SamplingDefaults {
  const { maxTokens: _, ...flags } = server ?? {};
  return { ...m.info?.sampling, ...flags };
}

type Maybe<T> = T | null | undefined;

export interface OpenAISamplingFields {
  temperature?: Maybe<number>;
  top_p?: Maybe<number>;
  top_k?: Maybe<number>;
  min_p?: Maybe<number>;
  presence_penalty?: Maybe<number>;
  frequency_penalty?: Maybe<number>;
  repetition_penalty?: Maybe<number>;
  seed?: Maybe<number>;
  logit_bias?: Maybe<Record<string, number>>;
}

function logitBias(bias: Maybe<Record<string, number>>): Record<number, number> | undefined {
  if (!bias) return undefined;
  const out: Record<number, number> = {};
  for (const [k, v] of Object.entries(bias)) {
    const id = Number(k);
    if (!Number.isInteger(id) || id < 0) throw new HttpError(400, `logit_bias key '${k}' is not a token id`, { param: "logit_bias" });
    out[id] = v;
  }
  return out;
}

export function openAISampling(
  body: OpenAISamplingFields,
  logprobs: { logprobs: boolean; top: number },
  defaults: SamplingDefaults = {},
): SamplingParams {
  return {
    ...DEFAULT_SAMPLING,
    temperature: body.temperature ?? defaults.temperature ?? DEFAULT_SAMPLING.temperature,
    topP: body.top_p ?? defaults.topP ?? DEFAULT_SAMPLING.topP,
    // vLLM's convention: -1 also means "off".
    topK: Math.max(0, body.top_k ?? defaults.topK ?? DEFAULT_SAMPLING.topK),
    minP: body.min_p ?? defaults.minP ?? DEFAULT_SAMPLING.minP,
    presencePenalty: body.presence_penalty ?? 0,
    frequencyPenalty: body.frequency_penalty ?? 0,
    repetitionPenalty: body.repetition_penalty ?? defaults.repetitionPenalty ?? DEFAULT_SAMPLING.repetitionPenalty,
    logitBias: logitBias(body.logit_bias),
    seed: body.seed ?? undefined,
    logprobs: logprobs.logprobs,
    topLogprobs: logprobs.top,
  };
}

export function anthropicSampling(body: { temperature?: number; top_p?: number; top_k?: number }, defaults: SamplingDefaults = {}): SamplingParams {
  return {
    ...DEFAULT_SAMPLING,
    temperature: body.temperature ?? defaults.temperature ?? DEFAULT_SAMPLING.temperature,
    topP: body.top_p ?? defaults.topP ?? DEFAULT_SAMPLING.topP,
    topK: body.top_k ?? defaults.topK ?? DEFAULT_SAMPLING.topK,
    minP: defaults.minP ?? DEFAULT_SAMPLING.minP,
    repetitionPenalty: defaults.repetitionPenalty ?? DEFAULT_SAMPLING.repetitionPenalty,
  };
}

export function stopList(stop: Maybe<string | string[]>): string[] {
  if (stop == null) return [];
  const list = typeof stop === "string" ? [stop] : stop;
  if (list.some((s) => s.length === 0)) throw new HttpError(400, "stop strings must not be empty", { param: "stop" });
  return list;
}
