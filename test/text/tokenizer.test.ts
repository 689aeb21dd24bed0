import { describe, expect, test, setDefaultTimeout } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RmlxError } from "../../src/errors.ts";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { loadTokenizer, tokenizerConfig, tokenizerJson, withSpecialTokens, TOKENIZER_TIMEOUT_MS } from "./fixtures.ts";

setDefaultTimeout(TOKENIZER_TIMEOUT_MS);

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("Qwen3 tokenizer", () => {
  const tok = loadTokenizer("qwen3");
  // Ids looked up by hand in tokenizer.json's vocab (byte-level spellings: Ġ is a space, Ċ a newline).
  const HELLO = 9707;
  const SP_WORLD = 1879;
  const USER = 872;
  const NEWLINE = 198;
  const IM_START = 151644;
  const IM_END = 151645;
  const ENDOFTEXT = 151643;

  test("vocabulary, EOS and no BOS", () => {
    expect(tok.vocabSize).toBe(151669);
    expect(tok.eosTokenIds).toEqual([IM_END]);
    expect(tok.bosTokenId).toBeUndefined();
    expect(tok.idToToken(SP_WORLD)).toBe("Ġworld");
    expect(tok.tokenToId("<|im_start|>")).toBe(IM_START);
    expect(tok.specialTokenIds.has(ENDOFTEXT)).toBe(true);
    // <think> is an added token but not a special one.
    expect(tok.specialTokenIds.has(tok.tokenToId("<think>")!)).toBe(false);
  });

  test("encodes plain text without adding a BOS", () => {
    expect(tok.encode("Hello world")).toEqual([HELLO, SP_WORLD]);
    expect(tok.encode("Hello world", { addSpecialTokens: false })).toEqual([HELLO, SP_WORLD]);
    expect(tok.encode("")).toEqual([]);
  });

  test("special tokens written in the text are single tokens", () => {
    expect(tok.encode("<|im_start|>user\n")).toEqual([IM_START, USER, NEWLINE]);
    const ids = tok.encode("x<|im_end|><think>");
    expect(ids.slice(-2)).toEqual([IM_END, tok.tokenToId("<think>")!]);
  });

  test("decode round trips text in many scripts", () => {
    for (const s of [
      "Hello world",
      "  leading and trailing spaces  ",
      "line one\nline two\r\n\ttab",
      "世界你好，こんにちは、안녕하세요",
      "emoji 🌍👩‍👩‍👧 and ✓ symbols",
      "<|im_start|>assistant\n<think>\nhmm\n</think>\n\nok<|im_end|>",
      "Ünïcödé ﬁ ligature",
    ]) {
      expect(tok.decode(tok.encode(s))).toBe(s);
    }
  });

  test("skipSpecialTokens drops special tokens but keeps <think>", () => {
    const ids = tok.encode("<|im_start|>assistant\n<think>a</think>b<|im_end|>");
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe("assistant\n<think>a</think>b");
    expect(tok.decode([])).toBe("");
  });

  test("tokenBytes reverses the byte-level mapping", () => {
    expect(new TextDecoder().decode(tok.tokenBytes(SP_WORLD))).toBe(" world");
    expect(hex(tok.tokenBytes(NEWLINE))).toBe("0a");
    expect(new TextDecoder().decode(tok.tokenBytes(IM_START))).toBe("<|im_start|>");
    // 🌍 is F0 9F 8C 8D; byte-level writes 0xF0 as ð, 0x9F as Ł, 0x8C as Į, 0x8D as į.
    expect(hex(tok.tokenBytes(tok.tokenToId("ĠðŁ")!))).toBe("20f09f");
    expect(hex(tok.tokenBytes(tok.tokenToId("Į")!))).toBe("8c");
    expect(hex(tok.tokenBytes(tok.tokenToId("į")!))).toBe("8d");
    expect(tok.tokenBytes(10_000_000).length).toBe(0);
  });

  test("allTokenBytes is one blob with offsets agreeing with tokenBytes", () => {
    const { blob, offsets } = tok.allTokenBytes();
    expect(offsets.length).toBe(tok.vocabSize + 1);
    expect(offsets[tok.vocabSize]).toBe(blob.length);
    const id = tok.tokenToId("ä¸ĸçķĮ")!;
    expect(new TextDecoder().decode(blob.subarray(offsets[id]!, offsets[id + 1]!))).toBe("世界");
    // Every byte value has its own single-byte token in a byte-level vocabulary.
    const singles = new Set<number>();
    for (let i = 0; i < tok.vocabSize; i++) if (offsets[i + 1]! - offsets[i]! === 1) singles.add(blob[offsets[i]!]!);
    expect(singles.size).toBe(256);
  });
});

