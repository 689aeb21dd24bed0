import { describe, expect, test } from "bun:test";
import type { AttentionBatch, DType } from "../../src/backend/backend.ts";
import { RmlxError } from "../../src/errors.ts";
import { roundToBf16 } from "../../src/models/weights.ts";
import { backend, expectClose, randn, rng } from "./helpers.ts";

const be = backend();
const t = (data: Float32Array, shape: number[]) => be.fromArray(data, shape, "f32");

/** Naive attention of one query over explicit key/value rows (all f64). */
function attendRef(q: Float32Array, keys: Float32Array[], vals: Float32Array[], scale: number, softcap: number): number[] {
  const s = keys.map((k) => {
    let d = 0;
    for (let i = 0; i < q.length; i++) d += q[i]! * k[i]!;
    d *= scale;
    return softcap > 0 ? softcap * Math.tanh(d / softcap) : d;
  });
  const m = Math.max(...s);
  const e = s.map((v) => Math.exp(v - m));
  const z = e.reduce((a, b) => a + b, 0);
  const out = new Array<number>(q.length).fill(0);
  e.forEach((p, j) => {
    for (let i = 0; i < q.length; i++) out[i]! += (p / z) * vals[j]![i]!;
  });
  return out;
}

describe("paged attention", () => {
  const blockSize = 4;
  const numBlocks = 16;
  const kvHeads = 2;
  const heads = 6;
  const D = 8;
  const G = heads / kvHeads;
  // Three sequences: a prefill chunk continuing a cached prompt, a fresh one-token prompt, a long decode.
  const seqs = [
    { total: 9, fresh: 3 },
    { total: 1, fresh: 1 },
    { total: 14, fresh: 1 },
  ];
  const maxBlocks = 4;

  function setup(dtype: DType, seed: number) {
    const r = rng(seed);
    const perm = [...Array(numBlocks).keys()].sort(() => r() - 0.5);
    const blockTables = new Int32Array(seqs.length * maxBlocks).fill(-1);
    let next = 0;
    seqs.forEach((s, i) => {
      for (let b = 0; b < Math.ceil(s.total / blockSize); b++) blockTables[i * maxBlocks + b] = perm[next++]!;
    });
    const K = seqs.map((s, i) => randn(s.total * kvHeads * D, seed + 10 + i));
    const V = seqs.map((s, i) => randn(s.total * kvHeads * D, seed + 20 + i));
    const pool = be.createKvPool(numBlocks, blockSize, kvHeads, D, dtype);
    const slotOf = (s: number, p: number) => blockTables[s * maxBlocks + Math.floor(p / blockSize)]! * blockSize + (p % blockSize);
    return { blockTables, K, V, pool, slotOf };
  }

  function run(dtype: DType, window: number, softcap: number, tol: number) {
    const { blockTables, K, V, pool, slotOf } = setup(dtype, 100 + window);
    // The cached part of each sequence, written in an earlier step.
    be.scope(() => {
      seqs.forEach((s, i) => {
        const n = s.total - s.fresh;
        if (n === 0) return;
        const slots = Int32Array.from({ length: n }, (_, p) => slotOf(i, p));
        be.kvWrite(pool, t(K[i]!.slice(0, n * kvHeads * D), [n, kvHeads, D]), t(V[i]!.slice(0, n * kvHeads * D), [n, kvHeads, D]), slots);
      });
    });
    // This step: the fresh tokens of all sequences, batched.
    const tokenSeq: number[] = [];
    const positions: number[] = [];
    seqs.forEach((s, i) => {
      for (let p = s.total - s.fresh; p < s.total; p++) {
        tokenSeq.push(i);
        positions.push(p);
      }
    });
    const T = tokenSeq.length;
    const kNew = new Float32Array(T * kvHeads * D);
    const vNew = new Float32Array(T * kvHeads * D);
    tokenSeq.forEach((s, j) => {
      const o = positions[j]! * kvHeads * D;
      kNew.set(K[s]!.slice(o, o + kvHeads * D), j * kvHeads * D);
      vNew.set(V[s]!.slice(o, o + kvHeads * D), j * kvHeads * D);
    });
    const q = randn(T * heads * D, 7 + window);
    const batch: AttentionBatch = {
      blockTables,
      maxBlocks,
      seqLens: Int32Array.from(seqs.map((s) => s.total)),
      tokenSeq: Int32Array.from(tokenSeq),
      positions: Int32Array.from(positions),
    };
    const scale = 1 / Math.sqrt(D);
    const out = be.scope(() => {
      const slots = Int32Array.from(tokenSeq.map((s, j) => slotOf(s, positions[j]!)));
      be.kvWrite(pool, t(kNew, [T, kvHeads, D]), t(vNew, [T, kvHeads, D]), slots);
      return be.toFloat32(be.pagedAttention(t(q, [T, heads, D]), pool, batch, { scale, window, softcap }));
    });
    const ref: number[] = [];
    for (let j = 0; j < T; j++) {
      const s = tokenSeq[j]!;
      const p = positions[j]!;
      const lo = window > 0 ? Math.max(0, p - window + 1) : 0;
      for (let h = 0; h < heads; h++) {
        const kh = Math.floor(h / G);
        const row = (arr: Float32Array, pos: number) => arr.slice((pos * kvHeads + kh) * D, (pos * kvHeads + kh + 1) * D);
        const keys: Float32Array[] = [];
        const vals: Float32Array[] = [];
        for (let pos = lo; pos <= p; pos++) {
          keys.push(row(K[s]!, pos));
          vals.push(row(V[s]!, pos));
        }
        ref.push(...attendRef(q.slice((j * heads + h) * D, (j * heads + h + 1) * D), keys, vals, scale, softcap));
      }
    }
    expectClose(out, ref, tol, tol);
    return { pool, batch, q, T, out };
  }

  test("several sequences of different lengths, GQA, full causal", () => {
    run("f32", 0, 0, 2e-6);
  });
  test("sliding window", () => {
    run("f32", 3, 0, 2e-6);
  });
  test("tanh soft-capping", () => {
    run("f32", 0, 2, 2e-6);
  });
  test("f16 pool", () => {
    run("f16", 0, 0, 3e-3);
  });
  test("bf16 pool with a window", () => {
    run("bf16", 5, 0, 2e-2);
  });

  test("copyBlock duplicates a block: attention through the copy is unchanged", () => {
    const { pool, batch, q, T, out } = run("f32", 0, 0, 2e-6);
    const used = new Set(batch.blockTables);
    const free = [...Array(numBlocks).keys()].find((b) => !used.has(b))!;
    const tables = batch.blockTables.slice();
    const src = tables[2 * maxBlocks + 1]!;
    be.copyBlock(pool, src, free);
    tables[2 * maxBlocks + 1] = free;
    const again = be.toFloat32(be.pagedAttention(t(q, [T, heads, D]), pool, { ...batch, blockTables: tables }, { scale: 1 / Math.sqrt(D) }));
    expect([...again]).toEqual([...out]);
  });

  test("bad batches throw RmlxError, not crash", () => {
    const { pool, blockTables } = setup("f32", 1);
    const q = t(randn(heads * D, 1), [1, heads, D]);
    const base: AttentionBatch = {
      blockTables,
      maxBlocks,
      seqLens: new Int32Array([9, 1, 14]),
      tokenSeq: new Int32Array([0]),
      positions: new Int32Array([8]),
    };
    const opts = { scale: 0.3 };
    expect(() => be.toFloat32(be.pagedAttention(q, pool, { ...base, positions: new Int32Array([9]) }, opts))).toThrow(RmlxError);
    expect(() => be.toFloat32(be.pagedAttention(q, pool, { ...base, tokenSeq: new Int32Array([3]) }, opts))).toThrow(RmlxError);
    expect(() => be.pagedAttention(q, pool, { ...base, tokenSeq: new Int32Array([0, 1]) }, opts)).toThrow(RmlxError);
    expect(() => be.pagedAttention(t(randn(5 * D, 1), [1, 5, D]), pool, base, opts)).toThrow(/multiple of 2/);
    const badTable = blockTables.slice();
    badTable[2] = 99;
    expect(() => be.toFloat32(be.pagedAttention(q, pool, { ...base, blockTables: badTable }, opts))).toThrow(RmlxError);
    expect(() => be.kvWrite(pool, t(randn(D * 2, 1), [1, 2, D]), t(randn(D * 2, 1), [1, 2, D]), new Int32Array([1000]))).not.toThrow();
    expect(() => be.eval()).toThrow(/slot 1000/);
  });
});

