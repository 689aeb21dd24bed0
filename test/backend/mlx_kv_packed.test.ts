// Packed KV pages on the mlx backend against the native backend's, whenever libmlxc can be loaded. Both keep the
// same page layout (Backend.readKvBlock), so pages move between them as bytes. For the same writes the scales and
// biases are the same f16 values (both follow MLX's affine rule in f32); the codes may differ by one step, because
// mx.quantize takes each code against the f32 scale and bias while the native codec takes it against their f16
// roundings. Over the same pages, paged attention agrees.
import { describe, expect, test } from "bun:test";
import type { AttentionBatch, AttentionOptions, Backend, KvPool } from "../../src/backend/backend.ts";
import { MlxBackend } from "../../src/backend/mlx/backend.ts";
import { probeMlx } from "../../src/backend/mlx/lib.ts";
import { NativeBackend } from "../../src/backend/native/backend.ts";
import { RmlxError } from "../../src/errors.ts";
import { type KvElement, type KvFormat, kvElementBytes, parseKvCodec } from "../../src/quant/kv_codec.ts";
import { f16ToNumber } from "../native/ref.ts";
import { expectClose, randn } from "./helpers.ts";

const probe = probeMlx();
const skipReason = probe.ok ? "" : ` (skipped: ${probe.reason})`;

const CODECS = ["q8", "q4", "q4g32", "k8v4"];
const blockSize = 16;
const kvHeads = 2;
const heads = 6;
const D = 64;

type Affine = Extract<KvElement, { kind: "affine" }>;

/** One side of one block, split out of readKvBlock's bytes: codes as values, scales and biases as f16 bits. */
interface Side {
  codes: number[];
  scales: Uint16Array;
  biases: Uint16Array;
}

function splitBlock(bytes: Uint8Array, f: KvFormat): [Side, Side] {
  let at = 0;
  const take = (n: number) => bytes.slice(at, (at += n));
  const side = (e: Affine): Side => {
    const rows = blockSize * kvHeads;
    const raw = take((rows * D * e.bits) / 8);
    const codes: number[] = [];
    for (const b of raw) {
      if (e.bits === 8) codes.push(b);
      else codes.push(b & 15, b >> 4);
    }
    const groups = rows * (D / e.group);
    return { codes, scales: new Uint16Array(take(2 * groups).buffer), biases: new Uint16Array(take(2 * groups).buffer) };
  };
  const sides: [Side, Side] = [side(f.k as Affine), side(f.v as Affine)];
  expect(at).toBe(bytes.byteLength);
  return sides;
}

/** A batch over the pool's first blocks: sequence 0 decodes its token 300, sequence 1 prefills tokens 20..36. */
function batchOf(): { batch: AttentionBatch; total: number[]; slots: Int32Array[] } {
  const total = [301, 37];
  const maxBlocks = Math.ceil(301 / blockSize);
  const tables = new Int32Array(2 * maxBlocks);
  let next = 0;
  total.forEach((n, s) => {
    for (let b = 0; b < Math.ceil(n / blockSize); b++) tables[s * maxBlocks + b] = next++;
  });
  const slots = total.map((n, s) => Int32Array.from({ length: n }, (_, p) => tables[s * maxBlocks + Math.floor(p / blockSize)]! * blockSize + (p % blockSize)));
  const tokenSeq = [0, ...Array.from({ length: 17 }, () => 1)];
  const positions = [300, ...Array.from({ length: 17 }, (_, i) => 20 + i)];
  const batch = { blockTables: tables, maxBlocks, seqLens: Int32Array.from(total), tokenSeq: Int32Array.from(tokenSeq), positions: Int32Array.from(positions) };
  return { batch, total, slots };
}

const NUM_BLOCKS = Math.ceil(301 / blockSize) + Math.ceil(37 / blockSize);

function writeAll(be: Backend, pool: KvPool, total: number[], slots: Int32Array[]): void {
  be.scope(() =>
    total.forEach((n, s) => {
      const k = be.fromArray(randn(n * kvHeads * D, 40 + s, 3), [n, kvHeads, D], "f32");
      const v = be.fromArray(randn(n * kvHeads * D, 50 + s, 2), [n, kvHeads, D], "f32");
      be.kvWrite(pool, k, v, slots[s]!);
    }),
  );
  be.eval();
}

function attend(be: Backend, pool: KvPool, batch: AttentionBatch, opts: AttentionOptions): Float32Array {
  const T = batch.tokenSeq.length;
  return be.scope(() => be.toFloat32(be.pagedAttention(be.fromArray(randn(T * heads * D, 77, 0.5), [T, heads, D], "f32"), pool, batch, opts)));
}

