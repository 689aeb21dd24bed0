import type { ChatMessage, GenerateRequest, ToolSpec } from "../engine/types.ts";
import { HttpError } from "./errors.ts";
import { collect, newId, startGeneration, withModel, type ServerContext, type Started } from "./generation.ts";
import type { ModelEntry } from "./models.ts";
import type { ChatOutputParser } from "../text/output.ts";
import { outputShaper, type Shaped, type ToolCallOut } from "./output.ts";
import { anthropicSampling, defaultsFor } from "./sampling.ts";
import type { CountTokensBodyT, MessagesBodyT } from "./schemas.ts";
import { sseResponse, type SseSend } from "./sse.ts";

type Block = Exclude<MessagesBodyT["messages"][number]["content"], string>[number];
type InnerBlock = Exclude<NonNullable<Block["content"]>, string>[number];

/** Images cannot be served by the text-only models rmlx runs: a clear refusal rather than a silent drop. */
function noImages(where: string): never {
  throw new HttpError(400, `image content (in ${where}) is not supported: this build serves text only`);
}

/**
 * Blocks nested where the request schema leaves the shape open (a document's content source, a search result's
 * content): checked here, so that a malformed one is a 400 rather than a failure further on.
 */
function nestedBlocks(v: unknown, where: string): InnerBlock[] {
  const isBlock = (b: unknown) => b !== null && typeof b === "object" && typeof (b as { type?: unknown }).type === "string";
  if (Array.isArray(v) && v.every(isBlock)) return v as InnerBlock[];
  throw new HttpError(400, `the content of ${where} must be a list of content blocks`);
}

/**
 * A document block as the text the model reads: a plain-text source, or a content source's text blocks; PDFs,
 * URLs and uploaded files would need fetching or parsing that rmlx does not do.
 */
function documentText(b: { title?: string | null; source?: unknown }): string {
  const src = (b.source ?? {}) as { type?: unknown; data?: unknown; content?: unknown };
  let body: string;
  if (src.type === "text") {
    if (typeof src.data !== "string") throw new HttpError(400, "a text document source needs its text as data");
    body = src.data;
  } else if (src.type === "content") {
    body = typeof src.content === "string" ? src.content : innerText(nestedBlocks(src.content, "a document"), "a document");
  } else {
    throw new HttpError(400, `document source type '${String(src.type)}' is not supported: send the document as text (source type 'text' or 'content')`);
  }
  return b.title ? `${b.title}\n\n${body}` : body;
}

/** The text of blocks nested in a tool_result, a document or a search result. */
function innerText(blocks: InnerBlock[], where: string): string {
  const parts: string[] = [];
  for (const c of blocks) {
    if (c.type === "text") parts.push(c.text ?? "");
    else if (c.type === "document") parts.push(documentText(c));
    else if (c.type === "search_result") parts.push(searchResultText(c));
    else if (c.type === "image") noImages(where);
    else throw new HttpError(400, `content block type '${c.type}' is not supported in ${where}`);
  }
  return parts.join("\n\n");
}

function searchResultText(b: { title?: string | null; source?: unknown; content?: unknown }): string {
  const head = [b.title, typeof b.source === "string" ? b.source : undefined].filter(Boolean).join("\n");
  const body = innerText(nestedBlocks(b.content ?? [], "a search result"), "a search result");
  return head ? `${head}\n\n${body}` : body;
}

function toolResultText(content: Block["content"]): string {
  if (content === undefined) return "";
  if (typeof content === "string") return content;
  return innerText(content, "a tool_result");
}

/** The system prompt: the top-level one, then every system entry of messages, in order. */
function systemPrompt(body: CountTokensBodyT): string {
  const texts: string[] = [];
  const add = (s: string | { type: string; text?: string }[]) => {
    if (typeof s === "string") return texts.push(s);
    const bad = s.find((b) => b.type !== "text");
    if (bad) throw new HttpError(400, `content block type '${bad.type}' is not supported in a system prompt`);
    texts.push(s.map((b) => b.text ?? "").join("\n"));
  };
  if (body.system !== undefined) add(body.system);
  for (const m of body.messages) if (m.role === "system") add(m.content);
  return texts.filter((t) => t.length > 0).join("\n");
}

