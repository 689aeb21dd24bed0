import type { LoadedModelInfo } from "../engine/types.ts";

/** A tool call in OpenAI's shape, arguments as a JSON string. */
export interface ToolCallOut {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

/** What a piece of model output turned into once reasoning and tool-call markup are taken out. */
export interface Shaped {
  reasoning: string;
  content: string;
  toolCalls: ToolCallOut[];
}

export interface ShaperOptions {
  info?: LoadedModelInfo;
  /** The prompt left a reasoning section open, so output starts as reasoning. */
  startsInReasoning: boolean;
  /** Tools were offered to the model, so its output may hold tool calls. */
  parseTools: boolean;
}

/**
 * Splits a stream of generated text into reasoning, visible content and tool calls. Text that might be the start of
 * markup is held back until it is known not to be, so raw markup never reaches the content.
 */
export class OutputShaper {
  constructor(private readonly opts: ShaperOptions) {}

  feed(text: string): Shaped {
    return { reasoning: "", content: text, toolCalls: [] };
  }

  finish(): Shaped {
    return { reasoning: "", content: "", toolCalls: [] };
  }

  get options(): ShaperOptions {
    return this.opts;
  }
}

export function mergeShaped(a: Shaped, b: Shaped): Shaped {
  return { reasoning: a.reasoning + b.reasoning, content: a.content + b.content, toolCalls: [...a.toolCalls, ...b.toolCalls] };
}
