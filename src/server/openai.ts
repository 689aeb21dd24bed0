import type { ChatMessage, GenerateRequest, TokenLogprob, ToolSpec } from "../engine/types.ts";
import { HttpError } from "./errors.ts";
import {
  collectAll,
  newId,
  startAll,
  type Collected,
  type ServerContext,
  type Started,
} from "./generation.ts";
import type { GenerationStream } from "./engine_client.ts";
import type { ModelEntry } from "./models.ts";
import { outputShaper, plainShaper, type Shaped, type ToolCallOut } from "./output.ts";
import { defaultsFor, openAISampling, stopList } from "./sampling.ts";
import type { ChatCompletionBodyT, CompletionBodyT } from "./schemas.ts";
import { sseResponse, type SseSend } from "./sse.ts";

type Body = ChatCompletionBodyT;

function messageText(content: Body["messages"][number]["content"]): string | null {
  if (content == null || typeof content === "string") return content ?? null;
  let text = "";
  for (const part of content) {
    if (part.type !== "text") throw new HttpError(400, `content part type '${part.type}' is not supported: this build serves text only`, { param: "messages" });
    text += part.text ?? "";
  }
  return text;
}

/** OpenAI messages to chat-template messages (text parts joined, developer read as system). */
export function chatMessages(messages: Body["messages"]): ChatMessage[] {
  return messages.map((m) => {
    const msg: ChatMessage = { role: m.role === "developer" ? "system" : m.role, content: messageText(m.content) };
    if (m.name) msg.name = m.name;
    if (m.tool_call_id) msg.tool_call_id = m.tool_call_id;
    if (m.reasoning_content) msg.reasoning_content = m.reasoning_content;
    if (m.tool_calls?.length) {
      msg.tool_calls = m.tool_calls.map((c) => ({ id: c.id, type: "function", function: { name: c.function.name, arguments: c.function.arguments } }));
    }
    return msg;
  });
}

/** tool_choice as sent; null, like an absent field, means "auto". */
function toolChoice(body: Body): NonNullable<Body["tool_choice"]> {
  return body.tool_choice ?? "auto";
}

/** The tools the template sees, per tool_choice: none hides them, a named choice offers only that one. */
function chatTools(body: Body): ToolSpec[] | undefined {
  const tools = body.tools ?? [];
  const choice = toolChoice(body);
  if (tools.length === 0) {
    if (typeof choice === "object" || choice === "required") throw new HttpError(400, "tool_choice needs tools", { param: "tool_choice" });
    return undefined;
  }
  if (choice === "none") return undefined;
  const specs: ToolSpec[] = tools.map((tl) => ({
    type: "function",
    function: { name: tl.function.name, description: tl.function.description, parameters: tl.function.parameters },
  }));
  if (typeof choice === "object") {
    const named = specs.filter((s) => s.function.name === choice.function.name);
    if (named.length === 0) throw new HttpError(400, `tool_choice names unknown tool '${choice.function.name}'`, { param: "tool_choice" });
    return named;
  }
  return specs;
}

function jsonSchemaOf(rf: Body["response_format"]): Record<string, unknown> | undefined {
  if (!rf || rf.type === "text") return undefined;
  if (rf.type === "json_object") return { type: "object" };
  return rf.json_schema?.schema ?? { type: "object" };
}

/**
 * The chat template's variables: OpenAI's reasoning_effort is passed as is (templates such as gpt-oss's read it)
 * and turns thinking off for "none", on otherwise (enable_thinking, Qwen3 / Qwen3.5 style); chat_template_kwargs
 * given explicitly win.
 */
function chatTemplateKwargs(body: Body): Record<string, unknown> | undefined {
  const effort = body.reasoning_effort;
  if (effort === undefined) return body.chat_template_kwargs ?? undefined;
  return { reasoning_effort: effort, enable_thinking: effort !== "none", ...body.chat_template_kwargs };
}

