// Chat messages and tool declarations in OpenAI shape: what chat templates render and tool parsers read.
// The engine and server pass them through unchanged.

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool" | string;
  content: string | null;
  /** Assistant tool calls in OpenAI shape; the chat template renders them. */
  tool_calls?: { id?: string; type: "function"; function: { name: string; arguments: string | Record<string, unknown> } }[];
  tool_call_id?: string;
  name?: string;
  reasoning_content?: string;
}

export interface ToolSpec {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}
