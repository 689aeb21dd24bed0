import type { ChatMessage, GenerateRequest, ToolSpec } from "../engine/types.ts";
import { HttpError } from "./errors.ts";
import { collect, newId, startGeneration, withModel, type ServerContext, type Started } from "./generation.ts";
import type { ModelEntry } from "./models.ts";
import type { ChatOutputParser } from "../text/output.ts";
import { outputShaper, type Shaped, type ToolCallOut } from "./output.ts";
import { anthropicSampling } from "./sampling.ts";
import type { CountTokensBodyT, MessagesBodyT } from "./schemas.ts";
import { sseResponse, type SseSend } from "./sse.ts";

type Block = Exclude<MessagesBodyT["messages"][number]["content"], string>[number];

function blockText(content: Block["content"]): string {
  if (content === undefined) return "";
  if (typeof content === "string") return content;
  return content.map((c) => c.text ?? "").join("");
}

/** Anthropic content blocks to chat-template messages: tool_use becomes tool_calls, tool_result a "tool" message. */
export function toChatMessages(body: CountTokensBodyT): ChatMessage[] {
  const out: ChatMessage[] = [];
  if (body.system !== undefined) {
    const text = typeof body.system === "string" ? body.system : body.system.map((b) => b.text).join("\n");
    if (text) out.push({ role: "system", content: text });
  }
  for (const m of body.messages) {
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
    const flush = () => {
      if (text !== null) out.push({ role: "user", content: text });
      text = null;
    };
    for (const b of m.content) {
      if (b.type === "text") text = (text ?? "") + (b.text ?? "");
      else if (b.type === "tool_result") {
        flush();
        if (!b.tool_use_id) throw new HttpError(400, "tool_result blocks need a tool_use_id");
        out.push({ role: "tool", tool_call_id: b.tool_use_id, content: blockText(b.content) });
      } else throw new HttpError(400, `content block type '${b.type}' is not supported: this build serves text only`);
    }
    flush();
  }
  return out;
}

function tools(body: CountTokensBodyT): ToolSpec[] | undefined {
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

export function templateKwargs(body: CountTokensBodyT): Record<string, unknown> | undefined {
  if (!body.thinking) return undefined;
  return { enable_thinking: body.thinking.type === "enabled" };
}

function request(body: MessagesBodyT, m: ModelEntry): GenerateRequest {
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
    sampling: anthropicSampling(body),
    stop: body.stop_sequences ?? [],
    stopTokenIds: [],
    thinkingBudget: body.thinking?.type === "enabled" ? body.thinking.budget_tokens : undefined,
  };
}

function stopReason(reason: string, stoppedBy: string | number | undefined, stops: string[], toolCalls: number) {
  if (toolCalls > 0) return { stop_reason: "tool_use", stop_sequence: null };
  if (reason === "length") return { stop_reason: "max_tokens", stop_sequence: null };
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
    const req = request(body, m);
    const r = await collect(ctx, req, "messages", (started) => shaper(m, req, started), signal);
    const content: unknown[] = [];
    if (r.shaped.reasoning) content.push({ type: "thinking", thinking: r.shaped.reasoning, signature: "" });
    if (r.shaped.content) content.push({ type: "text", text: r.shaped.content });
    for (const c of r.shaped.toolCalls) content.push(toolUse(c));
    return Response.json({
      id: newId("msg_"),
      type: "message",
      role: "assistant",
      model: body.model,
      content,
      ...stopReason(r.done.finishReason, r.done.stoppedBy, body.stop_sequences ?? [], r.shaped.toolCalls.length),
      usage: {
        input_tokens: r.started.promptTokens,
        output_tokens: r.done.usage.completionTokens,
        cache_read_input_tokens: r.started.cachedTokens,
        cache_creation_input_tokens: 0,
      },
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
  const req = request(body, m);
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
          model: body.model,
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: { input_tokens: started.promptTokens, output_tokens: 0, cache_read_input_tokens: started.cachedTokens },
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
            emit(sh.flush());
            if (open === "thinking") ev("content_block_delta", { index, delta: { type: "signature_delta", signature: "" } });
            close();
            ev("message_delta", {
              delta: stopReason(e.finishReason, e.stoppedBy, body.stop_sequences ?? [], toolCalls),
              usage: { output_tokens: e.usage.completionTokens },
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
