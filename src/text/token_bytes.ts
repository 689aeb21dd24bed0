// How a vocabulary string maps back to the bytes it stands for. Two conventions cover the models we serve:
// byte-level BPE (GPT-2, Llama 3, Qwen), where every byte is written as one printable code point, and
// sentencepiece-style vocabularies (Llama 2, Gemma), where "▁" stands for a space and "<0xNN>" tokens carry
// single bytes that did not fit the vocabulary (byte fallback).

export type TokenCoding =
  | { kind: "byte_level" }
  | { kind: "metaspace"; replacement: string; byteFallback: boolean }
  | { kind: "plain" };

export interface DecodeConvention {
  coding: TokenCoding;
  /** Leading spaces the tokenizer's decoder removes from the start of a decoded sequence. */
  stripLeadingSpaces: number;
}

type Json = Record<string, unknown>;

function asObject(v: unknown): Json | undefined {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Json) : undefined;
}

function flattenDecoders(d: Json | undefined): Json[] {
  if (!d) return [];
  if (d.type === "Sequence" && Array.isArray(d.decoders)) return d.decoders.flatMap((x) => flattenDecoders(asObject(x)));
  return [d];
}

/** Reads the convention from tokenizer.json's `decoder` and `model` sections. */
export function decodeConvention(tokenizerJson: Json): DecodeConvention {
  const decoders = flattenDecoders(asObject(tokenizerJson.decoder));
  const model = asObject(tokenizerJson.model) ?? {};
  let coding: TokenCoding = { kind: "plain" };
  let stripLeadingSpaces = 0;
  const byteFallback = model.byte_fallback === true || decoders.some((d) => d.type === "ByteFallback");
  for (const d of decoders) {
    if (d.type === "ByteLevel") coding = { kind: "byte_level" };
    else if (d.type === "Metaspace") {
      const replacement = typeof d.replacement === "string" ? d.replacement : "▁";
      coding = { kind: "metaspace", replacement, byteFallback };
      const scheme = d.prepend_scheme ?? (d.add_prefix_space === false ? "never" : "always");
      if (scheme !== "never") stripLeadingSpaces = Math.max(stripLeadingSpaces, 1);
    } else if (d.type === "Replace" && coding.kind !== "byte_level") {
      const pattern = asObject(d.pattern);
      if (typeof pattern?.String === "string" && d.content === " ") {
        coding = { kind: "metaspace", replacement: pattern.String, byteFallback };
      }
    } else if (d.type === "Strip" && typeof d.start === "number" && d.content === " ") {
      stripLeadingSpaces = Math.max(stripLeadingSpaces, d.start);
    }
  }
  return { coding, stripLeadingSpaces };
}

let byteDecoderTable: Int16Array | undefined;

/** The reverse of GPT-2's bytes_to_unicode: code point -> byte, -1 where a code point stands for no byte. */
function byteLevelTable(): Int16Array {
  if (byteDecoderTable) return byteDecoderTable;
  const table = new Int16Array(512).fill(-1);
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    if (printable(b)) table[b] = b;
    else table[next++] = b;
  }
  byteDecoderTable = table;
  return table;
}

const utf8 = new TextEncoder();
const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;

/**
 * Writes the bytes of one vocabulary entry or added token into out from index at and returns how many; out needs
 * room for 3 bytes per UTF-16 unit of the token (UTF-8's most). Written in place so that the whole vocabulary
 * (150k entries) fills one buffer: an array per entry made building it take about 185 ms.
 */
export function vocabEntryBytesInto(token: string, coding: TokenCoding, out: Uint8Array, at: number): number {
  switch (coding.kind) {
    case "byte_level": {
      const table = byteLevelTable();
      let n = at;
      for (let i = 0; i < token.length; i++) {
        const cp = token.charCodeAt(i);
        const b = cp < table.length ? table[cp]! : -1;
        // A code point outside the table cannot come from byte-level encoding; keep its UTF-8 form.
        if (b < 0) return utf8.encodeInto(token, out.subarray(at)).written;
        out[n++] = b;
      }
      return n - at;
    }
    case "metaspace": {
      if (coding.byteFallback) {
        const m = BYTE_TOKEN.exec(token);
        if (m) {
          out[at] = parseInt(m[1]!, 16);
          return 1;
        }
      }
      return utf8.encodeInto(token.replaceAll(coding.replacement, " "), out.subarray(at)).written;
    }
    case "plain":
      return utf8.encodeInto(token, out.subarray(at)).written;
  }
}
