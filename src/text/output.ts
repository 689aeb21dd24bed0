// A chat reply's text, split as the OpenAI and Anthropic APIs report it: reasoning, visible content and tool
// calls. Reasoning is taken out first, so that a tool call the model only thinks about is never made.

import type { ToolSpec } from "./chat_types.ts";
import { ReasoningParser, type ReasoningTags, promptOpensReasoning, reasoningTagsFor } from "./reasoning.ts";
import { type ToolCall, type ToolCallParser, type ToolParserKind, createToolParser, toolParserFor } from "./tool_parsers.ts";

export interface OutputDelta {
  reasoning: string;
  content: string;
  toolCalls: ToolCall[];
}

export interface ChatOutputOptions {
  /** Reasoning tags to split out; none when absent. */
  reasoningTags?: ReasoningTags;
  /** The prompt left a reasoning section open. */
  startInReasoning?: boolean;
  /** Tool-call convention; none when absent (a request without tools needs none). */
  toolParser?: ToolParserKind;
  tools?: ToolSpec[];
}

export class ChatOutputParser {
  private readonly reasoning?: ReasoningParser;
  private readonly tools?: ToolCallParser;

  constructor(opts: ChatOutputOptions = {}) {
    if (opts.reasoningTags) this.reasoning = new ReasoningParser({ tags: opts.reasoningTags, startInReasoning: opts.startInReasoning });
    if (opts.toolParser) this.tools = createToolParser(opts.toolParser, { tools: opts.tools });
  }

  feed(text: string): OutputDelta {
    const r = this.reasoning ? this.reasoning.feed(text) : { reasoning: "", content: text };
    return this.content(r.reasoning, r.content, false);
  }

  /** The end of the reply; `truncated` when the length limit cut it (see ToolCallParser.flush). */
  flush(truncated = false): OutputDelta {
    const r = this.reasoning ? this.reasoning.flush() : { reasoning: "", content: "" };
    return this.content(r.reasoning, r.content, true, truncated);
  }

  private content(reasoning: string, content: string, end: boolean, truncated = false): OutputDelta {
    if (!this.tools) return { reasoning, content, toolCalls: [] };
    const a = content.length > 0 ? this.tools.feed(content) : { content: "", toolCalls: [] };
    if (!end) return { reasoning, content: a.content, toolCalls: a.toolCalls };
    const b = this.tools.flush(truncated);
    return { reasoning, content: a.content + b.content, toolCalls: [...a.toolCalls, ...b.toolCalls] };
  }
}

/** The parser for one request: the model's conventions, the rendered prompt, and the request's tools. */
export function chatOutputParserFor(info: {
  modelType?: string;
  chatTemplate?: string;
  prompt?: string;
  tools?: ToolSpec[];
}): ChatOutputParser {
  const reasoningTags = reasoningTagsFor(info);
  const withTools = (info.tools?.length ?? 0) > 0;
  return new ChatOutputParser({
    reasoningTags,
    startInReasoning: reasoningTags !== undefined && info.prompt !== undefined && promptOpensReasoning(info.prompt, reasoningTags),
    toolParser: withTools ? toolParserFor(info) : undefined,
    tools: info.tools,
  });
}
