// Chat templates: the Jinja program a model ships (tokenizer_config.json's chat_template, or chat_template.jinja)
// rendered with @huggingface/jinja, with the variables transformers' apply_chat_template passes.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import type { ChatMessage, ToolSpec } from "./chat_types.ts";
import { RmlxError } from "../errors.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { foldToolsIntoMessages } from "./tool_prompt.ts";

type Json = Record<string, unknown>;

export interface RenderOptions {
  messages: ChatMessage[];
  tools?: ToolSpec[];
  /** End the prompt with the opening of an assistant turn. Default true. */
  addGenerationPrompt?: boolean;
  /** Extra template variables (enable_thinking, reasoning_effort, documents, ...). */
  kwargs?: Record<string, unknown>;
}

/** Special-token strings tokenizer_config.json defines; templates refer to them by these names. */
const TOKEN_VARIABLES = ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"];

function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v !== null && typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content as string;
  return undefined;
}

function compile(name: string, source: string): Template {
  try {
    return new Template(source);
  } catch (e) {
    throw new RmlxError("bad_model", `chat template "${name}" does not parse: ${(e as Error).message}`);
  }
}

/** OpenAI content may be a list of parts; templates written for text expect one string. */
function contentText(content: unknown): string {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((p) => (p && typeof p === "object" && typeof (p as Json).text === "string" ? ((p as Json).text as string) : ""))
      .join("");
  }
  throw new RmlxError("invalid_argument", "message content must be a string, null or a list of text parts");
}

/**
 * Templates (Qwen, Hermes, Llama 3.1) iterate over tool-call arguments as a mapping, while OpenAI clients send
 * them as a JSON string: parse the string where it holds an object, as vLLM does before rendering.
 */
function templateArguments(args: unknown): unknown {
  if (typeof args !== "string") return args;
  try {
    const v = JSON.parse(args);
    return v !== null && typeof v === "object" && !Array.isArray(v) ? v : args;
  } catch {
    return args;
  }
}

function withoutUndefined(o: Json): Json {
  const out: Json = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out;
}

function templateMessage(m: ChatMessage): Json {
  if (!m || typeof m !== "object" || typeof m.role !== "string") {
    throw new RmlxError("invalid_argument", "every message needs a string role");
  }
  const out: Json = withoutUndefined({ ...m, content: contentText(m.content) });
  if (Array.isArray(m.tool_calls)) {
    out.tool_calls = m.tool_calls.map((c) =>
      withoutUndefined({ ...c, function: withoutUndefined({ ...c.function, arguments: templateArguments(c.function?.arguments) }) }),
    );
  }
  return out;
}

/** A tool message's content as a tool result: a JSON object or list as such, anything else as text. */
function toolResult(content: unknown): unknown {
  if (typeof content !== "string") return content ?? "";
  try {
    const v = JSON.parse(content);
    return v !== null && typeof v === "object" ? v : content;
  } catch {
    return content;
  }
}

/**
 * Gemma 4's first templates read tool results from the calling assistant message's `tool_responses` ({name,
 * response}) and render them inside the model's turn, right after its calls; OpenAI clients send them as "tool"
 * messages after it. Each tool message that follows an assistant message with calls moves there, named after the
 * call it answers (by tool_call_id, else by position).
 */
function attachToolResponses(messages: Json[]): Json[] {
  const out: Json[] = [];
  for (const m of messages) {
    const prev = out[out.length - 1];
    const calls = prev?.role === "assistant" && Array.isArray(prev.tool_calls) ? (prev.tool_calls as Json[]) : [];
    if (m.role !== "tool" || calls.length === 0) {
      out.push(m);
      continue;
    }
    const responses = (prev!.tool_responses as Json[] | undefined) ?? [];
    const call = calls.find((c) => c.id !== undefined && c.id === m.tool_call_id) ?? calls[responses.length];
    const name = m.name ?? (call?.function as Json | undefined)?.name ?? "unknown";
    responses.push({ name, response: toolResult(m.content) });
    prev!.tool_responses = responses;
  }
  return out;
}

/** A chat template as models ship it: one Jinja text, or tokenizer_config's list of named templates. */
export type ChatTemplateSource = string | { name: string; template: string }[];

/**
 * A chat template file given in place of a model's own (--chat-template): Jinja text, or a JSON file with a
 * chat_template entry (chat_template.json, tokenizer_config.json). Checked here, so a bad file fails at once.
 */
