import { t, type TSchema } from "elysia";

/** Optional and nullable: clients send either an absent field or null for "not set". */
const opt = <T extends TSchema>(s: T) => t.Optional(t.Nullable(s));

const Json = t.Unknown();

const TextPart = t.Object({
  type: t.String(),
  text: t.Optional(t.String()),
  image_url: t.Optional(Json),
});

const ToolCall = t.Object({
  id: t.Optional(t.String()),
  type: t.Optional(t.Literal("function")),
  function: t.Object({ name: t.String(), arguments: t.Union([t.String(), t.Record(t.String(), Json)]) }),
});

const ChatMessage = t.Object({
  role: t.Union([t.Literal("system"), t.Literal("developer"), t.Literal("user"), t.Literal("assistant"), t.Literal("tool")]),
  content: opt(t.Union([t.String(), t.Array(TextPart)])),
  name: t.Optional(t.String()),
  tool_calls: opt(t.Array(ToolCall)),
  tool_call_id: t.Optional(t.String()),
  reasoning_content: opt(t.String()),
});

const OpenAITool = t.Object({
  type: t.Literal("function"),
  function: t.Object({
    name: t.String({ minLength: 1 }),
    description: t.Optional(t.String()),
    parameters: t.Optional(t.Record(t.String(), Json)),
    strict: opt(t.Boolean()),
  }),
});

const ToolChoice = t.Union([
  t.Literal("none"),
  t.Literal("auto"),
  t.Literal("required"),
  t.Object({ type: t.Literal("function"), function: t.Object({ name: t.String() }) }),
]);

const ResponseFormat = t.Object({
  type: t.Union([t.Literal("text"), t.Literal("json_object"), t.Literal("json_schema")]),
  json_schema: t.Optional(
    t.Object({ name: t.Optional(t.String()), schema: t.Optional(t.Record(t.String(), Json)), strict: opt(t.Boolean()) }),
  ),
});

const Stop = opt(t.Union([t.String(), t.Array(t.String(), { maxItems: 16 })]));

/** Sampling fields shared by /v1/chat/completions and /v1/completions (with the common vLLM extensions). */
const openAISampling = {
  temperature: opt(t.Number({ minimum: 0, maximum: 2 })),
  top_p: opt(t.Number({ exclusiveMinimum: 0, maximum: 1 })),
  top_k: opt(t.Integer({ minimum: -1 })),
  min_p: opt(t.Number({ minimum: 0, maximum: 1 })),
  presence_penalty: opt(t.Number({ minimum: -2, maximum: 2 })),
  frequency_penalty: opt(t.Number({ minimum: -2, maximum: 2 })),
  repetition_penalty: opt(t.Number({ exclusiveMinimum: 0 })),
  seed: opt(t.Integer()),
  stop: Stop,
  stop_token_ids: opt(t.Array(t.Integer({ minimum: 0 }))),
  max_tokens: opt(t.Integer({ minimum: 1 })),
  logit_bias: opt(t.Record(t.String(), t.Number({ minimum: -100, maximum: 100 }))),
  n: opt(t.Integer({ minimum: 1, maximum: 16 })),
  stream: opt(t.Boolean()),
  stream_options: opt(t.Object({ include_usage: opt(t.Boolean()) })),
  ignore_eos: opt(t.Boolean()),
  user: opt(t.String()),
};

/** Optional: with one model served, any name or none selects it (ModelManager.resolve). */
const Model = opt(t.String());

export const ChatCompletionBody = t.Object({
  model: Model,
  messages: t.Array(ChatMessage, { minItems: 1 }),
  ...openAISampling,
  max_completion_tokens: opt(t.Integer({ minimum: 1 })),
  logprobs: opt(t.Boolean()),
  top_logprobs: opt(t.Integer({ minimum: 0, maximum: 20 })),
  tools: opt(t.Array(OpenAITool)),
  tool_choice: opt(ToolChoice),
  parallel_tool_calls: opt(t.Boolean()),
  response_format: opt(ResponseFormat),
  chat_template_kwargs: opt(t.Record(t.String(), Json)),
  reasoning_effort: opt(t.Union(["none", "minimal", "low", "medium", "high", "xhigh"].map((e) => t.Literal(e)))),
});

/** Most prompts in one /v1/completions request (each gets its own choices). */
const MAX_PROMPTS = 256;

const TokenIds = t.Array(t.Integer({ minimum: 0 }), { minItems: 1 });

