// A backend with only what the KV cache needs from one: pool creation, block copies (recorded) and disposal.
import type { Backend, KvPool } from "../../../src/backend/backend.ts";

export function fakeBackend(copies: [number, number][] = []): Backend {
  const be = {
    createKvPool(numBlocks: number, blockSize: number, kvHeads: number, headDim: number): KvPool {
      const t = { shape: [numBlocks, blockSize, kvHeads, headDim], dtype: "f32" as const };
      return { k: t, v: t, numBlocks, blockSize, kvHeads, headDim };
    },
    copyBlock(_pool: KvPool, src: number, dst: number) {
      copies.push([src, dst]);
    },
    dispose() {},
  };
  return be as unknown as Backend;
}