describe("paged attention, 16-bit pools read directly", () => {
  for (const dtype of ["f16", "bf16"] as const)
    test(`${dtype}, head dim 12 (not a multiple of 8), one decode token over 21 keys`, () => {
      const [D, kvHeads, heads, n, blockSize] = [12, 1, 3, 21, 8];
      const pool = be.createKvPool(4, blockSize, kvHeads, D, dtype);
      const blockTables = new Int32Array([3, 1, 0, 2]);
      const slots = Int32Array.from({ length: n }, (_, p) => blockTables[Math.floor(p / blockSize)]! * blockSize + (p % blockSize));
      const k = randn(n * D, 41);
      const v = randn(n * D, 42);
      const q = randn(heads * D, 43);
      const batch = { blockTables, maxBlocks: 4, seqLens: new Int32Array([n]), tokenSeq: new Int32Array([0]), positions: new Int32Array([n - 1]) };
      const out = be.scope(() => {
        be.kvWrite(pool, t(k, [n, 1, D]), t(v, [n, 1, D]), slots);
        return be.toFloat32(be.pagedAttention(t(q, [1, heads, D]), pool, batch, { scale: 0.3 }));
      });
      const rows = (a: Float32Array) => [...Array(n).keys()].map((j) => a.slice(j * D, j * D + D));
      const ref: number[] = [];
      for (let h = 0; h < heads; h++) ref.push(...attendRef(q.slice(h * D, h * D + D), rows(k), rows(v), 0.3, 0));
      expectClose(out, ref, dtype === "f16" ? 3e-3 : 2e-2, dtype === "f16" ? 3e-3 : 2e-2);
    });
  // A decode step widens each key and value row once for all query rows of its KV head (passes of 4, 2 and 1 rows):
  // every group size up to 7, head dims a multiple of the vector width or not. The reference takes the rounded
  // values, so only f32 summation order separates the two.
  for (const dtype of ["f16", "bf16"] as const)
    for (const [D, kvHeads, heads] of [[128, 2, 4], [64, 2, 8], [80, 1, 7], [128, 1, 5], [64, 3, 18], [32, 2, 6]] as const)
      test(`${dtype}, head dim ${D}, ${heads / kvHeads} query rows a KV head, one decode token over 300 keys`, () => {
        const [n, blockSize] = [300, 16];
        const blocks = Math.ceil(n / blockSize);
        const pool = be.createKvPool(blocks, blockSize, kvHeads, D, dtype);
        const blockTables = Int32Array.from({ length: blocks }, (_, i) => blocks - 1 - i);
        const slots = Int32Array.from({ length: n }, (_, p) => blockTables[Math.floor(p / blockSize)]! * blockSize + (p % blockSize));
        const round = (a: Float32Array) => (dtype === "f16" ? Float32Array.from(new Float16Array(a)) : a.map(roundToBf16));
        const k = round(randn(n * kvHeads * D, 51));
        const v = round(randn(n * kvHeads * D, 52));
        const q = randn(heads * D, 53);
        const batch = { blockTables, maxBlocks: blocks, seqLens: new Int32Array([n]), tokenSeq: new Int32Array([0]), positions: new Int32Array([n - 1]) };
        const scale = 1 / Math.sqrt(D);
        const out = be.scope(() => {
          be.kvWrite(pool, t(k, [n, kvHeads, D]), t(v, [n, kvHeads, D]), slots);
          return be.toFloat32(be.pagedAttention(t(q, [1, heads, D]), pool, batch, { scale }));
        });
        const rows = (a: Float32Array, kh: number) => [...Array(n).keys()].map((j) => a.slice((j * kvHeads + kh) * D, (j * kvHeads + kh + 1) * D));
        const ref: number[] = [];
        for (let h = 0; h < heads; h++) {
          const kh = Math.floor(h / (heads / kvHeads));
          ref.push(...attendRef(q.slice(h * D, h * D + D), rows(k, kh), rows(v, kh), scale, 0));
        }
        expectClose(out, ref, 2e-6, 2e-5);
      });
});

