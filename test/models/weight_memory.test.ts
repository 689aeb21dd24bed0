// Weights of 1 MiB or more are read from the file into the backend's own memory (Backend.weightBuffer) where the
// backend asks for that; the model must compute exactly what it computes over the file's mapping.
import { describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { forwardBatch } from "../../src/engine/forward_batch.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { loadModel } from "../../src/models/registry.ts";
import { getBackend } from "../../src/backend/index.ts";
import { makeTinyModel } from "./tiny_model.ts";

describe("weights in the backend's memory", () => {
  test("give the logits of the mapped file, bit for bit (float and 4-bit weights, tied embeddings of 1 MiB)", () => {
    const be = getBackend();
    for (const quant of [undefined, { bits: 4, groupSize: 32 }]) {
      // 8192 x 32 f32 embeddings: 1 MiB, the smallest weight that is read into the backend's memory.
      const dir = makeTinyModel({ modelType: "qwen3", vocab: 8192, ...(quant ? { quant } : {}) });
      const logits = (mapped: boolean) => {
        if (mapped) process.env.RMLX_MMAP_WEIGHTS = "1";
        try {
          const model = loadModel(be, openModelDir(dir));
          const cache = new KvCache(model.backend, model.layers, { numBlocks: 8, blockSize: 4 });
          return forwardBatch(model, cache, [{ seq: new Sequence(), tokens: Int32Array.from([3, 8000, 42, 5]) }], "all").logits;
        } finally {
          delete process.env.RMLX_MMAP_WEIGHTS;
        }
      };
      try {
        const own = logits(false);
        expect(own.length).toBe(4 * 8192);
        expect([...own]).toEqual([...logits(true)]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  });
});
