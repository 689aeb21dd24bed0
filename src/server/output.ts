import type { LoadedModelInfo, ToolSpec } from "../engine/types.ts";
import { ChatOutputParser, type OutputDelta } from "../text/output.ts";
import { THINK_TAGS } from "../text/reasoning.ts";
import type { ToolParserKind } from "../text/tool_parsers.ts";

/** What a piece of model output turned into once reasoning and tool-call markup are taken out. */
export type Shaped = OutputDelta;
export type ToolCallOut = Shaped["toolCalls"][number];

export interface ShaperOptions {
  info?: LoadedModelInfo;
  /** The prompt left a reasoning section open, so output starts as reasoning. */
  startsInReasoning: boolean;
  /** The tools offered to the model (none: its output is not searched for calls). */
  tools?: ToolSpec[];
}

/**
 * Splits a stream of generated text into reasoning, visible content and tool calls, with the parsers the model's
 * family uses. Markup is held back until complete, so none of it reaches the content.
 */
export function outputShaper(opts: ShaperOptions): ChatOutputParser {
  const withTools = (opts.tools?.length ?? 0) > 0 && opts.info?.toolParser !== undefined;
  return new ChatOutputParser({
    reasoningTags: opts.info?.reasoning ? (opts.info.reasoningTags ?? THINK_TAGS) : undefined,
    startInReasoning: opts.startsInReasoning,
    toolParser: withTools ? (opts.info!.toolParser as ToolParserKind) : undefined,
    tools: opts.tools,
  });
}

/** Plain text: for /v1/completions, where output is returned as generated. */
export function plainShaper(): ChatOutputParser {
  return new ChatOutputParser({});
}

export function mergeShaped(a: Shaped, b: Shaped): Shaped {
  return { reasoning: a.reasoning + b.reasoning, content: a.content + b.content, toolCalls: [...a.toolCalls, ...b.toolCalls] };
}
