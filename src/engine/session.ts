// A loaded model with its tokenizer and chat template, and the SchedulerModel over it: the server's worker and the
// CLI's generate and chat hand their requests to a Scheduler through this one adapter, so prompts are encoded,
// steps run and text is made the same way in both.
import { getBackend } from "../backend/index.ts";
import type { Backend, RowDraw } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import { openModelDir, type ModelDir } from "../io/model_dir.ts";
import type { ModelOptions } from "../models/family.ts";
import type { Model } from "../models/model.ts";
import { loadModel, textModelType } from "../models/registry.ts";
import { applyChatTemplate, ChatTemplate, type ChatTemplateSource } from "../text/chat_template.ts";
import { Detokenizer } from "../text/detokenizer.ts";
import { promptOpensReasoning, reasoningTagsFor, THINK_TAGS, type ReasoningTags } from "../text/reasoning.ts";
import { StopStrings } from "../text/stop.ts";
import { Tokenizer } from "../text/tokenizer.ts";
import { GEMMA4_CALL_CLOSE, GEMMA4_CALL_OPEN, GEMMA4_QUOTE, toolParserFor, type ToolParserKind } from "../text/tool_parsers.ts";
import { ForcedGemma4Call } from "./gemma4_tool_call.ts";
import { launchStepDraw, runStep, runStepDraw, runStepHidden, type LaunchedIds } from "./forward_batch.ts";
import { ConstraintVocab, JsonConstraint } from "./json_constraint.ts";
import type { BuiltStep, KvCache } from "./kv/kv_cache.ts";
import type { SchedulerModel } from "./scheduler.ts";
import { AfterReasoning, type LogitsProcessor } from "./logits_processor.ts";
import { ForcedPythonicCall, ForcedToolCall, toolCallSchema } from "./tool_constraint.ts";
import { ForcedXmlCall } from "./xml_tool_call.ts";
import type { ChatMessage, GenerateRequest, SamplingDefaults } from "./types.ts";

export interface Session {
  md: ModelDir;
  model: Model;
  tokenizer: Tokenizer;
  template?: ChatTemplate;
  /** EOS ids of the model's configs and its tokenizer. */
  stopTokenIds: number[];
  /** What the model's type and chat template tell about its output, and its generation_config's sampling. */
  info: {
    modelType: string;
    reasoning: boolean;
    reasoningTags?: ReasoningTags;
    toolParser?: ToolParserKind;
    sampling: SamplingDefaults;
  };
}

export interface SessionOptions {
  /** A chat template used instead of the model's own (--chat-template). */
  chatTemplate?: ChatTemplateSource;
  /** How to run the checkpoint where its files leave a choice (--bitnet-activations). */
  modelOptions?: ModelOptions;
}

const finite = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/**
 * The sampling values of generation_config.json that vLLM reads (temperature, top_p, top_k, min_p,
 * repetition_penalty), out-of-range ones left out; do_sample false means greedy, as in transformers.
 */
export function samplingDefaults(gen: Record<string, unknown> | undefined): SamplingDefaults {
  const out: SamplingDefaults = {};
  if (!gen) return out;
  if (gen.do_sample === false) return { temperature: 0 };
  const { temperature, top_p: topP, top_k: topK, min_p: minP, repetition_penalty: rep } = gen;
  if (finite(temperature) && temperature >= 0) out.temperature = temperature;
  if (finite(topP) && topP > 0 && topP <= 1) out.topP = topP;
  if (finite(topK) && Number.isInteger(topK)) out.topK = Math.max(0, topK);
  if (finite(minP) && minP >= 0 && minP <= 1) out.minP = minP;
  if (finite(rep) && rep > 0) out.repetitionPenalty = rep;
  return out;
}

export function loadSession(dir: string, backend: Backend = getBackend(), opts: SessionOptions = {}): Session {
  const md = openModelDir(dir);
  if (!md.tokenizerJson) throw new RmlxError("bad_model", `${dir}: no tokenizer.json`);
  const tokenizer = Tokenizer.fromModelDir(dir);
  const model = loadModel(backend, md, opts.modelOptions);
  const template =
    opts.chatTemplate !== undefined
      ? new ChatTemplate(opts.chatTemplate, md.tokenizerConfig ?? {})
      : ChatTemplate.fromModelDir(dir, md.tokenizerConfig ?? {});
  const stopTokenIds = [...new Set([...md.config.eosTokenIds, ...tokenizer.eosTokenIds])];
  const modelType = textModelType(md);
  const chatTemplate = template?.source(true);
  const reasoningTags = reasoningTagsFor({ modelType, chatTemplate });
  const info: Session["info"] = {
    modelType,
    reasoning: reasoningTags !== undefined,
    ...(reasoningTags && reasoningTags !== THINK_TAGS ? { reasoningTags } : {}),
    toolParser: toolParserFor({ modelType, chatTemplate }),
    sampling: samplingDefaults(md.generationConfig),
  };
  const s: Session = { md, model, tokenizer, stopTokenIds, info };
  if (template) s.template = template;
  return s;
}

