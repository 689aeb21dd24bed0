// `rmlx generate`: one prompt, through the model's chat template when it has one (--raw: as plain text), its reply
// streamed to stdout, speeds on stderr. The request runs on the engine's Scheduler in this process, the loop the
// server runs.
import type { Command } from "commander";
import { cacheForTokens, generateAsync, type GenerateResult } from "../engine/generate.ts";
import { type DraftSource, speculatorFor } from "../engine/draft_model.ts";
import { encodePrompt, sessionModel, type Session } from "../engine/session.ts";
import { DEFAULT_SAMPLING, type ChatMessage, type SamplingParams } from "../engine/types.ts";
import { RmlxError } from "../errors.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { addKvOption, kvCodecFrom, type KvFlags } from "./kv_option.ts";
import { addDraftOptions, draftFrom, type DraftFlags } from "./draft_option.ts";
import { addModelOptions, openModel, type ModelFlags } from "./model_option.ts";
import { addSpellings, type Spelling } from "./spellings.ts";

export interface SamplingFlags {
  temp: string;
  topP: string;
  topK: string;
  minP: string;
  repetitionPenalty: string;
  seed?: string;
}

interface GenerateFlags extends SamplingFlags, BackendFlags, KvFlags, ModelFlags, DraftFlags {
  prompt: string;
  maxTokens: string;
  chat?: boolean;
  raw?: boolean;
  system?: string;
  json?: boolean;
  ignoreEos?: boolean;
}

/** llama.cpp's spelling of the sampling flags (generate and chat). */
export const SAMPLING_SPELLINGS: Spelling[] = [
  { flags: "--repeat-penalty <r>", key: "repeatPenalty", ours: "repetitionPenalty", ourFlag: "--repetition-penalty" },
];

/** llama.cpp's and mlx_lm.generate's spellings shared by generate and chat. */
export const REPLY_SPELLINGS: Spelling[] = [
  { flags: "-n, --n-predict <n>", key: "nPredict", ours: "maxTokens", ourFlag: "--max-tokens" },
  { flags: "--system-prompt <text>", key: "systemPrompt", ours: "system", ourFlag: "--system" },
];

const GENERATE_SPELLINGS: Spelling[] = [
  ...SAMPLING_SPELLINGS,
  ...REPLY_SPELLINGS,
  { flags: "--ignore-chat-template", key: "ignoreChatTemplate", ours: "raw", ourFlag: "--raw" },
];

function num(name: string, v: string, integer = false): number {
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new RmlxError("invalid_argument", `--${name} must be ${integer ? "an integer" : "a number"} (got '${v}')`);
  }
  return n;
}

export function samplingFrom(f: SamplingFlags): SamplingParams {
  const p: SamplingParams = {
    ...DEFAULT_SAMPLING,
    temperature: num("temp", f.temp),
    topP: num("top-p", f.topP),
    topK: num("top-k", f.topK, true),
    minP: num("min-p", f.minP),
    repetitionPenalty: num("repetition-penalty", f.repetitionPenalty),
  };
  if (f.seed !== undefined) p.seed = num("seed", f.seed, true);
  return p;
}

export function addSamplingOptions(cmd: Command): Command {
  return cmd
    .option("--temp <t>", "sampling temperature (0 = greedy)", "0")
    .option("--top-p <p>", "nucleus sampling mass", "1")
    .option("--top-k <k>", "keep the k most likely tokens (0 = off)", "0")
    .option("--min-p <m>", "drop tokens below m times the top probability (0 = off)", "0")
    .option("--repetition-penalty <r>", "penalise the last 20 tokens (1 = off)", "1")
    .option("--seed <s>", "random seed for reproducible sampling");
}

/** A prompt: chat messages through the model's template, or raw text with the tokenizer's BOS convention. */
export type CliPrompt = { messages: ChatMessage[] } | { prompt: string };

export interface RunOptions {
  maxTokens: number;
  sampling: SamplingParams;
  /** The context to stay within (the model's, or less with --ctx-size). */
  contextLength: number;
  /** The KV codec (--kv-quant). */
  kvQuant?: string;
  onText?: (t: string) => void;
  /** Stops the reply where it is (chat's Ctrl-C); the result then has finishReason "cancelled". */
  signal?: AbortSignal;
  /** A draft proposing tokens (--draft-model, or --draft-kind mtp), and the most it proposes a step. */
  draft?: { model: DraftSource; tokens: number; fixed: boolean };
  /** Generate maxTokens tokens whatever the model's end-of-sequence tokens say (--ignore-eos). */
  ignoreEos?: boolean;
}

