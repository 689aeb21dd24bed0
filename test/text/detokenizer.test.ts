import { describe, expect, test, setDefaultTimeout } from "bun:test";
import { Detokenizer } from "../../src/text/detokenizer.ts";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { loadTokenizer, tokenizerConfig, tokenizerJson, withSpecialTokens, TOKENIZER_TIMEOUT_MS } from "./fixtures.ts";

setDefaultTimeout(TOKENIZER_TIMEOUT_MS);

function pushAll(d: Detokenizer, ids: number[]): string[] {
  return ids.map((id) => d.push(id));
}

describe("Detokenizer on Qwen3 (byte-level BPE)", () => {
  const tok = loadTokenizer("qwen3");
  const id = (t: string) => tok.tokenToId(t)!;

  test("an emoji split over three byte tokens comes out whole, once", () => {
    // 🌍 = F0 9F 8C 8D: "ĠðŁ" is space+F0+9F, "Į" is 8C, "į" is 8D.
    const d = new Detokenizer(tok);
    expect(pushAll(d, [id("Hello"), id("ĠðŁ"), id("Į"), id("į"), id("!")])).toEqual(["Hello", " ", "", "🌍", "!"]);
    expect(d.flush()).toBe("");
    expect(d.text).toBe("Hello 🌍!");
  });

  test("streamed pieces never hold half a character and add up to the decoded text", () => {
    const s = "CJK 龘靐齉 emoji 🧑‍🚀🏳️‍🌈 math 𝔸𝔹 and ascii.";
    const ids = tok.encode(s);
    const d = new Detokenizer(tok);
    const pieces = pushAll(d, ids);
    pieces.push(d.flush());
    // Some token ended inside a character, and its piece waited for the rest.
    expect(pieces.some((p) => p === "")).toBe(true);
    for (const p of pieces) {
      expect(p).not.toContain("\uFFFD");
      expect(p.isWellFormed()).toBe(true);
    }
    expect(pieces.join("")).toBe(s);
    expect(pieces.join("")).toBe(tok.decode(ids));
  });

  test("special tokens are skipped by default and kept on request", () => {
    const ids = tok.encode("<|im_start|>assistant\nok<|im_end|>");
    const skip = new Detokenizer(tok);
    expect(pushAll(skip, ids).join("")).toBe("assistant\nok");
    const keep = new Detokenizer(tok, { skipSpecialTokens: false });
    expect(pushAll(keep, ids).join("")).toBe("<|im_start|>assistant\nok<|im_end|>");
    expect(keep.tokens).toBe(ids.length);
  });

  test("a sequence cut inside a character flushes as U+FFFD", () => {
    const d = new Detokenizer(tok);
    expect(pushAll(d, [id("ĠðŁ"), id("Į")])).toEqual([" ", ""]);
    expect(d.flush()).toBe("\uFFFD");
  });
});

describe("Detokenizer on Gemma 3 (sentencepiece with byte fallback)", () => {
  const tok = loadTokenizer("gemma3");
  const id = (t: string) => tok.tokenToId(t)!;

  test("byte-fallback tokens assemble into one character", () => {
    const d = new Detokenizer(tok);
    const out = pushAll(d, [id("▁world"), id("<0xF0>"), id("<0x9F>"), id("<0x8C>"), id("<0x8D>"), id("▁")]);
    expect(out).toEqual([" world", "", "", "", "🌍", " "]);
  });

  test("stream equals whole decode on mixed text", () => {
    const s = "Grüße, 世界! 🧮🦜\nnew line";
    const ids = tok.encode(s);
    const d = new Detokenizer(tok);
    const streamed = pushAll(d, ids).join("") + d.flush();
    expect(streamed).toBe(s);
    expect(streamed).toBe(tok.decode(ids, { skipSpecialTokens: true }));
  });

  test("special tokens that delimit tool calls and reasoning are kept while others are skipped", () => {
    // Gemma 4 marks its call and channel markers as special tokens; give a Gemma 3 vocabulary the same ones.
    const { json } = withSpecialTokens(tokenizerJson("gemma3"), ["<|tool_call>", "<tool_call|>", '<|"|>', "<|channel>", "<channel|>"]);
    const g4 = Tokenizer.fromJson(json, tokenizerConfig("gemma3"));
    const text = '<|channel>thought\nhm<channel|><|tool_call>call:f{a:<|"|>x<|"|>}<tool_call|><end_of_turn>';
    const ids = g4.encode(text);
    expect(ids[0]).toBe(2);
    const d = new Detokenizer(g4);
    expect(pushAll(d, ids).join("") + d.flush()).toBe(text.replace("<end_of_turn>", ""));
  });

  test("a decoder that strips the first space (Llama 2 style) strips it once", () => {
    const json = { ...tokenizerJson("gemma3") };
    json.decoder = {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    };
    const spm = Tokenizer.fromJson(json, tokenizerConfig("gemma3"));
    const ids = [spm.tokenToId("▁Hello")!, spm.tokenToId("▁world")!];
    expect(spm.decode(ids)).toBe("Hello world");
    const d = new Detokenizer(spm);
    expect(pushAll(d, ids)).toEqual(["Hello", " world"]);
  });
});