function chatRequest(ctx: ServerContext, body: Body, m: ModelEntry, index: number): GenerateRequest {
  const tools = chatTools(body);
  const choice = toolChoice(body);
  const top = body.logprobs ? (body.top_logprobs ?? 0) : 0;
  const sampling = openAISampling(body, { logprobs: body.logprobs ?? false, top }, defaultsFor(ctx.defaults, m));
  if (index > 0 && sampling.seed !== undefined) sampling.seed += index;
  return {
    id: newId("gen-"),
    model: m.name,
    messages: chatMessages(body.messages),
    tools,
    templateKwargs: chatTemplateKwargs(body),
    addGenerationPrompt: true,
    // No limit asked for and no --max-tokens: the engine stops at the end of the context.
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? ctx.defaults?.maxTokens ?? m.contextLength,
    sampling,
    stop: stopList(body.stop),
    stopTokenIds: body.stop_token_ids ?? [],
    ignoreEos: body.ignore_eos ?? false,
    jsonSchema: jsonSchemaOf(body.response_format),
    requireToolCall: tools !== undefined && (choice === "required" || typeof choice === "object"),
  };
}

function shaperFor(m: ModelEntry, req: GenerateRequest) {
  return (started: Started) => outputShaper({ info: m.info, startsInReasoning: started.startsInReasoning ?? false, tools: req.tools });
}

function chatLogprobs(lps: TokenLogprob[]) {
  return {
    content: lps.map((l) => ({
      token: l.token,
      logprob: l.logprob,
      bytes: l.bytes,
      top_logprobs: l.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes })),
    })),
  };
}

/** Usage over one or more prompts (each counted once, however many choices it has) and all their completions. */
function usageOf(prompts: Started[], completionTokens: number) {
  const promptTokens = prompts.reduce((a, s) => a + s.promptTokens, 0);
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
    prompt_tokens_details: { cached_tokens: prompts.reduce((a, s) => a + s.cachedTokens, 0) },
  };
}

function finishReason(reason: string, toolCalls: number): string {
  // The length limit is reported even after complete calls: the reply was cut, perhaps inside another one.
  if (reason === "length") return "length";
  return toolCalls > 0 ? "tool_calls" : "stop";
}

export async function chatCompletions(ctx: ServerContext, body: Body, signal?: AbortSignal): Promise<Response> {
  const m = await ctx.models.acquire(body.model);
  const n = body.n ?? 1;
  try {
    if (body.stream) {
      return await streamChat(ctx, body, m, n, signal);
    }
  } catch (e) {
    ctx.models.release(m);
    throw e;
  }
  try {
    const requests = Array.from({ length: n }, (_, i) => chatRequest(ctx, body, m, i));
    const results = await collectAll(ctx, requests, "chat", (r) => shaperFor(m, r), signal);
    return Response.json(chatResponse(body, m, results));
  } finally {
    ctx.models.release(m);
  }
}

function chatResponse(body: Body, m: ModelEntry, results: Collected[]) {
  const first = results[0]!;
  let completion = 0;
  const choices = results.map((r, index) => {
    completion += r.done.usage.completionTokens;
    const message: Record<string, unknown> = { role: "assistant", content: r.shaped.content };
    if (r.shaped.reasoning) message.reasoning_content = r.shaped.reasoning;
    if (r.shaped.toolCalls.length > 0) {
      message.tool_calls = r.shaped.toolCalls;
      if (r.shaped.content === "") message.content = null;
    }
    return {
      index,
      message,
      logprobs: body.logprobs ? chatLogprobs(r.logprobs) : null,
      finish_reason: finishReason(r.done.finishReason, r.shaped.toolCalls.length),
    };
  });
  return {
    id: newId("chatcmpl-"),
    object: "chat.completion",
    created: Math.floor(Date.now() / 1000),
    model: m.name,
    choices,
    usage: usageOf([first.started], completion),
  };
}

/** Sends an error as the last event of a stream whose headers are already out. */
function streamError(err: unknown, send: SseSend): void {
  const e = err instanceof HttpError ? err : new HttpError(500, err instanceof Error ? err.message : String(err));
  send({ error: { message: e.message, type: e.status === 400 ? "invalid_request_error" : "server_error", param: null, code: e.extra.code ?? null } });
  send("[DONE]");
}