// One sequence and one KV head: fewer (sequence, head) items than threads, so the native backend splits the keys
// into parts whose partial softmax sums are merged (at least 256 keys a part, so 1500 keys make up to 5).
describe("paged attention, one decode token over a long cache (keys split across threads)", () => {
  for (const [dtype, window, tol] of [["f32", 0, 2e-5], ["f32", 700, 2e-5], ["f16", 0, 3e-3]] as const)
    test(`${dtype} pool, window ${window}`, () => {
      const [D, heads, n, blockSize] = [32, 2, 1500, 16];
      const blocks = Math.ceil(n / blockSize);
      const pool = be.createKvPool(blocks, blockSize, 1, D, dtype);
      const blockTables = Int32Array.from({ length: blocks }, (_, i) => (i * 37) % blocks);
      const slots = Int32Array.from({ length: n }, (_, p) => blockTables[Math.floor(p / blockSize)]! * blockSize + (p % blockSize));
      const k = randn(n * D, 51);
      const v = randn(n * D, 52);
      const q = randn(heads * D, 53).map((x) => x * 3);
      const batch = { blockTables, maxBlocks: blocks, seqLens: new Int32Array([n]), tokenSeq: new Int32Array([0]), positions: new Int32Array([n - 1]) };
      const out = be.scope(() => {
        be.kvWrite(pool, t(k, [n, 1, D]), t(v, [n, 1, D]), slots);
        return be.toFloat32(be.pagedAttention(t(q, [1, heads, D]), pool, batch, { scale: 0.2, window }));
      });
      const lo = window > 0 ? n - window : 0;
      const rows = (a: Float32Array) => [...Array(n - lo).keys()].map((j) => a.slice((lo + j) * D, (lo + j + 1) * D));
      const ref: number[] = [];
      for (let h = 0; h < heads; h++) ref.push(...attendRef(q.slice(h * D, h * D + D), rows(k), rows(v), 0.2, 0));
      expectClose(out, ref, tol, tol);
    });
});

