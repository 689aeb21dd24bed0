// The contract between the HTTP server (src/server/) and the engine worker (src/engine/worker.ts), also spoken by
// the CLI's in-process runs (src/engine/generate.ts). Everything here is structured-clone safe: it crosses a Bun
// Worker boundary as postMessage data.

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  topP: number;
  /** 0 = off. */
  topK: number;
  /** 0 = off. */
  minP: number;
  /** 1 = off; multiplicative, sign-aware, over the last `repetitionContext` tokens. */
  repetitionPenalty: number;
  repetitionContext: number;
  presencePenalty: number;
  frequencyPenalty: number;
  /** token id -> additive bias. */
  logitBias?: Record<number, number>;
  seed?: number;
  /** Number of top alternatives to report per token (0 = none; logprobs of the chosen token still reported when >= 0). */
  topLogprobs?: number;
  logprobs?: boolean;
}

export const DEFAULT_SAMPLING: SamplingParams = {
  temperature: 1,
  topP: 1,
  topK: 0,
  minP: 0,
  repetitionPenalty: 1,
  repetitionContext: 20,
  presencePenalty: 0,
  frequencyPenalty: 0,
};

/**
 * Sampling values that stand in where a request names none: a model's generation_config.json, or the server's
 * --temp / --top-p / --top-k / --min-p flags (which win over the model's).
 */
export interface SamplingDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
}

export type { ChatMessage, ToolSpec } from "../text/chat_types.ts";
import type { ChatMessage, ToolSpec } from "../text/chat_types.ts";
import type { ChatTemplateSource } from "../text/chat_template.ts";
import type { ModelOptions } from "../models/family.ts";

/** What the server asks of the engine. Either a raw prompt (text or ids) or chat messages to template. */
export interface GenerateRequest {
  id: string;
  model: string;
  prompt?: string | number[];
  messages?: ChatMessage[];
  tools?: ToolSpec[];
  /** Extra variables for the chat template (enable_thinking, ...). */
  templateKwargs?: Record<string, unknown>;
  /** Whether the template opens the assistant's turn after the messages (its add_generation_prompt; default true). */
  addGenerationPrompt?: boolean;
  maxTokens: number;
  sampling: SamplingParams;
  stop: string[];
  stopTokenIds: number[];
  /** Ignore the model's EOS tokens. */
  ignoreEos?: boolean;
  /** JSON schema constraint ({} with type "object" for plain json_object mode). */
  jsonSchema?: Record<string, unknown>;
  /** The output must be one call to one of `tools`, in the model's tool-call format (tool_choice required / named). */
  requireToolCall?: boolean;
  /** Tokens after which generation of a thinking section is forced to end. */
  thinkingBudget?: number;
}

export type FinishReason = "stop" | "length" | "tool_calls" | "cancelled" | "error";

export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top: { token: string; logprob: number; bytes: number[] }[];
}

export type EngineEvent =
  | {
      type: "started";
      id: string;
      promptTokens: number;
      /** Prompt tokens whose K/V came from the prefix cache, from RAM or from its SSD tier. */
      cachedTokens: number;
      /** Of cachedTokens, those read back from the SSD tier. */
      cachedDiskTokens?: number;
      /** The rendered prompt ends inside an open reasoning section (e.g. "<think>\n"), so output starts as reasoning. */
      startsInReasoning?: boolean;
      /** The prompt's length before its middle was cut to fit the context (--prompt-overflow truncate). */
      truncatedFrom?: number;
    }
  /** Text is complete UTF-8 characters only, with stop strings already cut. */
  | { type: "delta"; id: string; text: string; tokenIds: number[]; logprobs?: TokenLogprob[] }
  | {
      type: "done";
      id: string;
      finishReason: FinishReason;
      /** The stop string or token that ended it, if any. */
      stoppedBy?: string | number;
      usage: { promptTokens: number; completionTokens: number; cachedTokens: number; cachedDiskTokens?: number };
      timing: { queuedMs: number; ttftMs: number; decodeTps: number; promptTps: number };
      /** With a draft model: tokens it proposed for this request and how many of them the target kept. */
      speculative?: { draftTokens: number; acceptedTokens: number };
    }
  | { type: "error"; id: string; code: string; message: string };