type ChatPrompt = Pick<GenerateRequest, "tools" | "templateKwargs" | "addGenerationPrompt"> & { messages: ChatMessage[] };

/** Messages through the model's chat template: the prompt text and its ids. */
export function renderChat(s: Session, req: ChatPrompt): { text: string; ids: number[] } {
  if (!s.template) throw new RmlxError("invalid_argument", "this model has no chat template; send a plain prompt to /v1/completions");
  const { messages, tools, templateKwargs: kwargs, addGenerationPrompt } = req;
  return applyChatTemplate(s.tokenizer, s.template, { messages, tools, kwargs, addGenerationPrompt });
}

type Prompt = Pick<GenerateRequest, "prompt" | "messages" | "tools" | "templateKwargs" | "addGenerationPrompt">;

/** Prompt token ids of a request (chat template applied), and whether they end inside an open reasoning section. */
export function encodePrompt(s: Session, req: Prompt): { ids: number[]; startsInReasoning: boolean } {
  if (req.messages) {
    const { text, ids } = renderChat(s, { ...req, messages: req.messages });
    return { ids, startsInReasoning: s.info.reasoning && promptOpensReasoning(text, s.info.reasoningTags ?? THINK_TAGS) };
  }
  if (typeof req.prompt === "string") return { ids: s.tokenizer.encode(req.prompt), startsInReasoning: false };
  return { ids: checkedIds(req.prompt ?? [], s.model.vocabSize), startsInReasoning: false };
}

