// Packed KV pools (affine 8/4-bit, FP8): the codes written are within the format's error of the values, and
// paged attention over the packed pool equals attention over a float pool holding the decoded values, for decode
// steps (split into parts on long contexts), prefill chunks and sliding windows. Prefix-sharing copies whole
// packed blocks, and block reads and writes (an SSD tier's) move them as bytes. On the mlx backend (affine codes
// only: MLX's quantize has no FP8 codec with f16 group scales) the FP8 cases are skipped.
import { describe, expect, test } from "bun:test";
import type { AttentionBatch, KvPool } from "../../src/backend/backend.ts";
import { type KvElement, kvElementBytes } from "../../src/quant/kv_codec.ts";
import { native } from "../../src/backend/native/lib.ts";
import { bytesOf } from "../../src/backend/native/memory.ts";
import type { NTensor } from "../../src/backend/native/tensor.ts";
import { availableIsas, e4m3, setIsa } from "../native/ref.ts";
import { backend, expectClose, randn } from "./helpers.ts";

const be = backend();
const MLX = process.env.RMLX_TEST_BACKEND === "mlx";
const BEST = MLX ? "" : String(native().rmlx_isa());
/** Why a format's cases do not run on this backend, or null. */
const skipOn = (f: { k: Grouped; v: Grouped }) => (MLX && (f.k.kind === "fp8" || f.v.kind === "fp8") ? " (skipped: the mlx backend has no FP8 KV codec)" : null);
const t = (data: Float32Array, shape: number[]) => be.fromArray(data, shape, "f32");

/** The grouped formats (turbo rows are tested in kv_turbo.test.ts). */
type Grouped = Exclude<KvElement, { kind: "turbo" }>;
const affine = (bits: 4 | 8, group = 64): Grouped => ({ kind: "affine", bits, group });
const FORMATS: Record<string, { k: Grouped; v: Grouped }> = {
  q8: { k: affine(8), v: affine(8) },
  q4: { k: affine(4), v: affine(4) },
  q4g32: { k: affine(4, 32), v: affine(4, 32) },
  k8v4: { k: affine(8), v: affine(4) },
  fp8: { k: { kind: "fp8", group: 64 }, v: { kind: "fp8", group: 64 } },
  k8vf16: { k: affine(8), v: { kind: "float", dtype: "f16" } },
};

/** The decoded rows [slots * kvHeads, D] of one side of a packed pool, read from its codes, scales and biases. */
function decodeSide(e: Grouped, data: KvPool["k"], scales: KvPool["k"] | undefined, biases: KvPool["k"] | undefined, rows: number, D: number): Float32Array {
  const out = new Float32Array(rows * D);
  if (e.kind === "float") return be.toFloat32(data);
  const codes = be.toInt32(data);
  const sc = be.toFloat32(scales!);
  const bi = biases ? be.toFloat32(biases) : null;
  const groups = D / e.group;
  const bits = e.kind === "fp8" ? 8 : e.bits;
  const vbytes = (D * bits) / 8;
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < D; i++) {
      const g = Math.floor(i / e.group);
      const s = sc[r * groups + g]!;
      if (e.kind === "fp8") {
        out[r * D + i] = e4m3(codes[r * vbytes + i]!) * s;
      } else {
        const c = bits === 8 ? codes[r * vbytes + i]! : (codes[r * vbytes + (i >> 1)]! >> ((i & 1) * 4)) & 15;
        out[r * D + i] = s * c + bi![r * groups + g]!;
      }
    }
  }
  return out;
}

function decodePool(pool: KvPool): { k: Float32Array; v: Float32Array } {
  be.eval();
  const rows = pool.numBlocks * pool.blockSize * pool.kvHeads;
  const f = pool.format as { k: Grouped; v: Grouped };
  return {
    k: decodeSide(f.k, pool.k, pool.kScales, pool.kBiases, rows, pool.headDim),
    v: decodeSide(f.v, pool.v, pool.vScales, pool.vBiases, rows, pool.headDim),
  };
}