/** Engine settings, sent once before anything else. */
export interface EngineConfig {
  /** Bytes of KV cache per loaded model (0 = a default share of memory). */
  kvMemoryBytes: number;
  /** Most sequences decoded together in one step. */
  maxRunning: number;
  /** Most requests waiting for admission; one more is refused as overloaded. */
  maxWaiting: number;
  /** Most prompt tokens prefilled in one step, over all sequences. */
  prefillChunk: number;
  prefixCache: boolean;
  /** KV cache codec name (src/quant/kv_codec.ts; f32 default). */
  kvQuant?: string;
  /** --backend (auto, native, mlx) and --mlx-lib of the server process: the worker has an environment of its own. */
  backend?: string;
  mlxLib?: string;
  /** --gemv (x8, x16, f32) of the server process. */
  gemv?: string;
  /** --gemm (bf16, f32) of the server process. */
  gemm?: string;
  /** --compute-dtype (model, f32) of the server process. */
  computeDtype?: string;
  /** --mmap-weights (RMLX_MMAP_WEIGHTS=1) of the server process. */
  mmapWeights?: boolean;
  /** --threads (RMLX_THREADS) of the server process: the native backend's compute threads. */
  threads?: string;
  /** --ctx-size: the most tokens of context per sequence, below the model's own limit. */
  contextLength?: number;
  /** --kv-ssd and --kv-ssd-budget: the SSD tier of the prefix cache (its directory is locked by the server). */
  kvSsd?: { dir: string; budgetBytes: number };
  /** A prompt longer than the context: refused (error, the default) or cut in the middle to fit (truncate). */
  promptOverflow?: "error" | "truncate";
  /** --chat-template: a chat template used instead of the one each model ships. */
  chatTemplate?: ChatTemplateSource;
  /** --bitnet-activations: how each model is run where its checkpoint leaves a choice. */
  modelOptions?: ModelOptions;
  /** --draft-model: a model directory whose proposals every loaded model verifies (speculative decoding). */
  draftModel?: string;
  /** --draft-kind mtp: every loaded model drafts with its own multi-token-prediction head. */
  draftMtp?: boolean;
  /** --draft-tokens: the most tokens the draft proposes a step. */
  draftTokens?: number;
  /** --draft-policy fixed: always propose draftTokens instead of adapting. */
  draftFixed?: boolean;
}

/** Messages from the server to the worker. */
export type ToWorker =
  | { type: "configure"; config: EngineConfig }
  | { type: "load"; model: string; dir: string }
  | { type: "unload"; model: string }
  | { type: "generate"; request: GenerateRequest }
  | { type: "cancel"; id: string }
  | { type: "tokenize"; rid: string; model: string; text?: string; messages?: ChatMessage[]; tools?: ToolSpec[]; templateKwargs?: Record<string, unknown>; addGenerationPrompt?: boolean }
  | { type: "detokenize"; rid: string; model: string; tokens: number[] }
  | { type: "embed"; rid: string; model: string; request: EmbedRequest }
  | { type: "shutdown" };

/** Inputs of an embeddings request: texts (the model's prompt, if any, goes before each) or token ids. */
export interface EmbedRequest {
  inputs: (string | number[])[];
  /** A prompt of config_sentence_transformers.json by name; the model's default_prompt_name when absent. */
  promptName?: string;
  /** Cut an input longer than the model's limit to fit instead of refusing it. */
  truncate: boolean;
}

/** What an embedding model is, for the server and `rmlx info`. */
export interface EmbeddingModelInfo {
  pooling: string;
  normalize: boolean;
  dimension: number;
  /** Most tokens of one input. */
  maxTokens: number;
  prompts: string[];
}

/** What the server needs to know about a loaded model to shape its output. */
export interface LoadedModelInfo {
  modelType: string;
  /** Name of the tool-call parser for this model's output (src/text/tool_parsers.ts), if it has one. */
  toolParser?: string;
  /** Whether the chat template knows reasoning sections (<think> ... </think>). */
  reasoning?: boolean;
  /** The markers of those sections when they are not <think> and </think> (Gemma 4's thought channel). */
  reasoningTags?: { open: string; close: string };
  /** Sampling defaults of the model's generation_config.json. */
  sampling?: SamplingDefaults;
  /** Present for an embedding model. */
  embedding?: EmbeddingModelInfo;
}

/** Messages from the worker to the server. */
export type FromWorker =
  | EngineEvent
  | { type: "loaded"; model: string; contextLength: number; info?: LoadedModelInfo }
  | { type: "load_error"; model: string; code: string; message: string }
  | { type: "unloaded"; model: string }
  | { type: "tokenized"; rid: string; tokens: number[]; text?: string }
  | { type: "detokenized"; rid: string; text: string }
  | { type: "embedded"; rid: string; embeddings: Float32Array[]; promptTokens: number }
  | { type: "rpc_error"; rid: string; code: string; message: string }
  | {
      type: "stats";
      running: number;
      waiting: number;
      /** Blocks of the full-attention pools (every layer's, for models without sliding-window layers). */
      kvUsed: number;
      kvTotal: number;
      /** Blocks of the sliding-window layers' own pools (windowed KV caches); absent or 0 when there are none. */
      kvWindowUsed?: number;
      kvWindowTotal?: number;
      /** Bytes of the KV blocks in use (in the cache's codec, every pool), and of the whole KV budget. */
      kvUsedBytes?: number;
      kvTotalBytes?: number;
      /** Blocks the SSD tier wrote, read back, dropped as unsound and skipped, since the worker started. */
      ssd?: SsdCounts;
    };

export interface SsdCounts {
  written: number;
  loaded: number;
  dropped: number;
  skipped: number;
}
