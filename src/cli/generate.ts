// `rmlx generate`: one prompt, its reply streamed to stdout, speeds on stderr. The request runs on the engine's
// Scheduler in this process, the loop the server runs.
import type { Command } from "commander";
import { builtinModelDir } from "../builtin/index.ts";
import { cacheForTokens, generate, type GenerateResult } from "../engine/generate.ts";
import { encodePrompt, loadSession, sessionModel, type Session } from "../engine/session.ts";
import { DEFAULT_SAMPLING, type ChatMessage, type SamplingParams } from "../engine/types.ts";
import { RmlxError } from "../errors.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { addKvOption, kvCodecFrom, type KvFlags } from "./kv_option.ts";

export interface SamplingFlags {
  temp: string;
  topP: string;
  topK: string;
  minP: string;
  repetitionPenalty: string;
  seed?: string;
}

interface GenerateFlags extends SamplingFlags, BackendFlags, KvFlags {
  model?: string;
  prompt?: string;
  maxTokens: string;
  chat?: boolean;
  system?: string;
  json?: boolean;
}

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

/** The prompt's ids and the reply, through a cache sized for the prompt and maxTokens. */
export function runGeneration(
  s: Session,
  prompt: CliPrompt,
  maxTokens: number,
  sampling: SamplingParams,
  onText?: (t: string) => void,
  kvQuant = "f32",
): GenerateResult & { promptIds: number[] } {
  if ("messages" in prompt && !s.template) throw new RmlxError("bad_model", `${s.md.dir}: no chat template (run without --chat)`);
  const request = { ...prompt, maxTokens, sampling, stop: [], stopTokenIds: [] };
  // Encoded here once, because the cache is sized by the prompt's length.
  const encoded = encodePrompt(s, request);
  const cache = cacheForTokens(s.model, Math.min(encoded.ids.length + maxTokens, s.model.config.contextLength), kvQuant);
  try {
    const model = { ...sessionModel(s, cache), encode: () => encoded };
    return { promptIds: encoded.ids, ...generate(model, request, onText ? { onText } : {}) };
  } finally {
    cache.dispose();
  }
}

export function speedLine(r: GenerateResult): string {
  return (
    `prompt: ${r.promptTokens} tokens, ${r.promptTps.toFixed(1)} tok/s; ` +
    `generation: ${r.tokenIds.length} tokens, ${r.decodeTps.toFixed(1)} tok/s`
  );
}

export function register(program: Command): void {
  const cmd = program
    .command("generate")
    .description("Generate text from a prompt (streams to stdout; speeds to stderr)")
    .option("--model <dir>", "model directory (default: the built-in model)")
    .requiredOption("--prompt <text>", "prompt text")
    .option("--max-tokens <n>", "maximum tokens to generate", "256")
    .option("--chat", "wrap the prompt in the model's chat template as a user message")
    .option("--system <text>", "system message (with --chat)")
    .option("--json", "print one JSON object (prompt_ids, token_ids, text, prompt_tps, decode_tps) instead of streaming");
  addKvOption(addSamplingOptions(addBackendOptions(cmd))).action(
    action(async (f: GenerateFlags) => {
      applyBackendFlags(f);
      const kvQuant = kvCodecFrom(f);
      const maxTokens = num("max-tokens", f.maxTokens, true);
      if (maxTokens < 1) throw new RmlxError("invalid_argument", "--max-tokens must be at least 1");
      const sampling = samplingFrom(f);
      const s = loadSession(f.model ?? builtinModelDir());
      let messages: ChatMessage[] | null = null;
      if (f.chat) {
        messages = [];
        if (f.system !== undefined) messages.push({ role: "system", content: f.system });
        messages.push({ role: "user", content: f.prompt! });
      } else if (f.system !== undefined) {
        throw new RmlxError("invalid_argument", "--system needs --chat");
      }
      const onText = f.json ? undefined : (t: string) => process.stdout.write(t);
      const r = runGeneration(s, messages ? { messages } : { prompt: f.prompt! }, maxTokens, sampling, onText, kvQuant);
      if (f.json) {
        const out = {
          prompt_ids: r.promptIds,
          token_ids: r.tokenIds,
          text: r.text,
          finish_reason: r.finishReason,
          prompt_tps: r.promptTps,
          decode_tps: r.decodeTps,
        };
        process.stdout.write(`${JSON.stringify(out)}\n`);
      } else {
        process.stdout.write("\n");
        process.stderr.write(`${speedLine(r)}\n`);
      }
    }),
  );
}
