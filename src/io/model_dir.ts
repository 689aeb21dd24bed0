// A model directory as a whole: config, quantization, weights, and the tokenizer and generation files beside them.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { RmlxError } from "../errors.ts";
import { checkDir, parseConfig, readJsonFile, type ModelConfig } from "./config.ts";
import { parseQuantConfig, type QuantConfig } from "./quant_config.ts";
import { WeightStore } from "./weights.ts";

export interface ModelDir {
  dir: string;
  config: ModelConfig;
  quant: QuantConfig | null;
  weights: WeightStore;
  /** Path of tokenizer.json (not its contents: it can be tens of megabytes). */
  tokenizerJson?: string;
  tokenizerConfig?: Record<string, unknown>;
  /** The chat template text, from chat_template.jinja, chat_template.json or tokenizer_config.json. */
  chatTemplate?: string;
  generationConfig?: Record<string, unknown>;
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function optionalJsonObject(path: string): Record<string, unknown> | undefined {
  if (!existsSync(path)) return undefined;
  const v = readJsonFile(path);
  if (!isObj(v)) throw new RmlxError("bad_model", `${path}: not a JSON object`);
  return v;
}

/** A chat_template value: a string, or a list of named templates of which "default" is the one for chat. */
function pickTemplate(v: unknown, path: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    const named = v.filter((t): t is { name: string; template: string } => isObj(t) && typeof t.template === "string");
    return (named.find((t) => t.name === "default") ?? named[0])?.template;
  }
  throw new RmlxError("bad_model", `${path}: chat_template is neither a string nor a list of templates`);
}

function findChatTemplate(dir: string, tokenizerConfig: Record<string, unknown> | undefined): string | undefined {
  const jinja = join(dir, "chat_template.jinja");
  if (existsSync(jinja)) return readFileSync(jinja, "utf8");
  const jsonPath = join(dir, "chat_template.json");
  const json = optionalJsonObject(jsonPath);
  const fromJson = json ? pickTemplate(json.chat_template, jsonPath) : undefined;
  if (fromJson !== undefined) return fromJson;
  return tokenizerConfig ? pickTemplate(tokenizerConfig.chat_template, join(dir, "tokenizer_config.json")) : undefined;
}

/** EOS ids of config.json and generation_config.json together: chat models often list their turn end only in the latter. */
function mergeEos(config: ModelConfig, gen: Record<string, unknown> | undefined): void {
  const v = gen?.eos_token_id;
  const extra = Array.isArray(v) ? v : v === undefined || v === null ? [] : [v];
  for (const id of extra) if (Number.isInteger(id) && !config.eosTokenIds.includes(id)) config.eosTokenIds.push(id);
}

export function openModelDir(dir: string): ModelDir {
  checkDir(dir);
  const configPath = join(dir, "config.json");
  const raw = readJsonFile(configPath);
  const config = parseConfig(raw, configPath);
  let quant: QuantConfig | null;
  try {
    quant = parseQuantConfig(raw as Record<string, unknown>);
  } catch (err) {
    if (err instanceof RmlxError) throw new RmlxError(err.code, err.message.replace(/^config\.json:/, `${configPath}:`));
    throw err;
  }
  const weights = WeightStore.open(dir);
  const md: ModelDir = { dir, config, quant, weights };

  const tokenizerJson = join(dir, "tokenizer.json");
  if (existsSync(tokenizerJson)) md.tokenizerJson = tokenizerJson;
  const tokenizerConfig = optionalJsonObject(join(dir, "tokenizer_config.json"));
  if (tokenizerConfig) md.tokenizerConfig = tokenizerConfig;
  const chatTemplate = findChatTemplate(dir, tokenizerConfig);
  if (chatTemplate !== undefined) md.chatTemplate = chatTemplate;
  const generationConfig = optionalJsonObject(join(dir, "generation_config.json"));
  if (generationConfig) md.generationConfig = generationConfig;
  mergeEos(config, generationConfig);
  return md;
}
