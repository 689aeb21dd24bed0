import { describe, expect, test } from "bun:test";
import { partialSuffixLength } from "../../src/text/holdback.ts";
import { StopStrings } from "../../src/text/stop.ts";

function run(stops: string[], pieces: string[]): { out: string[]; stop?: string; tail: string } {
  const s = new StopStrings(stops);
  const out: string[] = [];
  let stop: string | undefined;
  for (const p of pieces) {
    const r = s.push(p);
    out.push(r.text);
    stop ??= r.stop;
  }
  return { out, stop, tail: s.flush() };
}

/** Every way of cutting `text` into pieces of 1..3 characters, chosen by a fixed pseudo-random sequence. */
function chunk(text: string, seed: number): string[] {
  const out: string[] = [];
  let x = seed;
  for (let i = 0; i < text.length; ) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const n = 1 + (x % 3);
    out.push(text.slice(i, i + n));
    i += n;
  }
  return out;
}

describe("partialSuffixLength", () => {
  test("finds the longest suffix that begins a marker", () => {
    expect(partialSuffixLength("abc<too", ["<tool_call>"])).toBe(4);
    expect(partialSuffixLength("abc", ["<tool_call>"])).toBe(0);
    expect(partialSuffixLength("xx</th", ["<think>", "</think>"])).toBe(4);
    // A complete marker is not a partial one.
    expect(partialSuffixLength("END", ["END"])).toBe(0);
    expect(partialSuffixLength("aaa", ["aab"])).toBe(2);
  });
});

describe("StopStrings", () => {
  test("holds back a possible start and releases it when it turns out not to be", () => {
    const { out, stop, tail } = run(["###"], ["Hello #", "#", " no", "t a stop"]);
    expect(out).toEqual(["Hello ", "", "## no", "t a stop"]);
    expect(stop).toBeUndefined();
    expect(tail).toBe("");
  });

  test("a stop string split over three pieces cuts the text before it", () => {
    const { out, stop } = run(["<|end|>"], ["answer <|", "en", "d|> trailing"]);
    expect(out.join("")).toBe("answer ");
    expect(stop).toBe("<|end|>");
  });

  test("nothing comes out after the stop", () => {
    const s = new StopStrings(["STOP"]);
    expect(s.push("aSTOPb")).toEqual({ text: "a", stop: "STOP" });
    expect(s.push("more")).toEqual({ text: "" });
    expect(s.flush()).toBe("");
    expect(s.stopped).toBe("STOP");
  });

  test("the held tail is released by flush when the stream ends", () => {
    const { out, tail } = run(["\n\nUser:"], ["Bye.", "\n\nUs"]);
    expect(out.join("")).toBe("Bye.");
    expect(tail).toBe("\n\nUs");
  });

  test("the earliest stop wins among several, whatever the chunking", () => {
    const text = "one two <eot> three STOP four";
    // By hand: "<eot>" starts at 8, "STOP" at 20; the text before the first is "one two ".
    for (let seed = 1; seed <= 50; seed++) {
      const { out, stop } = run(["STOP", "<eot>", "never"], chunk(text, seed));
      expect(out.join("")).toBe("one two ");
      expect(stop).toBe("<eot>");
    }
  });

  test("overlapping prefixes: 'aab' inside 'aaab'", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const { out, stop } = run(["aab"], chunk("xaaab", seed));
      expect(out.join("")).toBe("xa");
      expect(stop).toBe("aab");
    }
  });

  test("no stops passes text straight through; empty stop strings are ignored", () => {
    expect(run([], ["a", "b"]).out).toEqual(["a", "b"]);
    expect(run([""], ["a", "b"]).out).toEqual(["a", "b"]);
  });

  test("non-ASCII stop strings", () => {
    const { out, stop } = run(["。終"], chunk("これは文。終わり", 7));
    expect(out.join("")).toBe("これは文");
    expect(stop).toBe("。終");
  });
});