/** The prompt's ids (chat template applied) and the reply, through a cache sized for the prompt and maxTokens. */
export async function runGeneration(s: Session, prompt: CliPrompt, o: RunOptions): Promise<GenerateResult & { promptIds: number[] }> {
  if ("messages" in prompt && !s.template) throw new RmlxError("bad_model", `${s.md.dir}: no chat template (run with --raw)`);
  const request = { ...prompt, maxTokens: o.maxTokens, sampling: o.sampling, stop: [], stopTokenIds: [], ignoreEos: o.ignoreEos ?? false };
  // Encoded here once, because the cache is sized by the prompt's length.
  const encoded = encodePrompt(s, request);
  if (encoded.ids.length >= o.contextLength) {
    throw new RmlxError("context_length", `the prompt has ${encoded.ids.length} tokens; the context is ${o.contextLength} tokens`);
  }
  const cache = cacheForTokens(s.model, Math.min(encoded.ids.length + o.maxTokens, o.contextLength), o.kvQuant, o.draft ? 2 : 1);
  const speculator = o.draft ? speculatorFor(o.draft.model, o.draft.tokens, cache.capacityTokens, 1, o.draft.fixed) : undefined;
  try {
    const model = { ...sessionModel(s, cache), contextLength: o.contextLength, encode: () => encoded, speculator };
    const opts = { ...(o.onText ? { onText: o.onText } : {}), ...(o.signal ? { signal: o.signal } : {}) };
    return { promptIds: encoded.ids, ...(await generateAsync(model, request, opts)) };
  } finally {
    speculator?.dispose();
    cache.dispose();
  }
}

export function speedLine(r: GenerateResult): string {
  const spec = r.speculative;
  return (
    `prompt: ${r.promptTokens} tokens, ${r.promptTps.toFixed(1)} tok/s; ` +
    `generation: ${r.tokenIds.length} tokens, ${r.decodeTps.toFixed(1)} tok/s` +
    (spec ? `; draft: ${spec.acceptedTokens} of ${spec.draftTokens} tokens accepted` : "")
  );
}

/** generate --json's speculative figures; acceptance_rate is 0 when nothing was proposed. */
function speculativeJson(c: { draftTokens: number; acceptedTokens: number }) {
  return {
    acceptance_rate: c.draftTokens > 0 ? c.acceptedTokens / c.draftTokens : 0,
    draft_tokens: c.draftTokens,
    accepted_tokens: c.acceptedTokens,
  };
}

/** --prompt's text; "-" reads it from stdin. */
async function promptText(p: string): Promise<string> {
  if (p !== "-") return p;
  const text = await new Response(Bun.stdin.stream()).text();
  return text.replace(/\r?\n$/, "");
}

export function register(program: Command): void {
  const cmd = program
    .command("generate")
    .description("Generate text from a prompt (streams to stdout; speeds to stderr)")
    .requiredOption("-p, --prompt <text>", "prompt text; - reads it from stdin")
    .option("--max-tokens <n>", "maximum tokens to generate", "256")
    .option("--raw", "send the prompt as plain text, without the model's chat template")
    .option("--chat", "wrap the prompt in the model's chat template as a user message (the default when the model has one)")
    .option("--system <text>", "system message (with the chat template)")
    .option("--json", "print one JSON object (prompt_ids, token_ids, text, finish_reason, prompt_tps, decode_tps) instead of streaming")
    .option("--ignore-eos", "keep generating past the model's end-of-sequence tokens, up to --max-tokens");
  addSpellings(addDraftOptions(addKvOption(addSamplingOptions(addBackendOptions(addModelOptions(cmd))))), GENERATE_SPELLINGS)
    .action(
      action(async (f: GenerateFlags) => {
        applyBackendFlags(f);
        const kvQuant = kvCodecFrom(f);
        const maxTokens = num("max-tokens", f.maxTokens, true);
        if (maxTokens < 1) throw new RmlxError("invalid_argument", "--max-tokens must be at least 1");
        const sampling = samplingFrom(f);
        if (f.raw && f.chat) throw new RmlxError("invalid_argument", "--raw and --chat contradict each other");
        if (f.raw && f.system !== undefined) throw new RmlxError("invalid_argument", "--system needs the chat template (leave out --raw)");
        const text = await promptText(f.prompt);
        const { session: s, contextLength } = openModel(f);
        if (f.chat && !s.template) throw new RmlxError("bad_model", `${s.md.dir}: no chat template (run without --chat)`);
        if (!s.template && f.system !== undefined) throw new RmlxError("bad_model", `${s.md.dir}: no chat template, so no --system`);
        let prompt: CliPrompt = { prompt: text };
        if (s.template && !f.raw) {
          const messages: ChatMessage[] = f.system !== undefined ? [{ role: "system", content: f.system }] : [];
          prompt = { messages: [...messages, { role: "user", content: text }] };
        }
        const onText = f.json ? undefined : (t: string) => process.stdout.write(t);
        const draft = draftFrom(f, s);
        const r = await runGeneration(s, prompt, {
          maxTokens,
          sampling,
          contextLength,
          kvQuant,
          draft,
          ignoreEos: Boolean(f.ignoreEos),
          ...(onText ? { onText } : {}),
        });
        if (f.json) {
          const out = {
            prompt_ids: r.promptIds,
            token_ids: r.tokenIds,
            text: r.text,
            finish_reason: r.finishReason,
            prompt_tps: r.promptTps,
            decode_tps: r.decodeTps,
            ...(r.speculative ? speculativeJson(r.speculative) : {}),
          };
          process.stdout.write(`${JSON.stringify(out)}\n`);
        } else {
          process.stdout.write("\n");
          process.stderr.write(`${speedLine(r)}\n`);
        }
      }),
    );
}
