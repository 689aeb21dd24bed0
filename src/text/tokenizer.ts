// The model's tokenizer: tokenizer.json through @huggingface/tokenizers for encoding, our own byte tables for
// decoding (so that whole-text decoding and the streaming detokenizer agree byte for byte).

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { RmlxError } from "../errors.ts";
import { type DecodeConvention, decodeConvention, vocabEntryBytesInto } from "./token_bytes.ts";

type Json = Record<string, unknown>;

export interface EncodeOptions {
  /** Add what the tokenizer adds around a sequence (a BOS for Llama and Gemma; nothing for Qwen). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop added tokens marked special (<|im_end|>, <eos>, ...). Default false. */
  skipSpecialTokens?: boolean;
}

function readJson(path: string): Json {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    throw new RmlxError("not_found", `cannot read ${path}`);
  }
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("not an object");
    return v as Json;
  } catch (e) {
    throw new RmlxError("bad_model", `${path} is not a JSON object: ${(e as Error).message}`);
  }
}

/** tokenizer_config.json writes tokens either as strings or as {content: ...} objects. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v !== null && typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content as string;
  return undefined;
}

function idList(v: unknown): number[] {
  if (typeof v === "number" && Number.isInteger(v)) return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number" && Number.isInteger(x));
  return [];
}

export class Tokenizer {
  readonly vocabSize: number;
  readonly eosTokenIds: number[];
  readonly bosTokenId?: number;
  readonly specialTokenIds: Set<number>;
  /** tokenizer_config.json as loaded (chat_template, bos_token, eos_token, ...). */
  readonly config: Json;
  readonly convention: DecodeConvention;

  private readonly hf: HfTokenizer;
  private readonly idToString: (string | undefined)[];
  private readonly stringToId: Map<string, number>;
  private readonly addBos: boolean | undefined;
  private bytesCache?: { blob: Uint8Array; offsets: Int32Array };

  private constructor(tokenizerJson: Json, config: Json, extraEosIds: number[]) {
    this.config = config;
    try {
      // The library reads clean_up_tokenization_spaces as true when absent; transformers now defaults to false.
      this.hf = new HfTokenizer(tokenizerJson, { clean_up_tokenization_spaces: false, ...config });
    } catch (e) {
      throw new RmlxError("bad_model", `unsupported tokenizer.json: ${(e as Error).message}`);
    }
    this.convention = decodeConvention(tokenizerJson);

    const model = (tokenizerJson.model ?? {}) as Json;
    this.idToString = [];
    this.stringToId = new Map();
    if (Array.isArray(model.vocab)) {
      // Unigram: [[piece, score], ...], the id is the position.
      model.vocab.forEach((entry, id) => {
        const piece = Array.isArray(entry) ? entry[0] : undefined;
        if (typeof piece === "string") this.setToken(id, piece);
      });
    } else if (model.vocab && typeof model.vocab === "object") {
      for (const [piece, id] of Object.entries(model.vocab as Record<string, number>)) this.setToken(id, piece);
    }
    this.specialTokenIds = new Set();
    for (const t of (tokenizerJson.added_tokens ?? []) as Json[]) {
      if (typeof t.id !== "number" || typeof t.content !== "string") continue;
      this.setToken(t.id, t.content);
      if (t.special === true) this.specialTokenIds.add(t.id);
    }
    this.vocabSize = this.idToString.length;

    const bos = tokenContent(config.bos_token);
    this.bosTokenId = bos === undefined ? undefined : this.stringToId.get(bos);
    this.addBos = typeof config.add_bos_token === "boolean" ? config.add_bos_token : undefined;

    const eos = new Set<number>();
    const eosText = tokenContent(config.eos_token);
    const eosId = eosText === undefined ? undefined : this.stringToId.get(eosText);
    if (eosId !== undefined) eos.add(eosId);
    for (const id of extraEosIds) eos.add(id);
    // Gemma 4 follows a tool call with <|tool_response>, expecting the result: generation ends there.
    const toolResponse = this.stringToId.get("<|tool_response>");
    if (toolResponse !== undefined && this.specialTokenIds.has(toolResponse)) eos.add(toolResponse);
    this.eosTokenIds = [...eos];
  }

  private setToken(id: number, piece: string): void {
    if (!Number.isInteger(id) || id < 0) return;
    this.idToString[id] = piece;
    this.stringToId.set(piece, id);
  }

  /**
   * tokenizerConfig is tokenizer_config.json's content; extraEosTokenIds adds the ids that config.json or
   * generation_config.json name as eos_token_id (Llama 3 stops on <|eot_id|> as well as <|end_of_text|>).
   */
  static fromFiles(tokenizerJsonPath: string, tokenizerConfig: Record<string, unknown> = {}, extraEosTokenIds: number[] = []): Tokenizer {
    return Tokenizer.fromJson(readJson(tokenizerJsonPath), tokenizerConfig, extraEosTokenIds);
  }

  /** The same from tokenizer.json's parsed content. */
  static fromJson(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown> = {}, extraEosTokenIds: number[] = []): Tokenizer {
    return new Tokenizer(tokenizerJson, tokenizerConfig, extraEosTokenIds);
  }

  /** Loads a model directory's tokenizer.json and tokenizer_config.json, and its EOS ids from the other configs. */
  static fromModelDir(dir: string): Tokenizer {
    const configPath = join(dir, "tokenizer_config.json");
    const config = existsSync(configPath) ? readJson(configPath) : {};
    const eos: number[] = [];
    for (const name of ["generation_config.json", "config.json"]) {
      const p = join(dir, name);
      if (!existsSync(p)) continue;
      const c = readJson(p);
      eos.push(...idList(c.eos_token_id));
      const text = c.text_config as Json | undefined;
      if (text && typeof text === "object") eos.push(...idList(text.eos_token_id));
    }
    return Tokenizer.fromFiles(join(dir, "tokenizer.json"), config, eos);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    let add = opts.addSpecialTokens ?? true;
    const bos = this.bosTokenId;
    // A text that already starts with the BOS gets no second one, as mlx-lm does for raw prompts.
    if (add && bos !== undefined && text.startsWith(this.idToString[bos]!)) add = false;
    if (text.length === 0 && !add) return [];
    const ids = this.hf.encode(text, { add_special_tokens: add }).ids;
    if (!add || bos === undefined || this.addBos === undefined) return ids;
    // tokenizer_config's add_bos_token overrides the post-processor, as transformers' Llama tokenizers do.
    if (this.addBos && ids[0] !== bos) return [bos, ...ids];
    if (!this.addBos && ids[0] === bos) return ids.slice(1);
    return ids;
  }

  decode(ids: number[], opts: DecodeOptions = {}): string {
    const { coding, stripLeadingSpaces } = this.convention;
    const skip = opts.skipSpecialTokens ?? false;
    const kept = skip ? ids.filter((id) => !this.specialTokenIds.has(id)) : ids;
    if (kept.length === 0) return "";
    if (coding.kind === "plain") return this.hf.decode(kept, { skip_special_tokens: false });
    const parts: Uint8Array[] = [];
    let total = 0;
    for (const id of kept) {
      const b = this.tokenBytes(id);
      parts.push(b);
      total += b.length;
    }
    const all = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      all.set(p, o);
      o += p.length;
    }
    let text = new TextDecoder().decode(all);
    for (let i = 0; i < stripLeadingSpaces && text.startsWith(" "); i++) text = text.slice(1);
    return text;
  }

  /** The raw bytes a token stands for; empty for an id the tokenizer does not know. */
  tokenBytes(id: number): Uint8Array {
    const { blob, offsets } = this.allTokenBytes();
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return new Uint8Array(0);
    return blob.subarray(offsets[id]!, offsets[id + 1]!);
  }

  /** Every token's bytes in one blob: token i is blob[offsets[i] .. offsets[i+1]). Built on first use. */
  allTokenBytes(): { blob: Uint8Array; offsets: Int32Array } {
    if (this.bytesCache) return this.bytesCache;
    const n = this.vocabSize;
    const offsets = new Int32Array(n + 1);
    let room = 0;
    for (let id = 0; id < n; id++) room += (this.idToString[id]?.length ?? 0) * 3;
    const buf = new Uint8Array(room);
    let total = 0;
    for (let id = 0; id < n; id++) {
      const s = this.idToString[id];
      offsets[id] = total;
      // Added tokens go through the same decoder as the vocabulary, as in the tokenizers library.
      if (s !== undefined) total += vocabEntryBytesInto(s, this.convention.coding, buf, total);
    }
    offsets[n] = total;
    const blob = buf.slice(0, total);
    this.bytesCache = { blob, offsets };
    return this.bytesCache;
  }

  idToToken(id: number): string | undefined {
    return this.idToString[id];
  }

  tokenToId(token: string): number | undefined {
    return this.stringToId.get(token);
  }

  isSpecial(id: number): boolean {
    return this.specialTokenIds.has(id);
  }
}