function checkedIds(ids: readonly number[], vocab: number): number[] {
  const bad = ids.find((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
  if (bad !== undefined) throw new RmlxError("invalid_argument", `prompt token ${bad} is outside the vocabulary (${vocab})`);
  return [...ids];
}

/**
 * A prompt too long for the context, with its middle cut out: its first tokens (the template's opening, the start
 * of the system prompt) and its last (the newest messages and the assistant's turn) stay, `budget` in all.
 */
export function cutPromptMiddle(ids: number[], budget: number): number[] {
  if (ids.length <= budget) return ids;
  const head = Math.min(256, Math.floor(budget / 4));
  return [...ids.slice(0, head), ...ids.slice(ids.length - (budget - head))];
}

/**
 * A request's prompt made to fit the context (--prompt-overflow truncate). A chat loses, until it leaves room for
 * min(maxTokens, a quarter of the context) tokens of reply: its older turns, oldest first (the newest user turn and
 * what follows it stay whole); then the tool definitions; then the end of its system message; a prompt still too
 * long (or a raw one) loses its middle tokens. `truncatedFrom` is the whole prompt's length when anything went.
 */
export function encodeToFit(
  s: Session,
  req: Prompt & { maxTokens: number },
  contextLength: number,
): { ids: number[]; startsInReasoning: boolean; truncatedFrom?: number } {
  const whole = encodePrompt(s, req);
  if (whole.ids.length < contextLength) return whole;
  const budget = contextLength - Math.max(1, Math.min(req.maxTokens, Math.floor(contextLength / 4)));
  let last = whole;
  if (req.messages) {
    let messages = [...req.messages];
    let tools = req.tools;
    const tryFit = () => {
      last = encodePrompt(s, { ...req, messages, tools });
      return last.ids.length <= budget;
    };
    // Older turns: from the first message after the leading system ones up to the next user message.
    for (;;) {
      const first = messages.findIndex((m) => m.role !== "system");
      const next = messages.findIndex((m, i) => i > first && m.role === "user");
      if (first < 0 || next < 0) break;
      messages.splice(first, next - first);
      if (tryFit()) return { ...last, truncatedFrom: whole.ids.length };
    }
    if (tools?.length) {
      tools = undefined;
      if (tryFit()) return { ...last, truncatedFrom: whole.ids.length };
    }
    // The system message, cut to the longest start that fits (found by bisection over its characters).
    const system = messages[0]?.role === "system" ? messages[0] : undefined;
    if (system) {
      const sys = String(system.content ?? "");
      const rest = messages.slice(1);
      const withSystem = (n: number) => (messages = n > 0 ? [{ ...system, content: sys.slice(0, n) }, ...rest] : rest);
      let lo = 0;
      let hi = sys.length;
      while (lo < hi) {
        const mid = Math.ceil((lo + hi) / 2);
        withSystem(mid);
        if (tryFit()) lo = mid;
        else hi = mid - 1;
      }
      withSystem(lo);
      if (tryFit()) return { ...last, truncatedFrom: whole.ids.length };
    }
  }
  return { ...last, ids: cutPromptMiddle(last.ids, budget), truncatedFrom: whole.ids.length };
}

/** The ids of the reasoning tags (<think> and </think>) when each is one token (what thinking budgets need). */
function thinkTokens(s: Session): { open: number[]; close: number[] } | undefined {
  const tags = s.info.reasoningTags ?? THINK_TAGS;
  const open = s.tokenizer.encode(tags.open, { addSpecialTokens: false });
  const close = s.tokenizer.encode(tags.close, { addSpecialTokens: false });
  return open.length > 0 && close.length > 0 ? { open, close } : undefined;
}

const NO_TEXT = { push: () => "", flush: () => "" };

/**
 * A bare model as a SchedulerModel: prompts are token ids, output is token ids with no text and no EOS of its
 * own. What the bench runs, which needs no tokenizer.
 */
export function tokenModel(model: Model, cache: KvCache): SchedulerModel {
  // One logits buffer for every step: the scheduler samples from a step's rows before it runs the next.
  let logits = new Float32Array(0);
  return {
    cache,
    contextLength: model.config.contextLength,
    eosTokenIds: [],
    encode(req) {
      if (typeof req.prompt === "string" || req.messages) throw new RmlxError("invalid_argument", "without a tokenizer the prompt must be token ids");
      return { ids: checkedIds(req.prompt ?? [], model.vocabSize), startsInReasoning: false };
    },
    forward(step, logitRows) {
      const need = logitRows.length * model.vocabSize;
      if (logits.length < need) logits = new Float32Array(need);
      return runStep(model, cache, step, logitRows, logits);
    },
    ...(model.forwardHidden
      ? {
          forwardHidden(step: BuiltStep, logitRows: Int32Array, hiddenRows: Int32Array) {
            const need = logitRows.length * model.vocabSize;
            if (logits.length < need) logits = new Float32Array(need);
            return runStepHidden(model, cache, step, logitRows, hiddenRows, logits);
          },
        }
      : {}),
    // The native sampler reads the logits where they already are; the mlx backend would copy them out first, so it
    // draws the tokens on the device, and pipelines the steps where it can.
    ...(model.backend.drawRows
      ? {
          forwardDraw: (step: BuiltStep, logitRows: Int32Array, draws: readonly RowDraw[]) => runStepDraw(model, cache, step, logitRows, draws),
          drawsAt: (temperature: number) => model.backend.drawPays?.(temperature) ?? true,
          vocabSize: model.vocabSize,
        }
      : {}),
    ...(model.backend.drawRows && model.backend.evalAsync
      ? {
          launchDraw: (step: BuiltStep, logitRows: Int32Array, draws: readonly RowDraw[], inputs?: LaunchedIds) =>
            launchStepDraw(model, cache, step, logitRows, draws, inputs),
        }
      : {}),
    newDetokenizer: () => NO_TEXT,
    newStopFilter: (stops) => new StopStrings(stops),
    tokenBytes: () => new Uint8Array(0),
  };
}

/** A session as a SchedulerModel: chat templates, text, EOS, JSON and tool-call constraints, thinking budgets. */
export function sessionModel(s: Session, cache: KvCache): SchedulerModel {
  const { reasoning, toolParser } = s.info;
  let vocab: ConstraintVocab | undefined;
  return {
    ...tokenModel(s.model, cache),
    reasoningTokens: reasoning ? thinkTokens(s) : undefined,
    eosTokenIds: s.stopTokenIds,
    encode: (req) => encodePrompt(s, req),
    newDetokenizer: () => new Detokenizer(s.tokenizer),
    tokenBytes: (id) => s.tokenizer.tokenBytes(id),
    logitsProcessor(req, prompt) {
      const forced = req.requireToolCall && req.tools?.length ? toolParser : undefined;
      if (!req.jsonSchema && !forced) return null;
      vocab ??= new ConstraintVocab(s.tokenizer.allTokenBytes(), s.tokenizer.specialTokenIds, s.stopTokenIds);
      const inner = constraintFor(s, req, forced, vocab);
      if (!inner) return null;
      // The reply's call or JSON comes after the reasoning the prompt opened, not inside it.
      const tags = prompt?.startsInReasoning ? thinkTokens(s) : undefined;
      return tags ? new AfterReasoning(inner, tags.close[tags.close.length - 1]!, s.stopTokenIds) : inner;
    },
  };
}

/** The constraint a request's tool_choice or response_format asks for, in the model's own call format. */
function constraintFor(s: Session, req: GenerateRequest, forced: ToolParserKind | undefined, vocab: ConstraintVocab): LogitsProcessor | null {
  const ids = (text: string) => s.tokenizer.encode(text, { addSpecialTokens: false });
  if (forced === "hermes") return new ForcedToolCall(toolCallSchema(req.tools!, "arguments"), vocab, ids("<tool_call>\n"), ids("\n</tool_call>"));
  if (forced === "qwen3_coder") return new ForcedXmlCall(req.tools!, vocab);
  if (forced === "llama3_json") return new ForcedToolCall(toolCallSchema(req.tools!, "parameters"), vocab, [], []);
  if (forced === "pythonic") return new ForcedPythonicCall(req.tools!, vocab);
  if (forced === "gemma4") {
    const one = (text: string) => {
      const t = ids(text);
      if (t.length !== 1) throw new RmlxError("invalid_argument", `a required tool call needs ${text} to be one token of this model`);
      return t[0]!;
    };
    return new ForcedGemma4Call(req.tools!, vocab, { open: one(GEMMA4_CALL_OPEN), close: one(GEMMA4_CALL_CLOSE), quote: one(GEMMA4_QUOTE) });
  }
  return req.jsonSchema ? new JsonConstraint(req.jsonSchema, vocab) : null;
}