/** Anthropic content blocks to chat-template messages: tool_use becomes tool_calls, tool_result a "tool" message. */
function toChatMessages(body: CountTokensBodyT): ChatMessage[] {
  const out: ChatMessage[] = [];
  // Chat templates take one system message, first: system entries inside messages join it.
  const system = systemPrompt(body);
  if (system) out.push({ role: "system", content: system });
  for (const m of body.messages) {
    if (m.role === "system") continue;
    if (typeof m.content === "string") {
      out.push({ role: m.role, content: m.content });
      continue;
    }
    if (m.role === "assistant") {
      const msg: ChatMessage = { role: "assistant", content: "" };
      for (const b of m.content) {
        if (b.type === "text") msg.content += b.text ?? "";
        else if (b.type === "thinking") msg.reasoning_content = (msg.reasoning_content ?? "") + (b.thinking ?? "");
        else if (b.type === "redacted_thinking") continue;
        else if (b.type === "tool_use") {
          if (!b.name || !b.id) throw new HttpError(400, "tool_use blocks need an id and a name");
          (msg.tool_calls ??= []).push({
            id: b.id,
            type: "function",
            function: { name: b.name, arguments: (b.input ?? {}) as Record<string, unknown> },
          });
        } else throw new HttpError(400, `content block type '${b.type}' is not supported in assistant messages`);
      }
      out.push(msg);
      continue;
    }
    let text: string | null = null;
    let passageLast = false;
    const flush = () => {
      if (text !== null) out.push({ role: "user", content: text });
      text = null;
    };
    // A document or search result is a passage of its own, set apart from the text around it.
    const add = (s: string, passage: boolean) => {
      text = text === null ? s : text + (passage || passageLast ? "\n\n" : "") + s;
      passageLast = passage;
    };
    for (const b of m.content) {
      if (b.type === "text") add(b.text ?? "", false);
      else if (b.type === "document") add(documentText(b), true);
      else if (b.type === "search_result") add(searchResultText(b), true);
      else if (b.type === "image") noImages("a user message");
      else if (b.type === "tool_result") {
        flush();
        if (!b.tool_use_id) throw new HttpError(400, "tool_result blocks need a tool_use_id");
        out.push({ role: "tool", tool_call_id: b.tool_use_id, content: toolResultText(b.content) });
      } else throw new HttpError(400, `content block type '${b.type}' is not supported: this build serves text only`);
    }
    flush();
  }
  return out;
}

function tools(body: CountTokensBodyT): ToolSpec[] | undefined {
  if (body.mcp_servers?.length) {
    throw new HttpError(400, "mcp_servers is not supported: rmlx does not call remote MCP servers; give their tools as client tools");
  }
  // Server tools are checked even when tool_choice hides the tools: the request asked for something rmlx cannot run.
  body.tools?.forEach((tl, i) => {
    if (tl.type && tl.type !== "custom") {
      throw new HttpError(400, `tools.${i}: server tool '${tl.name}' (type '${tl.type}') is not supported: rmlx runs client tools only (a name and an input_schema)`);
    }
    if (!tl.input_schema) throw new HttpError(400, `tools.${i}: tool '${tl.name}' needs an input_schema`);
  });
  if (!body.tools?.length) {
    if (body.tool_choice && body.tool_choice.type !== "auto" && body.tool_choice.type !== "none") {
      throw new HttpError(400, "tool_choice needs tools");
    }
    return undefined;
  }
  const choice = body.tool_choice?.type ?? "auto";
  if (choice === "none") return undefined;
  const specs: ToolSpec[] = body.tools.map((tl) => ({
    type: "function",
    function: { name: tl.name, description: tl.description, parameters: tl.input_schema },
  }));
  if (choice === "tool") {
    const named = specs.filter((s) => s.function.name === body.tool_choice!.name);
    if (named.length === 0) throw new HttpError(400, `tool_choice names unknown tool '${body.tool_choice!.name}'`);
    return named;
  }
  return specs;
}

