// Long steps run each decoder layer in a scope of its own (src/models/layers.ts runLayer). The logits of a
// 100-token prompt in one step (per-layer scopes) must equal those of the same prompt fed in short chunks
// (one flat scope per step), for a dense family, an MoE one and Gemma 3.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { getBackend } from "../../src/backend/index.ts";
import { forwardBatch, logitsRow } from "../../src/engine/forward_batch.ts";
import { cacheForTokens } from "../../src/engine/generate.ts";
import { Sequence } from "../../src/engine/kv/kv_cache.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { setGemvMode } from "../../src/backend/native/lib.ts";
import { loadModel } from "../../src/models/registry.ts";

// a long step (panel products) and short chunks (decode products) agree to f32 rounding only in exact
// f32 products; the x16 products are checked against transformers in fixtures.test.ts
// (set as the file loads: models are built and run while the tests are collected)
setGemvMode("f32");
afterAll(() => setGemvMode("x16"));

const ROOT = join(import.meta.dir, "../fixtures/models");

function lastLogits(name: string, prompt: Int32Array, chunk: number): Float32Array {
  const be = getBackend();
  const model = loadModel(be, openModelDir(join(ROOT, name)));
  const cache = cacheForTokens(model, prompt.length + 1);
  const seq = new Sequence();
  let out: Float32Array | null = null;
  for (let s = 0; s < prompt.length; s += chunk) {
    const r = forwardBatch(model, cache, [{ seq, tokens: prompt.subarray(s, Math.min(prompt.length, s + chunk)) }]);
    out = logitsRow(r, 0).slice();
  }
  cache.dispose();
  return out!;
}

describe("per-layer scopes of long steps", () => {
  const prompt = Int32Array.from({ length: 100 }, (_, i) => (i * 37 + 11) % 400);
  for (const name of ["qwen3", "qwen3_moe_q4", "gemma3"]) {
    test(`${name}: one 100-token step equals 10-token chunks`, () => {
      const long = lastLogits(name, prompt, 100);
      const short = lastLogits(name, prompt, 10);
      let worst = 0;
      let scale = 0;
      for (let i = 0; i < long.length; i++) {
        worst = Math.max(worst, Math.abs(long[i]! - short[i]!));
        scale = Math.max(scale, Math.abs(short[i]!));
      }
      expect(worst / scale).toBeLessThan(1e-5);
    });
  }
});