/** A pool of 16-token blocks holding T tokens in reversed blocks (two spare), and each token's slot. */
function reversedPool(T: number, kvHeads: number, D: number, dtype: "f32" | "f16" | "bf16") {
  const blockSize = 16;
  const numBlocks = Math.ceil(T / blockSize);
  const pool = be.createKvPool(numBlocks + 2, blockSize, kvHeads, D, dtype);
  const blockTables = Int32Array.from({ length: numBlocks }, (_, i) => numBlocks + 1 - i);
  const slots = Int32Array.from({ length: T }, (_, p) => blockTables[Math.floor(p / blockSize)]! * blockSize + (p % blockSize));
  return { pool, blockTables, numBlocks, slots };
}

describe("paged attention, prefill of one long chunk (threaded, tiled)", () => {
  // [heads, kvHeads, D]: two query rows a KV head and token; three (odd row counts) at a head dim of 48; a head dim
  // that is not a multiple of 16. 16-bit pools are read by their own tile kernels where the ISA has them; their
  // tolerance is the pool's rounding of K and V.
  const TOL: Record<string, number> = { f32: 2e-6, f16: 3e-3, bf16: 2e-2 };
  for (const dtype of ["f32", "f16", "bf16"] as const)
  for (const [heads, kvHeads, D] of [[4, 2, 32], [3, 1, 48], [4, 2, 40]] as const)
  for (const window of dtype === "f32" ? [0, 5, 40, 64] : [0, 40])
    test(`matches dense causal attention, ${dtype} pool, window ${window}, ${heads} heads over ${kvHeads}, head dim ${D}`, () => {
    const T = 70;
    const { pool, blockTables, numBlocks, slots } = reversedPool(T, kvHeads, D, dtype);
    const k = randn(T * kvHeads * D, 31);
    const v = randn(T * kvHeads * D, 32);
    const q = randn(T * heads * D, 33);
    const positions = Int32Array.from({ length: T }, (_, i) => i);
    const batch = { blockTables, maxBlocks: numBlocks, seqLens: new Int32Array([T]), tokenSeq: new Int32Array(T), positions };
    const out = be.scope(() => {
      be.kvWrite(pool, t(k, [T, kvHeads, D]), t(v, [T, kvHeads, D]), slots);
      return be.toFloat32(be.pagedAttention(t(q, [T, heads, D]), pool, batch, { scale: 0.2, window }));
    });
    const ref: number[] = [];
    for (let i = 0; i < T; i++)
      for (let h = 0; h < heads; h++) {
        const kh = Math.floor(h / (heads / kvHeads));
        const lo = window > 0 ? Math.max(0, i - window + 1) : 0;
        const rows = (a: Float32Array) =>
          [...Array(i + 1 - lo).keys()].map((j) => a.slice(((lo + j) * kvHeads + kh) * D, ((lo + j) * kvHeads + kh + 1) * D));
        ref.push(...attendRef(q.slice((i * heads + h) * D, (i * heads + h + 1) * D), rows(k), rows(v), 0.2, 0));
      }
    expectClose(out, ref, TOL[dtype]!, TOL[dtype]!);
    });
});

