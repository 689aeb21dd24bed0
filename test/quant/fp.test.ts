// mxfp4, mxfp8 and nvfp4 against values worked out by hand from the formats' definitions (E2M1: magnitudes
// {0, .5, 1, 1.5, 2, 3, 4, 6}; E4M3: bias 7, max 448, subnormal step 2^-9; E8M0: 2^(s-127)).
import { describe, expect, test } from "bun:test";
import { FP4_VALUES, fpDequantize, fpQuantize, fromE4M3, fromE8M0, toE2M1, toE4M3, toE8M0 } from "../../src/quant/fp.ts";
import { unpackCodes } from "../../src/quant/pack.ts";

describe("element codes", () => {
  test("E2M1: exact values, and ties to the even mantissa", () => {
    expect([0, 0.5, 1, 1.5, 2, 3, 4, 6].map(toE2M1)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect([-0.5, -6, -0].map(toE2M1)).toEqual([9, 15, 8]);
    // 0.25 between 0 and 0.5 -> 0; 0.75 between 0.5 and 1 -> 1; 1.25 -> 1; 1.75 -> 2; 2.5 -> 2; 3.5 -> 4; 5 -> 4
    expect([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5].map(toE2M1)).toEqual([0, 2, 2, 4, 4, 6, 6]);
    expect([0.26, 5.01, 100].map(toE2M1)).toEqual([1, 7, 7]);
  });

  test("E4M3: normals, subnormals, ties to even, saturation at 448", () => {
    expect(toE4M3(1)).toBe(0x38); // exponent 7 -> 0111 000
    expect(toE4M3(0.5)).toBe(0x30);
    expect(toE4M3(-2)).toBe(0xc0);
    expect(toE4M3(448)).toBe(0x7e);
    expect(toE4M3(1000)).toBe(0x7e);
    expect(toE4M3(2 ** -9)).toBe(0x01); // smallest subnormal
    expect(toE4M3(2 ** -10)).toBe(0x00); // tie between 0 and 2^-9 -> even (0)
    expect(toE4M3(3 * 2 ** -10)).toBe(0x02); // tie between 1 and 2 subnormal steps -> 2
    expect(toE4M3(17)).toBe(0x58); // tie between 16 (m=0) and 18 (m=1) -> 16
    expect(toE4M3(19)).toBe(0x5a); // tie between 18 (m=1) and 20 (m=2) -> 20
    expect([0x38, 0x30, 0xc0, 0x7e, 0x01, 0x5a].map(fromE4M3)).toEqual([1, 0.5, -2, 448, 2 ** -9, 20]);
  });

  test("E8M0: nearest power of two by log2, halves away from zero; zero is code 0", () => {
    expect(toE8M0(1)).toBe(127);
    expect(toE8M0(4)).toBe(129);
    expect(toE8M0(2 ** 2.4)).toBe(129);
    expect(toE8M0(2 ** 2.6)).toBe(130);
    expect(toE8M0(2 ** -0.6)).toBe(126);
    expect(toE8M0(0)).toBe(0);
    expect(toE8M0(Infinity)).toBe(255);
    expect(fromE8M0(127)).toBe(1);
    expect(fromE8M0(0)).toBe(2 ** -127);
  });
});

function codesOf(weight: Uint32Array, bits: number, n: number): number[] {
  return Array.from(unpackCodes(weight, bits, n));
}

describe("mxfp4", () => {
  test("absmax 6 gives scale 2^0 and the E2M1 codes of the values themselves", () => {
    const w = new Float32Array(32);
    w.set([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -6, 0.75, 2.5]);
    const q = fpQuantize(w, "mxfp4");
    expect(Array.from(q.scales)).toEqual([127]);
    expect(codesOf(q.weight, 4, 13)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 15, 2, 4]);
    // 8 nibbles per word, lowest first: codes 0..7 -> 0x76543210
    expect(q.weight[0]).toBe(0x76543210);
  });

  test("scale rounds log2(absmax/6) to the nearest integer", () => {
    // absmax 20: 20/6 = 3.33, log2 = 1.74 -> 2, scale 4; 20/4 = 5 -> tie between 4 and 6 -> 4 (code 6)
    const w = new Float32Array(32);
    w.set([20, -3, 1]);
    const q = fpQuantize(w, "mxfp4");
    expect(Array.from(q.scales)).toEqual([129]);
    // -3/4 = -0.75 -> -1 (code 10); 1/4 = 0.25 -> 0
    expect(codesOf(q.weight, 4, 3)).toEqual([6, 10, 0]);
  });

  test("an all-zero group has scale code 0 and zero codes", () => {
    const q = fpQuantize(new Float32Array(64), "mxfp4");
    expect(Array.from(q.scales)).toEqual([0, 0]);
    expect(Array.from(q.weight).every((x) => x === 0)).toBe(true);
  });

  test("dequantize: LUT value times 2^(s-127), in bf16", () => {
    const w = new Float32Array(32);
    w.set([20, -3, 1, 6, 0.5]);
    const q = fpQuantize(w, "mxfp4");
    const back = fpDequantize(q.weight, q.scales, "mxfp4", "BF16");
    // scale 4: 20/4 = 5 -> 4 -> 16; -0.75 -> -1 -> -4; 0.25 -> 0; 1.5 -> 6; 0.125 -> 0
    expect(Array.from(back.subarray(0, 5))).toEqual([16, -4, 0, 6, 0]);
  });
});