/** Streams n chat completions as one event stream; the caller releases the model if this throws, the stream releases it otherwise. */
async function streamChat(ctx: ServerContext, body: Body, m: ModelEntry, n: number, signal?: AbortSignal): Promise<Response> {
  const reqs = Array.from({ length: n }, (_, i) => chatRequest(ctx, body, m, i));
  const gens = await startAll(ctx, reqs, "chat", signal);
  const id = newId("chatcmpl-");
  const created = Math.floor(Date.now() / 1000);
  const includeUsage = body.stream_options?.include_usage ?? false;
  const chunk = (index: number, delta: Record<string, unknown>, finish: string | null, logprobs: unknown = null) => ({
    id,
    object: "chat.completion.chunk",
    created,
    model: m.name,
    choices: [{ index, delta, logprobs, finish_reason: finish }],
    ...(includeUsage ? { usage: null } : {}),
  });
  const choice = async (send: SseSend, index: number): Promise<number> => {
    const { stream, started } = gens[index]!;
    const shaper = shaperFor(m, reqs[index]!)(started);
    let toolIndex = 0;
    const emit = (s: Shaped, logprobs: TokenLogprob[] | undefined) => {
      const lp = body.logprobs && logprobs?.length ? chatLogprobs(logprobs) : null;
      if (s.reasoning) send(chunk(index, { reasoning_content: s.reasoning }, null));
      if (s.content || lp) send(chunk(index, { content: s.content }, null, lp));
      for (const call of s.toolCalls) send(chunk(index, { tool_calls: [toolCallDelta(call, toolIndex++)] }, null));
    };
    send(chunk(index, { role: "assistant", content: "" }, null));
    for await (const ev of stream) {
      if (ev.type === "delta") emit(shaper.feed(ev.text), ev.logprobs);
      else if (ev.type === "error") throw new HttpError(500, ev.message, { code: ev.code });
      else if (ev.type === "done") {
        emit(shaper.flush(ev.finishReason === "length"), undefined);
        send(chunk(index, {}, finishReason(ev.finishReason, toolIndex)));
        return ev.usage.completionTokens;
      }
    }
    throw new HttpError(500, "engine stream ended without a result");
  };
  return streamChoices(ctx, m, gens, choice, (completion) => {
    const usage = usageOf([gens[0]!.started], completion);
    return includeUsage ? { id, object: "chat.completion.chunk", created, model: m.name, choices: [], usage } : null;
  });
}

/**
 * Runs the choices of a stream side by side, each sending its own chunks, then the usage chunk (if any) and [DONE].
 * A failing choice, or a client that goes away, cancels every choice.
 */
function streamChoices(
  ctx: ServerContext,
  m: ModelEntry,
  gens: { stream: GenerationStream }[],
  choice: (send: SseSend, index: number) => Promise<number>,
  usageChunk: (completionTokens: number) => unknown,
): Response {
  let released = false;
  const release = () => {
    if (!released) ctx.models.release(m);
    released = true;
  };
  const cancelAll = () => {
    for (const g of gens) g.stream.cancel();
  };
  return sseResponse(
    async (send) => {
      try {
        const tokens = await Promise.all(
          gens.map((_, i) =>
            choice(send, i).catch((e) => {
              cancelAll();
              throw e;
            }),
          ),
        );
        const usage = usageChunk(tokens.reduce((a, b) => a + b, 0));
        if (usage) send(usage);
        send("[DONE]");
      } finally {
        release();
      }
    },
    () => {
      cancelAll();
      release();
    },
    streamError,
  );
}

function toolCallDelta(call: ToolCallOut, index: number) {
  return { index, id: call.id, type: "function", function: { name: call.function.name, arguments: call.function.arguments } };
}

/** The prompts of a request: one text or token list, or a list of them (a choice, or n, for each). */
function completionPrompts(body: CompletionBodyT): (string | number[])[] {
  const p = body.prompt;
  if (typeof p === "string") return [p];
  if (p.every((x) => typeof x === "number")) return [p as number[]];
  return p as (string | number[])[];
}

function completionRequest(ctx: ServerContext, body: CompletionBodyT, m: ModelEntry, prompt: string | number[], index: number): GenerateRequest {
  const top = body.logprobs ?? 0;
  const sampling = openAISampling(body, { logprobs: body.logprobs != null, top }, defaultsFor(ctx.defaults, m));
  if (index > 0 && sampling.seed !== undefined) sampling.seed += index;
  if (body.response_format && body.response_format.type !== "text") {
    throw new HttpError(400, "response_format is only supported on /v1/chat/completions", { param: "response_format" });
  }
  return {
    id: newId("gen-"),
    model: m.name,
    prompt,
    // OpenAI's default for legacy completions, unless --max-tokens says otherwise.
    maxTokens: body.max_tokens ?? ctx.defaults?.maxTokens ?? 16,
    sampling,
    stop: stopList(body.stop),
    stopTokenIds: body.stop_token_ids ?? [],
    ignoreEos: body.ignore_eos ?? false,
  };
}