/** Largest allowed |decoded - value| for a group of values x. */
function bound(e: Grouped, x: Float32Array): number {
  let mn = Infinity;
  let mx = -Infinity;
  for (const v of x) (mn = Math.min(mn, v)), (mx = Math.max(mx, v));
  if (e.kind === "fp8") return Math.max(Math.abs(mn), Math.abs(mx)) / 16 + 1e-6;
  if (e.kind === "float") return 1e-3 * Math.max(Math.abs(mn), Math.abs(mx));
  // MLX's rule makes zero exact by stretching the scale up to half a step at the edge, so the far end of the
  // group may clamp by up to one step.
  const step = (mx - mn) / (2 ** e.bits - 1);
  return 1.01 * step + 2e-3 * Math.max(Math.abs(mn), Math.abs(mx));
}

describe("packed KV pools", () => {
  const blockSize = 16;
  const numBlocks = 64;
  const kvHeads = 2;
  const heads = 4;
  const D = 64;
  // A decode over 600 keys (split into parts), a prefill chunk of 7 tokens after 40 cached, a 1-token prompt.
  const seqs = [
    { total: 600, fresh: 1 },
    { total: 47, fresh: 7 },
    { total: 1, fresh: 1 },
  ];
  const maxBlocks = Math.ceil(600 / blockSize);

  for (const [name, format] of Object.entries(FORMATS)) {
    for (const window of [0, 24]) {
      test.skipIf(skipOn(format) !== null)(`${name}${window ? " windowed" : ""}${skipOn(format) ?? ""}: attention over the packed pool equals attention over its decoded values`, () => {
        const tables = new Int32Array(seqs.length * maxBlocks).fill(0);
        let next = numBlocks - 1;
        seqs.forEach((s, i) => {
          for (let b = 0; b < Math.ceil(s.total / blockSize); b++) tables[i * maxBlocks + b] = next--;
        });
        const slotOf = (s: number, p: number) => tables[s * maxBlocks + Math.floor(p / blockSize)]! * blockSize + (p % blockSize);
        const packed = be.createKvPool(numBlocks, blockSize, kvHeads, D, format);
        const K = seqs.map((s, i) => randn(s.total * kvHeads * D, 7 + i, 3));
        const V = seqs.map((s, i) => randn(s.total * kvHeads * D, 17 + i, 2));
        be.scope(() => {
          seqs.forEach((s, i) => {
            const slots = Int32Array.from({ length: s.total }, (_, p) => slotOf(i, p));
            be.kvWrite(packed, t(K[i]!, [s.total, kvHeads, D]), t(V[i]!, [s.total, kvHeads, D]), slots);
          });
        });
        const dec = decodePool(packed);
        // The codes hold every value within the format's error.
        seqs.forEach((s, i) => {
          for (let p = 0; p < s.total; p++) {
            for (let h = 0; h < kvHeads; h++) {
              const row = slotOf(i, p) * kvHeads + h;
              for (const [side, src, e] of [["k", K, format.k], ["v", V, format.v]] as const) {
                const group = e.kind === "float" ? D : e.group;
                for (let g0 = 0; g0 < D; g0 += group) {
                  const x = src[i]!.subarray((p * kvHeads + h) * D + g0, (p * kvHeads + h) * D + g0 + group);
                  const got = dec[side].subarray(row * D + g0, row * D + g0 + group);
                  const b = bound(e, x);
                  for (let j = 0; j < group; j++) if (!(Math.abs(got[j]! - x[j]!) <= b)) throw new Error(`${side} row ${row} value ${g0 + j}: ${got[j]} vs ${x[j]} (bound ${b})`);
                }
              }
            }
          }
        });
        // A float pool with the decoded values.
        const plain = be.createKvPool(numBlocks, blockSize, kvHeads, D, "f32");
        be.scope(() => {
          const all = Int32Array.from({ length: numBlocks * blockSize }, (_, i) => i);
          be.kvWrite(plain, t(dec.k, [numBlocks * blockSize, kvHeads, D]), t(dec.v, [numBlocks * blockSize, kvHeads, D]), all);
        });
        const tokenSeq: number[] = [];
        const positions: number[] = [];
        seqs.forEach((s, i) => {
          for (let p = s.total - s.fresh; p < s.total; p++) tokenSeq.push(i), positions.push(p);
        });
        const batch: AttentionBatch = {
          blockTables: tables,
          maxBlocks,
          seqLens: Int32Array.from(seqs.map((s) => s.total)),
          tokenSeq: Int32Array.from(tokenSeq),
          positions: Int32Array.from(positions),
        };
        const q = randn(tokenSeq.length * heads * D, 99, 0.5);
        const opts = { scale: 1 / Math.sqrt(D), window };
        const got = be.scope(() => be.toFloat32(be.pagedAttention(t(q, [tokenSeq.length, heads, D]), packed, batch, opts)));
        const want = be.scope(() => be.toFloat32(be.pagedAttention(t(q, [tokenSeq.length, heads, D]), plain, batch, opts)));
        expectClose(got, want, 2e-5, 2e-4);
        // Decode steps alone (one token per sequence) take the single-row path.
        const dBatch: AttentionBatch = { ...batch, tokenSeq: Int32Array.from([0, 1, 2]), positions: Int32Array.from(seqs.map((s) => s.total - 1)) };
        const q1 = randn(3 * heads * D, 5, 0.5);
        const g1 = be.scope(() => be.toFloat32(be.pagedAttention(t(q1, [3, heads, D]), packed, dBatch, opts)));
        const w1 = be.scope(() => be.toFloat32(be.pagedAttention(t(q1, [3, heads, D]), plain, dBatch, opts)));
        expectClose(g1, w1, 2e-5, 2e-4);
        for (const p of [packed, plain]) for (const x of [p.k, p.v, p.kScales, p.kBiases, p.vScales, p.vBiases]) if (x) be.dispose(x);
      });
    }
  }

  // Decode steps read packed rows in place (scores on the codes, values decoded into the accumulators): every
  // query-heads-per-KV-head count (the kernels take rows in pairs), head_dim 64, 128 and 256, on every ISA (on
  // the mlx backend, once).
  for (const isa of MLX ? ["mlx"] : availableIsas()) {
    test(`decode over packed rows equals attention over their decoded values (${isa})`, () => {
      if (!MLX) expect(setIsa(isa)).toBe(0);
      try {
        for (const [name, format] of Object.entries(FORMATS)) {
          if (skipOn(format)) continue;
          for (const [G, hd, total] of [[1, 128, 300], [2, 64, 77], [3, 128, 129], [5, 256, 40], [4, 96, 65]] as const) {
            if (format.k.kind !== "float" && hd % format.k.group) continue;
            const kvh = 2;
            const nb = Math.ceil(total / blockSize) + 1;
            const pool = be.createKvPool(nb, blockSize, kvh, hd, format);
            const tables = Int32Array.from({ length: nb }, (_, i) => nb - 1 - i);
            const slots = Int32Array.from({ length: total }, (_, p) => tables[Math.floor(p / blockSize)]! * blockSize + (p % blockSize));
            be.scope(() => be.kvWrite(pool, t(randn(total * kvh * hd, 3, 3), [total, kvh, hd]), t(randn(total * kvh * hd, 4, 2), [total, kvh, hd]), slots));
            const dec = decodePool(pool);
            const plain = be.createKvPool(nb, blockSize, kvh, hd, "f32");
            const all = Int32Array.from({ length: nb * blockSize }, (_, i) => i);
            be.scope(() => be.kvWrite(plain, t(dec.k, [nb * blockSize, kvh, hd]), t(dec.v, [nb * blockSize, kvh, hd]), all));
            const batch: AttentionBatch = { blockTables: tables, maxBlocks: nb, seqLens: Int32Array.of(total), tokenSeq: Int32Array.of(0), positions: Int32Array.of(total - 1) };
            const q = randn(G * kvh * hd, 11, 0.5);
            for (const opts of [{ scale: 1 / Math.sqrt(hd) }, { scale: 0.3, window: 33, softcap: 5 }]) {
              const got = be.scope(() => be.toFloat32(be.pagedAttention(t(q, [1, G * kvh, hd]), pool, batch, opts)));
              const want = be.scope(() => be.toFloat32(be.pagedAttention(t(q, [1, G * kvh, hd]), plain, batch, opts)));
              try {
                expectClose(got, want, 2e-5, 2e-4);
              } catch (e) {
                throw new Error(`${name} G=${G} head_dim ${hd}: ${(e as Error).message}`);
              }
            }
            for (const p of [pool, plain]) for (const x of [p.k, p.v, p.kScales, p.kBiases, p.vScales, p.vBiases]) if (x) be.dispose(x);
          }
        }
      } finally {
        if (!MLX) setIsa(BEST);
      }
    });
  }

  // Every E4M3 code (the NaN codes aside, which no write stores), subnormals and both zeros included, decoded by the
  // kernels of every ISA: the codes of a fresh pool are overwritten with all 254, then decode steps and a prefill
  // chunk over them equal attention over the values the format defines (ref.ts e4m3).
  // Native only: the codes are overwritten in the pool's memory (the mlx backend has no FP8 codec).
  for (const isa of MLX ? [] : availableIsas()) {
    test(`fp8: attention over every E4M3 code equals attention over the code values (${isa})`, () => {
      expect(setIsa(isa)).toBe(0);
      try {
        const hd = 128;
        const nb = 4;
        const total = nb * blockSize;
        const pool = be.createKvPool(nb, blockSize, 1, hd, FORMATS.fp8!);
        const slots = Int32Array.from({ length: total }, (_, i) => i);
        be.scope(() => be.kvWrite(pool, t(randn(total * hd, 5, 2), [total, 1, hd]), t(randn(total * hd, 6, 2), [total, 1, hd]), slots));
        be.eval();
        // Even slots: the subnormal and smallest normal codes of both signs, at scale 256 (values up to 15); odd
        // slots: every code, at scale 2^-6 (values up to 7).
        for (const [side, sc, shift] of [[pool.k, pool.kScales, 0], [pool.v, pool.vScales, 77]] as const) {
          const codes = bytesOf(side as NTensor);
          for (let i = 0; i < codes.length; i++) {
            const c = Math.floor(i / hd) % 2 ? (i * 7 + shift) % 256 : ((i + shift) % 24) | ((i >> 5) & 1 ? 0x80 : 0);
            codes[i] = (c & 0x7f) === 0x7f ? c - 1 : c;
          }
          const sb = bytesOf(sc as NTensor);
          const scales = new Uint16Array(sb.buffer, sb.byteOffset, sb.length / 2);
          for (let r = 0; r < scales.length; r++) scales[r] = Math.floor(r / (hd / 64)) % 2 ? 0x2400 : 0x5c00;
        }
        const dec = decodePool(pool);
        const plain = be.createKvPool(nb, blockSize, 1, hd, "f32");
        be.scope(() => be.kvWrite(plain, t(dec.k, [total, 1, hd]), t(dec.v, [total, 1, hd]), slots));
        const tables = Int32Array.from({ length: nb }, (_, i) => i);
        for (const T of [1, 5]) {
          const batch: AttentionBatch = {
            blockTables: tables,
            maxBlocks: nb,
            seqLens: Int32Array.of(total),
            tokenSeq: new Int32Array(T),
            positions: Int32Array.from({ length: T }, (_, i) => total - T + i),
          };
          const q = randn(T * 2 * hd, 12 + T, 0.5);
          const run = (p: KvPool) => be.scope(() => be.toFloat32(be.pagedAttention(t(q, [T, 2, hd]), p, batch, { scale: 1 / Math.sqrt(hd) })));
          expectClose(run(pool), run(plain), 2e-5, 2e-4);
        }
        for (const p of [pool, plain]) for (const x of [p.k, p.v, p.kScales, p.kBiases, p.vScales, p.vBiases]) if (x) be.dispose(x);
      } finally {
        setIsa(BEST);
      }
    });
  }

  test("copyBlock copies codes, scales and biases of both sides", () => {
    const pool = be.createKvPool(4, 16, kvHeads, D, FORMATS.k8v4!);
    const K = randn(16 * kvHeads * D, 1);
    const V = randn(16 * kvHeads * D, 2);
    be.scope(() => be.kvWrite(pool, t(K, [16, kvHeads, D]), t(V, [16, kvHeads, D]), Int32Array.from({ length: 16 }, (_, i) => 16 + i)));
    be.copyBlock(pool, 1, 3);
    const dec = decodePool(pool);
    const n = 16 * kvHeads * D;
    expect(Array.from(dec.k.subarray(3 * n, 4 * n))).toEqual(Array.from(dec.k.subarray(n, 2 * n)));
    expect(Array.from(dec.v.subarray(3 * n, 4 * n))).toEqual(Array.from(dec.v.subarray(n, 2 * n)));
    expect(dec.k.subarray(n, 2 * n).some((x) => x !== 0)).toBe(true);
  });

  for (const name of ["k8v4", "fp8", "k8vf16"]) {
    const f = FORMATS[name]!;
    test.skipIf(skipOn(f) !== null)(`readKvBlock / writeKvBlock move a ${name} block whole${skipOn(f) ?? ""}: into another pool it decodes to the same values`, () => {
      const a = be.createKvPool(3, 16, kvHeads, D, f);
      const b = be.createKvPool(5, 16, kvHeads, D, f);
      const K = randn(16 * kvHeads * D, 3);
      const V = randn(16 * kvHeads * D, 4);
      be.scope(() => be.kvWrite(a, t(K, [16, kvHeads, D]), t(V, [16, kvHeads, D]), Int32Array.from({ length: 16 }, (_, i) => 32 + i)));
      const bytes = be.readKvBlock(a, 2);
      expect(bytes.byteLength).toBe(16 * kvHeads * (kvElementBytes(f.k, D) + kvElementBytes(f.v, D)));
      be.writeKvBlock(b, 4, bytes);
      const [da, db] = [decodePool(a), decodePool(b)];
      const n = 16 * kvHeads * D;
      expect(Array.from(db.k.subarray(4 * n, 5 * n))).toEqual(Array.from(da.k.subarray(2 * n, 3 * n)));
      expect(Array.from(db.v.subarray(4 * n, 5 * n))).toEqual(Array.from(da.v.subarray(2 * n, 3 * n)));
      expect(db.k.subarray(4 * n, 5 * n).some((x) => x !== 0)).toBe(true);
      expect(Array.from(be.readKvBlock(b, 4))).toEqual(Array.from(bytes));
    });
  }

  test("block reads and writes outside the pool or of the wrong size are refused", () => {
    const pool = be.createKvPool(2, 16, kvHeads, D, FORMATS.q4!);
    expect(() => be.readKvBlock(pool, 2)).toThrow(/block 2 outside the pool's 2/);
    expect(() => be.writeKvBlock(pool, 0, new Uint8Array(7))).toThrow(/7 bytes for a block of/);
  });

  test("bytes per row: q8 g64 is 8.5 bits per value, q4 4.5, fp8 8.25", () => {
    expect(kvElementBytes(affine(8), 128) * 8 / 128).toBe(8.5);
    expect(kvElementBytes(affine(4), 128) * 8 / 128).toBe(4.5);
    expect(kvElementBytes({ kind: "fp8", group: 64 }, 128) * 8 / 128).toBe(8.25);
  });

  test("a head_dim the group does not divide is refused", () => {
    expect(() => be.createKvPool(2, 16, 1, 80, FORMATS.q8!)).toThrow(/head_dim 80 is not a multiple of the group size 64/);
  });
});