export const CompletionBody = t.Object({
  model: Model,
  prompt: t.Union([
    t.String(),
    TokenIds,
    t.Array(t.String(), { minItems: 1, maxItems: MAX_PROMPTS }),
    t.Array(TokenIds, { minItems: 1, maxItems: MAX_PROMPTS }),
  ]),
  ...openAISampling,
  logprobs: opt(t.Integer({ minimum: 0, maximum: 20 })),
  echo: opt(t.Boolean()),
  suffix: opt(t.String()),
  response_format: opt(ResponseFormat),
});

/**
 * A block nested in a tool_result or a document's content source. Only the fields rmlx reads are declared; the
 * rest of what a client sends (citations, cache_control, ...) is not an error.
 */
const AnthropicInnerBlock = t.Object({
  type: t.String(),
  text: t.Optional(t.String()),
  title: opt(t.String()),
  source: t.Optional(Json),
  content: t.Optional(Json),
});

const AnthropicBlock = t.Object({
  type: t.String(),
  text: t.Optional(t.String()),
  id: t.Optional(t.String()),
  name: t.Optional(t.String()),
  input: t.Optional(Json),
  tool_use_id: t.Optional(t.String()),
  content: t.Optional(t.Union([t.String(), t.Array(AnthropicInnerBlock)])),
  is_error: t.Optional(t.Boolean()),
  thinking: t.Optional(t.String()),
  signature: t.Optional(t.String()),
  source: t.Optional(Json),
  title: opt(t.String()),
  cache_control: t.Optional(Json),
});

const AnthropicSystemBlock = t.Object({ type: t.String(), text: t.String(), cache_control: t.Optional(Json) });

const AnthropicMessage = t.Object({
  // Clients such as Claude Code send system entries inside messages too.
  role: t.Union([t.Literal("user"), t.Literal("assistant"), t.Literal("system")]),
  content: t.Union([t.String(), t.Array(AnthropicBlock)]),
});

/** A client tool has an input_schema; a server tool (web search, code execution, ...) has a versioned type instead. */
const AnthropicTool = t.Object({
  name: t.String({ minLength: 1 }),
  description: t.Optional(t.String()),
  input_schema: t.Optional(t.Record(t.String(), Json)),
  type: opt(t.String()),
  cache_control: t.Optional(Json),
});

const AnthropicToolChoice = t.Object({
  type: t.Union([t.Literal("auto"), t.Literal("any"), t.Literal("tool"), t.Literal("none")]),
  name: t.Optional(t.String()),
  disable_parallel_tool_use: t.Optional(t.Boolean()),
});

const AnthropicSystem = t.Union([t.String(), t.Array(AnthropicSystemBlock)]);

const AnthropicThinking = t.Object({
  type: t.Union([t.Literal("enabled"), t.Literal("disabled"), t.Literal("adaptive"), t.Literal("between_tools")]),
  budget_tokens: t.Optional(t.Integer({ minimum: 0 })),
});

const AnthropicOutputFormat = t.Object({ type: t.Literal("json_schema"), schema: t.Record(t.String(), Json) });

const anthropicPrompt = {
  model: t.Optional(t.String()),
  messages: t.Array(AnthropicMessage, { minItems: 1 }),
  system: t.Optional(AnthropicSystem),
  tools: t.Optional(t.Array(AnthropicTool)),
  tool_choice: t.Optional(AnthropicToolChoice),
  thinking: t.Optional(AnthropicThinking),
  /** Remote MCP servers the API itself would call: declared so that a request naming some can be refused clearly. */
  mcp_servers: opt(t.Array(Json)),
};

// Fields of the Messages API that change nothing here are accepted and ignored: metadata, service_tier, container,
// context_management, speed, inference_geo, diagnostics, cache_control, and any the API adds later.
export const MessagesBody = t.Object({
  ...anthropicPrompt,
  max_tokens: t.Integer({ minimum: 1 }),
  stop_sequences: t.Optional(t.Array(t.String(), { maxItems: 16 })),
  stream: t.Optional(t.Boolean()),
  temperature: t.Optional(t.Number({ minimum: 0, maximum: 1 })),
  top_p: t.Optional(t.Number({ exclusiveMinimum: 0, maximum: 1 })),
  top_k: t.Optional(t.Integer({ minimum: 0 })),
  output_config: opt(t.Object({ format: opt(AnthropicOutputFormat), effort: opt(t.String()) })),
  /** The beta spelling of output_config.format. */
  output_format: opt(AnthropicOutputFormat),
});

export const CountTokensBody = t.Object(anthropicPrompt);