export function readChatTemplateFile(path: string): ChatTemplateSource {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new RmlxError("invalid_argument", `--chat-template: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let source: ChatTemplateSource = text;
  if (path.endsWith(".json")) {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (e) {
      throw new RmlxError("invalid_argument", `--chat-template: ${path} is not valid JSON: ${(e as Error).message}`);
    }
    const v = json && typeof json === "object" ? (json as Json).chat_template : undefined;
    if (typeof v !== "string" && !Array.isArray(v)) throw new RmlxError("invalid_argument", `--chat-template: ${path} has no chat_template`);
    source = v as ChatTemplateSource;
  }
  try {
    new ChatTemplate(source);
  } catch (e) {
    throw new RmlxError("invalid_argument", `--chat-template: ${path}: ${(e as Error).message}`);
  }
  return source;
}

export class ChatTemplate {
  private readonly templates: Map<string, Template>;
  private readonly sources: Map<string, string>;
  private readonly tokenVariables: Json;

  /** source: one template, or tokenizer_config's list of named templates. */
  constructor(source: ChatTemplateSource, specialTokens: Json = {}) {
    this.templates = new Map();
    this.sources = new Map();
    const named = typeof source === "string" ? [{ name: "default", template: source }] : source;
    for (const t of named) {
      if (typeof t?.name !== "string" || typeof t.template !== "string") {
        throw new RmlxError("bad_model", "chat_template list entries need a name and a template");
      }
      this.templates.set(t.name, compile(t.name, t.template));
      this.sources.set(t.name, t.template);
    }
    if (this.templates.size === 0) throw new RmlxError("bad_model", "chat_template is empty");
    this.tokenVariables = {};
    for (const k of TOKEN_VARIABLES) {
      const text = tokenText(specialTokens[k]);
      if (text !== undefined) this.tokenVariables[k] = text;
    }
  }

  /** A template from tokenizer_config.json, with chat_template.jinja text taking precedence when given. */
  static fromConfig(tokenizerConfig: Json, jinjaText?: string): ChatTemplate | undefined {
    const source = jinjaText ?? tokenizerConfig.chat_template;
    if (source === undefined || source === null) return undefined;
    if (typeof source !== "string" && !Array.isArray(source)) {
      throw new RmlxError("bad_model", "chat_template must be a string or a list of {name, template}");
    }
    return new ChatTemplate(source as ChatTemplateSource, tokenizerConfig);
  }

  /** The template a model directory ships: chat_template.jinja, else tokenizer_config.json's chat_template. */
  static fromModelDir(dir: string, tokenizerConfig: Json): ChatTemplate | undefined {
    const jinjaPath = join(dir, "chat_template.jinja");
    const jinjaText = existsSync(jinjaPath) ? readFileSync(jinjaPath, "utf8") : undefined;
    return ChatTemplate.fromConfig(tokenizerConfig, jinjaText);
  }

  /** The template used when tools are (or are not) given, as transformers picks among named ones. */
  private pick(withTools: boolean): string {
    if (withTools && this.templates.has("tool_use")) return "tool_use";
    if (this.templates.has("default")) return "default";
    if (this.templates.size === 1) return this.templates.keys().next().value!;
    throw new RmlxError("bad_model", `no "default" among chat templates ${[...this.templates.keys()].join(", ")}`);
  }

  /** The Jinja text of the template that would render (used to choose tool-call and reasoning parsers). */
  source(withTools = false): string {
    return this.sources.get(this.pick(withTools))!;
  }

  /** Whether the template renders tools itself; when not, render() folds them into the messages. */
  supportsTools(): boolean {
    return /\btools\b/.test(this.source(true));
  }

  render(opts: RenderOptions): string {
    if (!Array.isArray(opts.messages)) throw new RmlxError("invalid_argument", "messages must be a list");
    let tools = opts.tools && opts.tools.length > 0 ? opts.tools : undefined;
    let source = opts.messages;
    const name = this.pick(tools !== undefined);
    if (tools && !this.supportsTools()) {
      source = foldToolsIntoMessages(
        source.map((m) => ({ ...m, content: contentText(m.content) })),
        tools,
      );
      tools = undefined;
    }
    let messages = source.map(templateMessage);
    const text = this.sources.get(name)!;
    if (text.includes("tool_responses") && !text.includes("tool_call_id")) messages = attachToolResponses(messages);
    // transformers always passes tools and documents, as None when absent; templates test `tools is not none`.
    const vars: Json = {
      documents: null,
      ...this.tokenVariables,
      ...(opts.kwargs ?? {}),
      messages,
      tools: tools ?? null,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
    };
    try {
      return this.templates.get(name)!.render(withoutUndefined(vars));
    } catch (e) {
      if (e instanceof RmlxError) throw e;
      throw new RmlxError("invalid_argument", `chat template: ${(e as Error).message}`);
    }
  }
}

/**
 * Renders and tokenizes a chat. The rendered text already holds every special token the template wants (a BOS
 * included), so it is tokenized without adding any, as transformers' apply_chat_template does.
 */
export function applyChatTemplate(tokenizer: Tokenizer, template: ChatTemplate, opts: RenderOptions): { text: string; ids: number[] } {
  const text = template.render(opts);
  return { text, ids: tokenizer.encode(text, { addSpecialTokens: false }) };
}