/** The chat template's thinking switch: every thinking type but "disabled" turns it on. */
export function templateKwargs(body: CountTokensBodyT): Record<string, unknown> | undefined {
  if (!body.thinking) return undefined;
  return { enable_thinking: body.thinking.type !== "disabled" };
}

/**
 * Tokens the reasoning section may take (the engine ends it there, on models whose think tags are tokens).
 * Adaptive thinking names no budget: half of max_tokens keeps room for the reply after it.
 */
function thinkingBudget(body: MessagesBodyT): number | undefined {
  if (body.thinking?.type === "enabled") return body.thinking.budget_tokens;
  if (body.thinking?.type === "adaptive") return Math.floor(body.max_tokens / 2);
  return undefined;
}

function request(ctx: ServerContext, body: MessagesBodyT, m: ModelEntry): GenerateRequest {
  const offered = tools(body);
  const choice = body.tool_choice?.type;
  return {
    id: newId("gen-"),
    model: m.name,
    messages: toChatMessages(body),
    tools: offered,
    requireToolCall: offered !== undefined && (choice === "any" || choice === "tool"),
    templateKwargs: templateKwargs(body),
    addGenerationPrompt: true,
    maxTokens: body.max_tokens,
    sampling: anthropicSampling(body, defaultsFor(ctx.defaults, m)),
    stop: body.stop_sequences ?? [],
    stopTokenIds: [],
    thinkingBudget: thinkingBudget(body),
    jsonSchema: (body.output_config?.format ?? body.output_format)?.schema,
  };
}

/** Prompt tokens as Anthropic counts them: input_tokens is the uncached part, so the three add up to the prompt. */
function inputUsage(started: Started) {
  return {
    input_tokens: started.promptTokens - started.cachedTokens,
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: started.cachedTokens,
  };
}

function stopReason(reason: string, stoppedBy: string | number | undefined, stops: string[], toolCalls: number) {
  // As in OpenAI's finish_reason: a reply cut by max_tokens says so, tool calls or not.
  if (reason === "length") return { stop_reason: "max_tokens", stop_sequence: null };
  if (toolCalls > 0) return { stop_reason: "tool_use", stop_sequence: null };
  if (typeof stoppedBy === "string" && stops.includes(stoppedBy)) return { stop_reason: "stop_sequence", stop_sequence: stoppedBy };
  return { stop_reason: "end_turn", stop_sequence: null };
}

function toolUse(call: ToolCallOut) {
  let input: unknown;
  try {
    input = JSON.parse(call.function.arguments || "{}");
  } catch {
    input = {};
  }
  return { type: "tool_use", id: `toolu_${call.id.replace(/^call_/, "")}`, name: call.function.name, input };
}

function shaper(m: ModelEntry, req: GenerateRequest, started: Started): ChatOutputParser {
  return outputShaper({ info: m.info, startsInReasoning: started.startsInReasoning ?? false, tools: req.tools });
}

export async function messages(ctx: ServerContext, body: MessagesBodyT, signal?: AbortSignal): Promise<Response> {
  const m = await ctx.models.acquire(body.model);
  if (body.stream) {
    try {
      return await streamMessages(ctx, body, m, signal);
    } catch (e) {
      ctx.models.release(m);
      throw e;
    }
  }
  try {
    const req = request(ctx, body, m);
    const r = await collect(ctx, req, "messages", (started) => shaper(m, req, started), signal);
    const content: unknown[] = [];
    if (r.shaped.reasoning) content.push({ type: "thinking", thinking: r.shaped.reasoning, signature: "" });
    if (r.shaped.content) content.push({ type: "text", text: r.shaped.content });
    for (const c of r.shaped.toolCalls) content.push(toolUse(c));
    return Response.json({
      id: newId("msg_"),
      type: "message",
      role: "assistant",
      model: m.name,
      content,
      ...stopReason(r.done.finishReason, r.done.stoppedBy, body.stop_sequences ?? [], r.shaped.toolCalls.length),
      usage: { ...inputUsage(r.started), output_tokens: r.done.usage.completionTokens },
    });
  } finally {
    ctx.models.release(m);
  }
}