/** Requests for every prompt's n choices, in OpenAI's order: choice index = prompt index * n + choice. */
function completionRequests(ctx: ServerContext, body: CompletionBodyT, m: ModelEntry, n: number): GenerateRequest[] {
  return completionPrompts(body).flatMap((prompt, p) => Array.from({ length: n }, (_, i) => completionRequest(ctx, body, m, prompt, p * n + i)));
}

/** Each prompt's first "started" event, for usage: a prompt's n choices share it. */
const promptStarts = (started: Started[], n: number) => started.filter((_, i) => i % n === 0);

function completionLogprobs(lps: TokenLogprob[]) {
  const offsets: number[] = [];
  let at = 0;
  for (const l of lps) {
    offsets.push(at);
    at += l.token.length;
  }
  return {
    tokens: lps.map((l) => l.token),
    token_logprobs: lps.map((l) => l.logprob),
    top_logprobs: lps.map((l) => Object.fromEntries(l.top.map((t) => [t.token, t.logprob]))),
    text_offset: offsets,
  };
}

export async function completions(ctx: ServerContext, body: CompletionBodyT, signal?: AbortSignal): Promise<Response> {
  const m = await ctx.models.acquire(body.model);
  const n = body.n ?? 1;
  try {
    if (body.stream) {
      return await streamCompletion(ctx, body, m, n, signal);
    }
  } catch (e) {
    ctx.models.release(m);
    throw e;
  }
  try {
    const prompts = completionPrompts(body);
    const results = await collectAll(ctx, completionRequests(ctx, body, m, n), "completions", () => plainShaper, signal);
    let completion = 0;
    const choices = results.map((r, index) => {
      completion += r.done.usage.completionTokens;
      const prompt = prompts[Math.floor(index / n)]!;
      const prefix = body.echo && typeof prompt === "string" ? prompt : "";
      return {
        index,
        text: prefix + r.shaped.content,
        logprobs: body.logprobs != null ? completionLogprobs(r.logprobs) : null,
        finish_reason: finishReason(r.done.finishReason, 0),
      };
    });
    return Response.json({
      id: newId("cmpl-"),
      object: "text_completion",
      created: Math.floor(Date.now() / 1000),
      model: m.name,
      choices,
      usage: usageOf(promptStarts(results.map((r) => r.started), n), completion),
    });
  } finally {
    ctx.models.release(m);
  }
}

async function streamCompletion(ctx: ServerContext, body: CompletionBodyT, m: ModelEntry, n: number, signal?: AbortSignal): Promise<Response> {
  const gens = await startAll(ctx, completionRequests(ctx, body, m, n), "completions", signal);
  const id = newId("cmpl-");
  const created = Math.floor(Date.now() / 1000);
  const includeUsage = body.stream_options?.include_usage ?? false;
  const chunk = (index: number, text: string, finish: string | null, logprobs: unknown = null) => ({
    id,
    object: "text_completion",
    created,
    model: m.name,
    choices: [{ index, text, logprobs, finish_reason: finish }],
  });
  const choice = async (send: SseSend, index: number): Promise<number> => {
    for await (const ev of gens[index]!.stream) {
      if (ev.type === "delta") {
        send(chunk(index, ev.text, null, body.logprobs != null && ev.logprobs ? completionLogprobs(ev.logprobs) : null));
      } else if (ev.type === "error") throw new HttpError(500, ev.message, { code: ev.code });
      else if (ev.type === "done") {
        send(chunk(index, "", finishReason(ev.finishReason, 0)));
        return ev.usage.completionTokens;
      }
    }
    throw new HttpError(500, "engine stream ended without a result");
  };
  return streamChoices(ctx, m, gens, choice, (completion) => {
    const usage = usageOf(promptStarts(gens.map((g) => g.started), n), completion);
    return includeUsage ? { id, object: "text_completion", created, model: m.name, choices: [], usage } : null;
  });
}

export function modelObject(m: ModelEntry) {
  return { id: m.name, object: "model", created: m.createdS, owned_by: "rmlx", root: m.name, max_model_len: m.contextLength || null };
}