export const TokenizeBody = t.Object({
  model: Model,
  prompt: t.Optional(t.String()),
  /** llama.cpp's server names the text `content`. */
  content: t.Optional(t.String()),
  messages: t.Optional(t.Array(ChatMessage, { minItems: 1 })),
  tools: opt(t.Array(OpenAITool)),
  add_generation_prompt: t.Optional(t.Boolean()),
  chat_template_kwargs: opt(t.Record(t.String(), Json)),
});

export const DetokenizeBody = t.Object({
  model: Model,
  tokens: t.Array(t.Integer({ minimum: 0 })),
});

/** OpenAI's embeddings request: one or more texts, or token id lists (at most 2048 inputs, none empty). */
export const EmbeddingsBody = t.Object({
  model: Model,
  input: t.Union([
    t.String({ minLength: 1 }),
    t.Array(t.String({ minLength: 1 }), { minItems: 1, maxItems: 2048 }),
    t.Array(t.Integer({ minimum: 0 }), { minItems: 1 }),
    t.Array(t.Array(t.Integer({ minimum: 0 }), { minItems: 1 }), { minItems: 1, maxItems: 2048 }),
  ]),
  encoding_format: t.Optional(t.Union([t.Literal("float"), t.Literal("base64")])),
  dimensions: t.Optional(t.Integer({ minimum: 1 })),
  user: t.Optional(t.String()),
  /** rmlx's: cut an input longer than the model's limit instead of refusing it (vLLM's truncate_prompt_tokens, llama.cpp's truncate). */
  truncate: t.Optional(t.Boolean()),
  /** rmlx's: one of the model's prompts (config_sentence_transformers.json), e.g. "query"; its default prompt when absent. */
  prompt_name: t.Optional(t.String()),
});

export type EmbeddingsBodyT = typeof EmbeddingsBody.static;
export type ChatCompletionBodyT = typeof ChatCompletionBody.static;
export type CompletionBodyT = typeof CompletionBody.static;
export type MessagesBodyT = typeof MessagesBody.static;
export type CountTokensBodyT = typeof CountTokensBody.static;

interface SchemaLike {
  type?: string;
  format?: string;
  const?: unknown;
  anyOf?: SchemaLike[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  minItems?: number;
  maxItems?: number;
  minLength?: number;
}

function jsonType(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

/** A union's alternatives, nested unions flattened, Elysia's numeric-string coercions left out. */
function alternatives(schema: SchemaLike): SchemaLike[] {
  if (!schema.anyOf) return schema.type === "string" && schema.format !== undefined ? [] : [schema];
  return schema.anyOf.flatMap((a) => alternatives({ ...a, minimum: a.minimum ?? schema.minimum }));
}

/** What a value should have been, in words, for the alternatives of a union. */
function expectation(schema: SchemaLike, value: unknown): string {
  const alts = alternatives(schema);
  if (alts.every((a) => a.const !== undefined)) return `must be one of ${alts.map((a) => JSON.stringify(a.const)).join(", ")}`;
  const same = alts.find((a) => (a.type === "integer" ? "number" : a.type) === jsonType(value));
  if (same) {
    const lim: string[] = [];
    if (same.minimum !== undefined) lim.push(`>= ${same.minimum}`);
    if (same.exclusiveMinimum !== undefined) lim.push(`> ${same.exclusiveMinimum}`);
    if (same.maximum !== undefined) lim.push(`<= ${same.maximum}`);
    if (same.minItems !== undefined) lim.push(`at least ${same.minItems} items`);
    if (same.maxItems !== undefined) lim.push(`at most ${same.maxItems} items`);
    if (same.type === "integer" && !Number.isInteger(value)) lim.unshift("an integer");
    if (lim.length > 0) return `must be ${lim.join(", ")}`;
  }
  const types = [...new Set(alts.map((a) => a.type ?? "a value"))];
  return `must be ${types.join(" or ")}, not ${jsonType(value)}`;
}

/** One line naming the first field that failed its schema and why (never the whole validator dump). */
export function validationMessage(error: unknown): string {
  type Issue = { path?: string; message?: string; schema?: SchemaLike; value?: unknown };
  const e = error as { valueError?: Issue; all?: Issue[] };
  const first = e.valueError ?? e.all?.[0];
  if (!first) return "invalid request body";
  const path = (first.path ?? "").replace(/^\//, "").replaceAll("/", ".");
  const why = first.schema?.anyOf ? expectation(first.schema, first.value) : (first.message ?? "is invalid");
  return path ? `invalid request body: ${path}: ${why}` : `invalid request body: ${why}`;
}
