// Reasoning sections: <think> ... </think> (Gemma 4: <|channel>thought ... <channel|>) in a model's output goes to
// `reasoning`, the rest to `content`.
// Templates that open the section in the prompt (Qwen3 thinking models, DeepSeek-R1) make the output start inside
// it, with only the closing tag to come. Whitespace that lays out the tags (the newline after <think>, the blank
// line after </think>) belongs to neither side, nor does whitespace at the very end of the output.

import { partialSuffixLength } from "./holdback.ts";

export interface ReasoningResult {
  reasoning: string;
  content: string;
}

export interface ReasoningTags {
  open: string;
  close: string;
}

export const THINK_TAGS: ReasoningTags = { open: "<think>", close: "</think>" };

/** Gemma 4 writes its reasoning as a "thought" channel. */
export const GEMMA4_THOUGHT_TAGS: ReasoningTags = { open: "<|channel>thought", close: "<channel|>" };

/** Reasoning markers that some tokenizers mark as special tokens (Gemma 4's); detokenizers must keep them. */
export const REASONING_MARKERS = ["<|channel>", "<channel|>"];

export interface ReasoningParserOptions {
  tags?: ReasoningTags;
  /** The prompt already opened the section: output begins as reasoning. */
  startInReasoning?: boolean;
}

const leadingWs = (s: string) => s.length - s.trimStart().length;

export class ReasoningParser {
  private readonly tags: ReasoningTags;
  private inside: boolean;
  /** Nothing of the current section shown yet: its leading whitespace is layout. */
  private atStart = true;
  private buf = "";

  constructor(opts: ReasoningParserOptions = {}) {
    this.tags = opts.tags ?? THINK_TAGS;
    this.inside = opts.startInReasoning ?? false;
  }

  /** Whether the text seen so far ends inside a reasoning section. */
  get inReasoning(): boolean {
    return this.inside;
  }

  feed(delta: string): ReasoningResult {
    this.buf += delta;
    const out: ReasoningResult = { reasoning: "", content: "" };
    for (;;) {
      const tag = this.inside ? this.tags.close : this.tags.open;
      const at = this.buf.indexOf(tag);
      if (at < 0) break;
      this.take(this.buf.slice(0, at), out, true);
      this.buf = this.buf.slice(at + tag.length);
      this.inside = !this.inside;
      this.atStart = true;
    }
    const tag = this.inside ? this.tags.close : this.tags.open;
    const keep = partialSuffixLength(this.buf, [tag]);
    const avail = this.buf.slice(0, this.buf.length - keep);
    // Trailing whitespace may be the layout before the next tag: hold it until text follows.
    const shown = avail.trimEnd();
    const skipped = this.atStart ? Math.min(leadingWs(shown), shown.length) : 0;
    this.take(shown, out, false);
    this.buf = this.buf.slice(Math.max(shown.length, skipped));
    return out;
  }

  flush(): ReasoningResult {
    const out: ReasoningResult = { reasoning: "", content: "" };
    this.take(this.buf, out, true);
    this.buf = "";
    return out;
  }

  /** Adds a piece of the current section; `last` means the section ends after it (its tail whitespace is layout). */
  private take(piece: string, out: ReasoningResult, last: boolean): void {
    let s = this.atStart ? piece.trimStart() : piece;
    if (last) s = s.trimEnd();
    if (s.length === 0) return;
    this.atStart = false;
    if (this.inside) out.reasoning += s;
    else out.content += s;
  }
}

/** Whether a rendered prompt leaves a reasoning section open (the template wrote <think> and no </think> after it). */
export function promptOpensReasoning(prompt: string, tags: ReasoningTags = THINK_TAGS): boolean {
  const open = prompt.lastIndexOf(tags.open);
  return open >= 0 && prompt.indexOf(tags.close, open) < 0;
}

/** The reasoning tags a model uses, from its chat template or model type; undefined when it has none. */
export function reasoningTagsFor(info: { modelType?: string; chatTemplate?: string }): ReasoningTags | undefined {
  const type = (info.modelType ?? "").toLowerCase();
  const tpl = info.chatTemplate ?? "";
  if (tpl.includes(GEMMA4_THOUGHT_TAGS.close) || type.startsWith("gemma4")) return GEMMA4_THOUGHT_TAGS;
  if (tpl.includes(THINK_TAGS.close)) return THINK_TAGS;
  if (type.startsWith("qwen3") || type.startsWith("deepseek")) return THINK_TAGS;
  return undefined;
}
