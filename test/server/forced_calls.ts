// Forced tool calls through the server: whatever a model's call syntax, and whatever a random model writes, a
// forced answer must come back as exactly one call of an offered tool, in the OpenAI and the Anthropic API alike.
import { expect } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import type OpenAI from "openai";

const WEATHER_PARAMETERS = { type: "object", properties: { city: { enum: ["Paris", "Rome"] } }, required: ["city"] };

/** get_weather, for a city of two, as the OpenAI API declares it. */
export const WEATHER_TOOL = { type: "function" as const, function: { name: "get_weather", parameters: WEATHER_PARAMETERS } };

/** tool_choice "required", then one naming get_weather. */
export const FORCED_CHOICES = ["required", { type: "function", function: { name: "get_weather" } }] as const;

export interface ForcedCall {
  completion: OpenAI.Chat.Completions.ChatCompletion;
  call: { id: string; function: { name: string; arguments: string } };
  args: Record<string, unknown>;
}

/**
 * Asks "Weather in Rome?" with `tools` and a forced `toolChoice`: the answer ends for exactly one call, of get_weather
 * when it is named, and a get_weather call names one of its cities.
 */
export async function forcedCall(
  openai: OpenAI,
  model: string,
  tools: OpenAI.Chat.Completions.ChatCompletionTool[],
  toolChoice: (typeof FORCED_CHOICES)[number],
  maxTokens: number,
): Promise<ForcedCall> {
  const completion = await openai.chat.completions.create({
    model,
    messages: [{ role: "user", content: "Weather in Rome?" }],
    tools,
    tool_choice: toolChoice,
    max_tokens: maxTokens,
    temperature: 0,
  });
  const calls = completion.choices[0]!.message.tool_calls as ForcedCall["call"][];
  expect(completion.choices[0]!.finish_reason).toBe("tool_calls");
  expect(calls.length).toBe(1);
  const call = calls[0]!;
  if (typeof toolChoice === "object") expect(call.function.name).toBe("get_weather");
  const args = JSON.parse(call.function.arguments) as Record<string, unknown>;
  if (call.function.name === "get_weather") expect(["Paris", "Rome"]).toContain(args.city as string);
  return { completion, call, args };
}

/** The same through the Anthropic API, get_weather the one tool and `toolChoice` forcing it: the tool_use block. */
export async function anthropicForcedCall(
  url: string,
  model: string,
  toolChoice: Anthropic.Messages.ToolChoice,
  maxTokens: number,
): Promise<Anthropic.Messages.ToolUseBlock> {
  const a = new Anthropic({ baseURL: url, apiKey: "x", maxRetries: 0 });
  const m = await a.messages.create({
    model,
    max_tokens: maxTokens,
    tool_choice: toolChoice,
    tools: [{ name: "get_weather", input_schema: WEATHER_PARAMETERS as Anthropic.Messages.Tool.InputSchema }],
    messages: [{ role: "user", content: "Weather?" }],
  });
  expect(m.stop_reason).toBe("tool_use");
  const use = m.content.find((b) => b.type === "tool_use");
  expect(use).toMatchObject({ name: "get_weather" });
  return use as Anthropic.Messages.ToolUseBlock;
}