const OPTS: AttentionOptions[] = [{ scale: 1 / Math.sqrt(D) }, { scale: 0.2, window: 40 }, { scale: 0.2, softcap: 4 }];

describe(`packed KV pages: mlx against native${skipReason}`, () => {
  for (const name of CODECS) {
    test.skipIf(!probe.ok)(`${name}: the same writes give the same scales and biases, codes within one step`, () => {
      const f = parseKvCodec(name).format;
      const nat = new NativeBackend();
      const mlx = new MlxBackend();
      const { total, slots } = batchOf();
      const pools = [nat, mlx].map((be) => {
        const p = be.createKvPool(NUM_BLOCKS, blockSize, kvHeads, D, f);
        writeAll(be, p, total, slots);
        return p;
      });
      let codes = 0;
      let differ = 0;
      for (let b = 0; b < NUM_BLOCKS; b++) {
        const [n, m] = [nat.readKvBlock(pools[0]!, b), mlx.readKvBlock(pools[1]!, b)];
        expect(m.byteLength).toBe(n.byteLength);
        const [sn, sm] = [splitBlock(n, f), splitBlock(m, f)];
        for (let s = 0; s < 2; s++) {
          expect(Array.from(sm[s]!.scales)).toEqual(Array.from(sn[s]!.scales));
          expect(Array.from(sm[s]!.biases)).toEqual(Array.from(sn[s]!.biases));
          sn[s]!.codes.forEach((c, i) => {
            const d = Math.abs(c - sm[s]!.codes[i]!);
            if (d > 1) throw new Error(`block ${b} side ${s} code ${i}: native ${c}, mlx ${sm[s]!.codes[i]}`);
            codes++;
            differ += d;
          });
        }
      }
      // Most codes agree: a difference needs a value within about code * 2^-11 of a rounding boundary (measured on
      // head_dim 128: 2.3% of 8-bit codes, 0.06% of 4-bit ones).
      expect(differ / codes).toBeLessThan(0.05);
      for (const p of pools) for (const t of [p.k, p.v, p.kScales, p.kBiases, p.vScales, p.vBiases]) if (t) (p === pools[0] ? nat : mlx).dispose(t);
    });

    test.skipIf(!probe.ok)(`${name}: pages move between the backends as bytes, and attention over them agrees`, () => {
      const f = parseKvCodec(name).format;
      const nat = new NativeBackend();
      const mlx = new MlxBackend();
      const { batch, total, slots } = batchOf();
      for (const [from, to] of [[nat, mlx], [mlx, nat]] as const) {
        const src = from.createKvPool(NUM_BLOCKS, blockSize, kvHeads, D, f);
        const dst = to.createKvPool(NUM_BLOCKS, blockSize, kvHeads, D, f);
        writeAll(from, src, total, slots);
        for (let b = 0; b < NUM_BLOCKS; b++) {
          const bytes = from.readKvBlock(src, b);
          expect(bytes.byteLength).toBe(blockSize * kvHeads * (kvElementBytes(f.k, D) + kvElementBytes(f.v, D)));
          to.writeKvBlock(dst, b, bytes);
          expect(Array.from(to.readKvBlock(dst, b))).toEqual(Array.from(bytes));
        }
        for (const opts of OPTS) expectClose(attend(to, dst, batch, opts), attend(from, src, batch, opts), 2e-5, 2e-4);
        for (const [be, p] of [[from, src], [to, dst]] as const) for (const t of [p.k, p.v, p.kScales, p.kBiases, p.vScales, p.vBiases]) if (t) be.dispose(t);
      }
    });
  }

  test.skipIf(!probe.ok)("a long prefill chunk attends in runs of query positions (bounded scores) and still agrees with native", () => {
    const f = parseKvCodec("k8v4g32").format;
    const nat = new NativeBackend();
    const mlx = new MlxBackend();
    // 8 heads over 4096 keys: 128 KiB of scores per query position, so 520 positions take two runs (512 and 8).
    const [kvh, H, total, fresh, D] = [2, 8, 4096, 520, 32];
    const nb = total / blockSize;
    const slots = Int32Array.from({ length: total }, (_, i) => i);
    const src = nat.createKvPool(nb, blockSize, kvh, D, f);
    const dst = mlx.createKvPool(nb, blockSize, kvh, D, f);
    nat.scope(() => nat.kvWrite(src, nat.fromArray(randn(total * kvh * D, 61, 3), [total, kvh, D], "f32"), nat.fromArray(randn(total * kvh * D, 62, 2), [total, kvh, D], "f32"), slots));
    for (let b = 0; b < nb; b++) mlx.writeKvBlock(dst, b, nat.readKvBlock(src, b));
    const batch: AttentionBatch = {
      blockTables: Int32Array.from({ length: nb }, (_, i) => i),
      maxBlocks: nb,
      seqLens: Int32Array.of(total),
      tokenSeq: new Int32Array(fresh),
      positions: Int32Array.from({ length: fresh }, (_, i) => total - fresh + i),
    };
    const q = randn(fresh * H * D, 63, 0.5);
    const opts = { scale: 0.2, window: 700, softcap: 4 };
    const run = (be: Backend, pool: KvPool) => be.scope(() => be.toFloat32(be.pagedAttention(be.fromArray(q, [fresh, H, D], "f32"), pool, batch, opts)));
    expectClose(run(mlx, dst), run(nat, src), 2e-5, 2e-4);
    for (const [be, p] of [[nat, src], [mlx, dst]] as const) for (const t of [p.k, p.v, p.kScales, p.kBiases, p.vScales, p.vBiases]) if (t) be.dispose(t);
  });

  test.skipIf(!probe.ok)("mlx pages decode to within one step of the values written (MLX's rounding, f16 scales)", () => {
    const mlx = new MlxBackend();
    const f = parseKvCodec("q4").format;
    const n = 8;
    const x = randn(n * kvHeads * D, 5, 3);
    const pool = mlx.createKvPool(1, blockSize, kvHeads, D, f);
    mlx.scope(() => mlx.kvWrite(pool, mlx.fromArray(x, [n, kvHeads, D], "f32"), mlx.fromArray(x, [n, kvHeads, D], "f32"), Int32Array.from({ length: n }, (_, i) => i)));
    const [k] = splitBlock(mlx.readKvBlock(pool, 0), f);
    const group = (f.k as Affine).group;
    for (let r = 0; r < n * kvHeads; r++)
      for (let g = 0; g < D / group; g++) {
        const xs = x.subarray(r * D + g * group, r * D + (g + 1) * group);
        const step = (Math.max(...xs) - Math.min(...xs)) / 15;
        const s = f16ToNumber(k.scales[r * (D / group) + g]!);
        const b = f16ToNumber(k.biases[r * (D / group) + g]!);
        xs.forEach((v, j) => {
          const got = s * k.codes[r * D + g * group + j]! + b;
          if (!(Math.abs(got - v) <= 1.01 * step + 2e-3 * 3)) throw new Error(`row ${r} value ${g * group + j}: ${got} vs ${v} (step ${step})`);
        });
      }
  });

  test.skipIf(!probe.ok)("a q8 pool holds 8.5/16 of an f16 pool's bytes in MLX's memory, a q4 pool 4.5/16 (no float copy)", () => {
    const mlx = new MlxBackend();
    const [nb, kvh, hd] = [32, 8, 128];
    const held = (codec: string) => {
      const before = mlx.activeMemory();
      const pool = mlx.createKvPool(nb, blockSize, kvh, hd, parseKvCodec(codec).format);
      const n = nb * blockSize;
      mlx.scope(() => {
        const x = mlx.fromArray(randn(n * kvh * hd, 9), [n, kvh, hd], "f32");
        mlx.kvWrite(pool, x, x, Int32Array.from({ length: n }, (_, i) => i));
        mlx.eval();
      });
      const bytes = mlx.activeMemory() - before;
      for (const t of [pool.k, pool.v, pool.kScales, pool.kBiases, pool.vScales, pool.vBiases]) if (t) mlx.dispose(t);
      return bytes;
    };
    const f16 = held("f16");
    expect(f16).toBe(2 * nb * blockSize * kvh * hd * 2);
    expect(held("q8") / f16).toBeCloseTo(8.5 / 16, 3);
    expect(held("q4") / f16).toBeCloseTo(4.5 / 16, 3);
  });

  test.skipIf(!probe.ok)("fp8 and turbo pages are refused on mlx with the formats it stores", () => {
    const mlx = new MlxBackend();
    for (const name of ["fp8", "turbo4", "turbo3"]) {
      const make = () => mlx.createKvPool(2, blockSize, kvHeads, D, parseKvCodec(name).format);
      expect(make).toThrow(RmlxError);
      expect(make).toThrow(new RegExp(`cannot store ${name} KV pages: it stores f32, f16, bf16 and MLX's affine codes`));
    }
  });
});
