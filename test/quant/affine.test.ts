// Affine quantization against values worked out by hand from MLX's documented formula:
// scale = max((max-min)/(2^b-1), 1e-7), negated unless |min| > |max|; edge = min or max; q0 = rint(edge/scale);
// if q0 != 0 { scale = edge/q0; bias = edge } else bias = 0; q = clip(rint((w-bias)/scale), 0, 2^b-1).
import { describe, expect, test } from "bun:test";
import { affineDequantize, affineQuantize, rint } from "../../src/quant/affine.ts";
import { encodeFloats } from "../../src/quant/dtype.ts";
import { packCodes, unpackCodes } from "../../src/quant/pack.ts";

function group(values: number[], size = 32): Float32Array {
  const g = new Float32Array(size);
  g.set(values);
  return g;
}

describe("rint", () => {
  test("rounds halves to even, like C's rint", () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 2.5001].map(rint)).toEqual([0, 2, 2, -0, -2, -2, 2, 3]);
  });
});

describe("affine quantize", () => {
  test("2-bit: negative scale when max dominates, ties to even", () => {
    // min 0, max 3: scale = -1, edge 3, q0 = -3, bias 3; q = rint(3 - w).
    // w = 0.5 -> rint(2.5) = 2, 1.5 -> 2, 2.5 -> rint(0.5) = 0 (half to even, not away from zero).
    const w = group([0, 3, 0.5, 1.5, 2.5, 1, 2, 0, 3, 3, 3, 3, 3, 3, 3, 3], 32);
    for (let i = 16; i < 32; i++) w[i] = 3;
    const q = affineQuantize(w, 32, 2);
    expect(Array.from(q.scales)).toEqual([-1]);
    expect(Array.from(q.biases)).toEqual([3]);
    const codes = [3, 0, 2, 2, 0, 2, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0];
    const word0 = codes.reduce((acc, c, i) => acc + c * 4 ** i, 0);
    expect(Array.from(q.weight)).toEqual([word0, 0]);
  });

  test("4-bit: positive scale when |min| > |max|", () => {
    // min -15, max 0: scale = 1, edge -15, q0 = -15, scale = 1, bias -15; q = w + 15.
    const vals = Array.from({ length: 32 }, (_, i) => -(i % 16));
    const q = affineQuantize(group(vals), 32, 4);
    expect(Array.from(q.scales)).toEqual([1]);
    expect(Array.from(q.biases)).toEqual([-15]);
    // codes 15,14,...,0 twice: word = 0x0123456789ABCDEF read low nibble first
    expect(Array.from(q.weight)).toEqual([0x89abcdef, 0x01234567, 0x89abcdef, 0x01234567]);
  });

  test("a tie in q0 rounds to even", () => {
    // min -0.1, max 0.1, 2 bits: scale = -(0.2/3) (|min| is not greater than |max|); 0.1/scale is exactly -1.5
    // in f32, so q0 = rint(-1.5) = -2, scale = 0.1 / -2, bias 0.1.
    const w = group([-0.1, 0.1], 32);
    const q = affineQuantize(w, 32, 2);
    expect(q.scales[0]).toBe(Math.fround(Math.fround(0.1) / -2));
    expect(q.biases[0]).toBe(Math.fround(0.1));
  });

  test("q0 = 0 keeps the raw scale and a zero bias", () => {
    // a constant group of 1e-8: scale clamps to eps = 1e-7, negated; q0 = rint(-0.1) = 0, so bias = 0.
    const q = affineQuantize(new Float32Array(32).fill(1e-8), 32, 4);
    expect(q.scales[0]).toBe(-Math.fround(1e-7));
    expect(q.biases[0]).toBe(0);
    expect(Array.from(q.weight).every((x) => x === 0)).toBe(true);
  });

  test("an all-zero group: scale -1e-7 (f32), bias 0, codes 0; bf16 scale bytes 0xB3D7", () => {
    const q = affineQuantize(new Float32Array(64), 64, 4);
    expect(q.scales[0]).toBe(-Math.fround(1e-7));
    expect(q.biases[0]).toBe(0);
    expect(Array.from(q.weight).every((x) => x === 0)).toBe(true);
    // f32 1e-7 = 0x33D6BF95; bf16 rounds the low half 0xBF95 up: 0x33D7, negative: 0xB3D7.
    expect(Array.from(encodeFloats("BF16", q.scales))).toEqual([0xd7, 0xb3]);
  });

  test("3-bit codes straddle bytes: 0..7 pack into bytes 88 C6 FA", () => {
    // w = 7 - c with min 0, max 7 gives scale -1, bias 7 and code c.
    const vals = Array.from({ length: 32 }, (_, i) => 7 - (i % 8));
    const q = affineQuantize(group(vals), 32, 3);
    expect(Array.from(q.scales)).toEqual([-1]);
    expect(Array.from(q.biases)).toEqual([7]);
    const bytes = new Uint8Array(q.weight.buffer);
    // 0o76543210 = 0xFAC688: each run of 8 codes fills 3 bytes, 32 codes fill 12 bytes = 3 words.
    expect(Array.from(bytes)).toEqual([0x88, 0xc6, 0xfa, 0x88, 0xc6, 0xfa, 0x88, 0xc6, 0xfa, 0x88, 0xc6, 0xfa]);
  });

  test("5-bit and 6-bit codes straddle words", () => {
    // 5 bits: codes 0..31 (w = 31 - c); stream value sum c_i * 32^i over 8 codes = 5 bytes.
    const v5 = Array.from({ length: 32 }, (_, i) => 31 - i);
    const q5 = affineQuantize(group(v5), 32, 5);
    const b5 = new Uint8Array(q5.weight.buffer);
    expect(b5.length).toBe(20);
    for (let blk = 0; blk < 4; blk++) {
      let v = 0n;
      for (let k = 0; k < 8; k++) v |= BigInt(blk * 8 + k) << BigInt(5 * k);
      const want = Array.from({ length: 5 }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
      expect(Array.from(b5.subarray(blk * 5, blk * 5 + 5))).toEqual(want);
    }
    // 6 bits: a group of 64 holding 63..0 gives scale -1, bias 63 and codes 0..63.
    const v6 = Array.from({ length: 64 }, (_, i) => 63 - i);
    const q6 = affineQuantize(new Float32Array(v6), 64, 6);
    expect(Array.from(q6.scales)).toEqual([-1]);
    const b6 = new Uint8Array(q6.weight.buffer);
    // 4 codes per 3 bytes: c0 | c1<<6 | c2<<12 | c3<<18.
    for (let blk = 0; blk < 16; blk++) {
      const c = [0, 1, 2, 3].map((k) => blk * 4 + k);
      const v = c[0]! | (c[1]! << 6) | (c[2]! << 12) | (c[3]! << 18);
      expect(Array.from(b6.subarray(blk * 3, blk * 3 + 3))).toEqual([v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff]);
    }
  });

  test("8-bit: one byte per code, lowest byte first", () => {
    const vals = Array.from({ length: 32 }, (_, i) => 255 - i * 8);
    // min 7, max 255: scale = -248/255; q0 = rint(255 / -0.97255) = rint(-262.2) = -262; scale = 255/-262.
    const q = affineQuantize(group(vals), 32, 8);
    const scale = Math.fround(255 / -262);
    expect(q.scales[0]).toBe(scale);
    const bytes = new Uint8Array(q.weight.buffer);
    for (let i = 0; i < 32; i++) {
      expect(bytes[i]).toBe(Math.min(255, Math.max(0, rint(Math.fround(Math.fround(vals[i]! - 255) / scale)))));
    }
  });
});

describe("affine dequantize", () => {
  test("w = scale*q + bias, rounded to the dtype", () => {
    const codes = new Uint8Array(32).map((_, i) => i % 16);
    const w = affineDequantize(packCodes(codes, 4), new Float32Array([-0.5]), new Float32Array([3]), 32, 4, "F32");
    expect(Array.from(w.subarray(0, 4))).toEqual([3, 2.5, 2, 1.5]);
    // bf16: 0.1 is not representable; scale*q and the sum are each rounded to bf16.
    const s = 0.10009765625; // bf16(0.1)
    const d = affineDequantize(packCodes(codes, 4), new Float32Array([s]), new Float32Array([1]), 32, 4, "BF16");
    expect(d[3]).toBe(1.296875); // 3*s = 0.30029 -> bf16 0.30078125; + 1 = 1.30078 -> bf16 1.296875
  });

  test("quantize then dequantize stays within half a step, except values clipped to the end codes", () => {
    const n = 4096;
    const w = new Float32Array(n);
    for (let i = 0; i < n; i++) w[i] = Math.fround(Math.sin(i * 0.37) * (1 + (i % 7)));
    for (const bits of [2, 3, 4, 5, 6, 8]) {
      for (const g of [32, 64, 128]) {
        const q = affineQuantize(w, g, bits);
        const back = affineDequantize(q.weight, q.scales, q.biases, g, bits, "F32");
        const codes = unpackCodes(q.weight, bits, n);
        for (let i = 0; i < n; i++) {
          // the scale is stretched so that the edge value is exact; the far end may then clip.
          if (codes[i] === (1 << bits) - 1) continue;
          const step = Math.abs(q.scales[Math.floor(i / g)]!);
          expect(Math.abs(back[i]! - w[i]!)).toBeLessThanOrEqual(step / 2 + 1e-5);
        }
      }
    }
  });
});

describe("packing", () => {
  test("unpack inverts pack for every width", () => {
    for (const bits of [2, 3, 4, 5, 6, 8]) {
      const codes = new Uint8Array(64).map((_, i) => (i * 37 + 11) % (1 << bits));
      expect(Array.from(unpackCodes(packCodes(codes, bits), bits, 64))).toEqual(Array.from(codes));
    }
  });
});