describe("Gemma 3 tokenizer (sentencepiece-style with byte fallback)", () => {
  const tok = loadTokenizer("gemma3");
  const BOS = 2;

  test("adds <bos> and maps ▁ to spaces", () => {
    expect(tok.bosTokenId).toBe(BOS);
    expect(tok.eosTokenIds).toEqual([106]);
    // "Hello" = 9259 and "▁world" = 1902 in the vocabulary.
    expect(tok.encode("Hello world")).toEqual([BOS, 9259, 1902]);
    expect(tok.encode("Hello world", { addSpecialTokens: false })).toEqual([9259, 1902]);
    expect(new TextDecoder().decode(tok.tokenBytes(1902))).toBe(" world");
  });

  test("byte fallback tokens carry one byte", () => {
    expect(hex(tok.tokenBytes(tok.tokenToId("<0xF0>")!))).toBe("f0");
    expect(hex(tok.tokenBytes(tok.tokenToId("<0x0A>")!))).toBe("0a");
  });

  test("decode round trips", () => {
    for (const s of ["Hello world", " two  spaces", "数学 🧮 x\ny", "<start_of_turn>user\nhi<end_of_turn>"]) {
      expect(tok.decode(tok.encode(s, { addSpecialTokens: false }))).toBe(s);
    }
    expect(tok.decode(tok.encode("Hi there"), { skipSpecialTokens: true })).toBe("Hi there");
  });
});

describe("Gemma 4 conventions", () => {
  test("<|tool_response> ends generation when the vocabulary has it as a special token", () => {
    const { json, ids } = withSpecialTokens(tokenizerJson("gemma3"), ["<|tool_response>"]);
    const tok = Tokenizer.fromJson(json, tokenizerConfig("gemma3"));
    expect(tok.eosTokenIds.sort((a, b) => a - b)).toEqual([106, ids[0]!]);
  });
});

describe("Llama 3 tokenizer", () => {
  test("adds <|begin_of_text|> through a TemplateProcessing post-processor", () => {
    // The Llama 3.1 repositories' tokenizer.json: byte-level post-processing followed by a BOS template.
    const json = { ...tokenizerJson("llama3") };
    json.post_processor = {
      type: "Sequence",
      processors: [
        { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
        {
          type: "TemplateProcessing",
          single: [{ SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
          pair: [
            { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
            { Sequence: { id: "A", type_id: 0 } },
            { SpecialToken: { id: "<|begin_of_text|>", type_id: 1 } },
            { Sequence: { id: "B", type_id: 1 } },
          ],
          special_tokens: { "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [128000], tokens: ["<|begin_of_text|>"] } },
        },
      ],
    };
    const dir = mkdtempSync(join(tmpdir(), "rmlx-llama3-"));
    writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(json));
    writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(tokenizerConfig("llama3")));
    writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: [128001, 128008, 128009] }));
    const tok = Tokenizer.fromModelDir(dir);
    // "Hello" = 9906, "Ġworld" = 1917.
    expect(tok.encode("Hello world")).toEqual([128000, 9906, 1917]);
    expect(tok.encode("Hello world", { addSpecialTokens: false })).toEqual([9906, 1917]);
    expect(tok.encode("")).toEqual([128000]);
    expect(tok.encode("<|begin_of_text|>Hello world")).toEqual([128000, 9906, 1917]);
    expect(tok.bosTokenId).toBe(128000);
    expect(tok.eosTokenIds.sort()).toEqual([128001, 128008, 128009]);
    rmSync(dir, { recursive: true });
  });

  test("add_bos_token in tokenizer_config overrides the tokenizer.json post-processor", () => {
    const tok = Tokenizer.fromJson(tokenizerJson("llama3"), { ...tokenizerConfig("llama3"), add_bos_token: true });
    expect(tok.encode("Hello world")).toEqual([128000, 9906, 1917]);
    // A BOS the text already starts with is not doubled.
    expect(tok.encode("<|begin_of_text|>Hello world")).toEqual([128000, 9906, 1917]);
  });
});

describe("errors", () => {
  test("a missing tokenizer.json is not_found", () => {
    expect(() => Tokenizer.fromFiles("/nonexistent/tokenizer.json")).toThrow(RmlxError);
  });
});