describe("mxfp8", () => {
  test("absmax 448 gives scale 2^0; codes are E4M3 bytes, four per word", () => {
    const w = new Float32Array(32);
    w.set([448, 1, 0.5, -2, 17, 19]);
    const q = fpQuantize(w, "mxfp8");
    expect(Array.from(q.scales)).toEqual([127]);
    const bytes = new Uint8Array(q.weight.buffer);
    expect(Array.from(bytes.subarray(0, 6))).toEqual([0x7e, 0x38, 0x30, 0xc0, 0x58, 0x5a]);
  });

  test("scale 2^k divides the group before E4M3 rounding", () => {
    // absmax 3.5: 3.5/448 = 2^-7 exactly -> code 120, scale 2^-7; 3.5 * 128 = 448; 1 * 128 = 128 (0x70)
    const w = new Float32Array(32);
    w.set([3.5, 1]);
    const q = fpQuantize(w, "mxfp8");
    expect(Array.from(q.scales)).toEqual([120]);
    expect(Array.from(new Uint8Array(q.weight.buffer).subarray(0, 2))).toEqual([0x7e, 0x70]);
    const back = fpDequantize(q.weight, q.scales, "mxfp8", "F32");
    expect(Array.from(back.subarray(0, 3))).toEqual([3.5, 1, 0]);
  });
});

describe("nvfp4", () => {
  test("groups of 16 with an E4M3 scale of absmax/6", () => {
    // group 0: absmax 6 -> scale 1 (0x38). group 1: absmax 7 -> 7/6 = 1.1667 -> E4M3 1.125 (0x39);
    // 7/1.125 = 6.22 -> 6 (code 7); 1/1.125 = 0.889 -> 1 (code 2); -2/1.125 = -1.78 -> -2 (code 12)
    const w = new Float32Array(32);
    w.set([6, -3, 0.5]);
    w.set([7, 1, -2], 16);
    const q = fpQuantize(w, "nvfp4");
    expect(Array.from(q.scales)).toEqual([0x38, 0x39]);
    const codes = codesOf(q.weight, 4, 32);
    expect(codes.slice(0, 3)).toEqual([7, 13, 1]);
    expect(codes.slice(16, 19)).toEqual([7, 2, 12]);
    const back = fpDequantize(q.weight, q.scales, "nvfp4", "F32");
    expect(Array.from(back.subarray(16, 19))).toEqual([6.75, 1.125, -2.25]);
  });

  test("codes come from value * (1/scale) with the reciprocal in f32, as MLX's GPU kernels compute them", () => {
    // absmax 5.625 gives scale 0.9375 (0x37); f32(1/0.9375) is 1.0666667 rounded up, so each value below lands just
    // above a round-down tie of E2M1 (1.25, 2.5, 5) or on a round-up one (0.75) where value/scale lands on or below it.
    // value/scale would give codes 2, 4, 6, 1, 10 (1, 2, 4, 0.5, -1); the product gives 3, 5, 7, 2, 11.
    const w = new Float32Array(16);
    w.set([5.625, 1.171875, 2.34375, 4.6875, 0.7031249403953552, -1.171875]);
    const q = fpQuantize(w, "nvfp4");
    expect(Array.from(q.scales)).toEqual([0x37]);
    expect(codesOf(q.weight, 4, 16).slice(0, 6)).toEqual([7, 3, 5, 7, 2, 11]);
  });

  test("tiny groups get a zero scale and zero codes", () => {
    const w = new Float32Array(16).fill(1e-6);
    const q = fpQuantize(w, "nvfp4");
    expect(Array.from(q.scales)).toEqual([0]);
    expect(Array.from(q.weight).every((x) => x === 0)).toBe(true);
  });
});

test("the E2M1 table is MLX's", () => {
  expect(FP4_VALUES.slice(0, 8)).toEqual([0, 0.5, 1, 1.5, 2, 3, 4, 6]);
});

test("mxfp4 keeps the sign of negative zero and of small negatives rounded to zero", () => {
  const w = new Float32Array(32);
  w.set([6, -0, -0.1, 0.1]);
  const codes = Array.from(unpackCodes(fpQuantize(w, "mxfp4").weight, 4, 4));
  expect(codes).toEqual([7, 8, 8, 0]);
});
