// Tools for models whose chat template has no tool support (Gemma 3): the conversation is rewritten into plain
// turns following the function-calling convention Google documents for Gemma, where the model is told about the
// functions in the prompt and answers a call as a Python-style list, [name(arg=value, ...)], and results come back
// in a user turn. The pythonic tool parser reads such replies.

import type { ChatMessage, ToolSpec } from "./chat_types.ts";

function pyLiteral(v: unknown): string {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return Number.isFinite(v) ? String(v) : "None";
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(pyLiteral).join(", ")}]`;
  if (typeof v === "object") {
    return `{${Object.entries(v as Record<string, unknown>)
      .map(([k, x]) => `${JSON.stringify(k)}: ${pyLiteral(x)}`)
      .join(", ")}}`;
  }
  return JSON.stringify(String(v));
}

function callArguments(args: unknown): Record<string, unknown> {
  if (typeof args === "string") {
    try {
      const v = JSON.parse(args);
      return v !== null && typeof v === "object" && !Array.isArray(v) ? v : {};
    } catch {
      return {};
    }
  }
  return args !== null && typeof args === "object" && !Array.isArray(args) ? (args as Record<string, unknown>) : {};
}

/** An assistant's tool calls as the model would have written them. */
export function pythonicCalls(calls: NonNullable<ChatMessage["tool_calls"]>): string {
  const parts = calls.map((c) => {
    const args = Object.entries(callArguments(c.function.arguments))
      .map(([k, v]) => `${k}=${pyLiteral(v)}`)
      .join(", ");
    return `${c.function.name}(${args})`;
  });
  return `[${parts.join(", ")}]`;
}

export function toolInstructions(tools: ToolSpec[]): string {
  const specs = tools.map((t) => t.function);
  return (
    "You have access to the functions below. When calling functions helps, reply with only a list of calls " +
    "in this form and no other text:\n[function_name(param_name=value, other_param=value), other_function(param=value)]\n" +
    "Function results will follow in the next message.\n\nFunctions:\n" +
    JSON.stringify(specs, null, 2)
  );
}

function text(m: ChatMessage): string {
  return typeof m.content === "string" ? m.content : "";
}

/** The conversation with tools folded into plain system/user/assistant turns, same-role neighbours merged. */
export function foldToolsIntoMessages(messages: ChatMessage[], tools: ToolSpec[]): ChatMessage[] {
  const out: ChatMessage[] = [];
  const push = (role: string, content: string) => {
    const last = out[out.length - 1];
    if (last && last.role === role && role !== "system") last.content = `${text(last)}\n\n${content}`;
    else out.push({ role, content });
  };
  const instructions = toolInstructions(tools);
  const first = messages[0];
  if (first?.role === "system") push("system", `${text(first)}\n\n${instructions}`);
  else push("system", instructions);
  for (const m of first?.role === "system" ? messages.slice(1) : messages) {
    if (m.role === "tool") {
      const name = m.name ? ` from ${m.name}` : "";
      push("user", `Function result${name}:\n${text(m)}`);
    } else if (m.role === "assistant" && m.tool_calls && m.tool_calls.length > 0) {
      // Only the calls, as the instructions ask: a reply with text around the list is not read as calls.
      push("assistant", pythonicCalls(m.tool_calls));
    } else push(m.role, text(m));
  }
  return out;
}