describe("paged attention, decode over a 16-bit pool (the single-row kernels)", () => {
  // One token over 70 keys (a chunk of 64 and a tail of 6), head dims with and without a tail past whole 16-lane
  // steps; tolerance: the pool's rounding of K and V.
  const TOL: Record<string, number> = { f16: 3e-3, bf16: 2e-2 };
  for (const dtype of ["f16", "bf16"] as const)
    for (const [heads, kvHeads, D] of [[4, 2, 128], [4, 2, 40], [3, 1, 48], [2, 2, 8]] as const)
      test(`matches dense attention, ${dtype} pool, ${heads} heads over ${kvHeads}, head dim ${D}`, () => {
        const T = 70;
        const { pool, blockTables, numBlocks, slots } = reversedPool(T, kvHeads, D, dtype);
        const k = randn(T * kvHeads * D, 41);
        const v = randn(T * kvHeads * D, 42);
        const q = randn(heads * D, 43);
        const batch = { blockTables, maxBlocks: numBlocks, seqLens: new Int32Array([T]), tokenSeq: new Int32Array(1), positions: new Int32Array([T - 1]) };
        const out = be.scope(() => {
          be.kvWrite(pool, t(k, [T, kvHeads, D]), t(v, [T, kvHeads, D]), slots);
          return be.toFloat32(be.pagedAttention(t(q, [1, heads, D]), pool, batch, { scale: 0.2 }));
        });
        const ref: number[] = [];
        for (let h = 0; h < heads; h++) {
          const kh = Math.floor(h / (heads / kvHeads));
          const rows = (a: Float32Array) => [...Array(T).keys()].map((j) => a.slice((j * kvHeads + kh) * D, (j * kvHeads + kh + 1) * D));
          ref.push(...attendRef(q.slice(h * D, (h + 1) * D), rows(k), rows(v), 0.2, 0));
        }
        expectClose(out, ref, TOL[dtype]!, TOL[dtype]!);
      });
});

describe("sdpa", () => {
  for (const [B, H, Hkv, L, S, causal] of [
    [2, 4, 2, 5, 5, true],
    [1, 4, 1, 3, 7, true],
    [2, 2, 2, 4, 6, false],
  ] as [number, number, number, number, number, boolean][])
    test(`B${B} H${H} Hkv${Hkv} L${L} S${S} causal=${causal}`, () => {
      const D = 16;
      const q = randn(B * H * L * D, 1);
      const k = randn(B * Hkv * S * D, 2);
      const v = randn(B * Hkv * S * D, 3);
      const scale = 0.25;
      const out = be.toFloat32(be.sdpa(t(q, [B, H, L, D]), t(k, [B, Hkv, S, D]), t(v, [B, Hkv, S, D]), scale, causal));
      const ref: number[] = [];
      for (let b = 0; b < B; b++)
        for (let h = 0; h < H; h++)
          for (let i = 0; i < L; i++) {
            const kh = Math.floor(h / (H / Hkv));
            const n = causal ? i + S - L + 1 : S;
            const rows = (arr: Float32Array) =>
              [...Array(n).keys()].map((j) => arr.slice(((b * Hkv + kh) * S + j) * D, ((b * Hkv + kh) * S + j + 1) * D));
            ref.push(...attendRef(q.slice(((b * H + h) * L + i) * D, ((b * H + h) * L + i + 1) * D), rows(k), rows(v), scale, 0));
          }
      expectClose(out, ref, 2e-6, 2e-6);
    });
});