function anthropicStreamError(err: unknown, send: SseSend): void {
  const e = err instanceof HttpError ? err : new HttpError(500, err instanceof Error ? err.message : String(err));
  send({ type: "error", error: { type: e.status === 400 ? "invalid_request_error" : "api_error", message: e.message } }, "error");
}

/** Streams one message; the caller releases the model if this throws, the stream releases it otherwise. */
async function streamMessages(ctx: ServerContext, body: MessagesBodyT, m: ModelEntry, signal?: AbortSignal): Promise<Response> {
  const req = request(ctx, body, m);
  const { stream, started } = await startGeneration(ctx, req, "messages", signal);
  const sh = shaper(m, req, started);
  let released = false;
  const release = () => {
    if (!released) ctx.models.release(m);
    released = true;
  };
  return sseResponse(
    async (send) => {
      const ev = (type: string, data: Record<string, unknown>) => send({ type, ...data }, type);
      ev("message_start", {
        message: {
          id: newId("msg_"),
          type: "message",
          role: "assistant",
          model: m.name,
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: { ...inputUsage(started), output_tokens: 0 },
        },
      });
      ev("ping", {});
      let index = -1;
      let open: "thinking" | "text" | null = null;
      let toolCalls = 0;
      const close = () => {
        if (open) ev("content_block_stop", { index });
        open = null;
      };
      const openBlock = (kind: "thinking" | "text") => {
        if (open === kind) return;
        close();
        index++;
        open = kind;
        const block = kind === "text" ? { type: "text", text: "" } : { type: "thinking", thinking: "", signature: "" };
        ev("content_block_start", { index, content_block: block });
      };
      const emit = (s: Shaped) => {
        if (s.reasoning) {
          openBlock("thinking");
          ev("content_block_delta", { index, delta: { type: "thinking_delta", thinking: s.reasoning } });
        }
        if (s.content) {
          openBlock("text");
          ev("content_block_delta", { index, delta: { type: "text_delta", text: s.content } });
        }
        for (const call of s.toolCalls) {
          close();
          index++;
          toolCalls++;
          const use = toolUse(call);
          ev("content_block_start", { index, content_block: { ...use, input: {} } });
          ev("content_block_delta", { index, delta: { type: "input_json_delta", partial_json: JSON.stringify(use.input) } });
          ev("content_block_stop", { index });
        }
      };
      try {
        for await (const e of stream) {
          if (e.type === "delta") emit(sh.feed(e.text));
          else if (e.type === "error") throw new HttpError(500, e.message, { code: e.code });
          else if (e.type === "done") {
            emit(sh.flush(e.finishReason === "length"));
            if (open === "thinking") ev("content_block_delta", { index, delta: { type: "signature_delta", signature: "" } });
            close();
            ev("message_delta", {
              delta: stopReason(e.finishReason, e.stoppedBy, body.stop_sequences ?? [], toolCalls),
              usage: { ...inputUsage(started), output_tokens: e.usage.completionTokens },
            });
            ev("message_stop", {});
          }
        }
      } finally {
        release();
      }
    },
    () => {
      stream.cancel();
      release();
    },
    anthropicStreamError,
  );
}

export function countTokens(ctx: ServerContext, body: CountTokensBodyT): Promise<Response> {
  return withModel(ctx, body.model, async (m) => {
    const r = await ctx.engine.tokenize({
      model: m.name,
      messages: toChatMessages(body),
      tools: tools(body),
      templateKwargs: templateKwargs(body),
      addGenerationPrompt: true,
    });
    return Response.json({ input_tokens: r.tokens.length });
  });
}
