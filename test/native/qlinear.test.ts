// rmlx_qlinear against the float64 reference of test/native/ref.ts, for every mode, bits, group size and
// scale dtype, rows of x in {1, 3, 17, 64} (both the few-rows and the many-rows kernels), odd N, on every ISA.
import { afterAll, describe, expect, test } from "bun:test";
import {
  availableIsas,
  dequantAll,
  matmulRef,
  qlinear,
  randomQWeight,
  randomX,
  matmulX16Ref,
  matmulX8Ref,
  setGemvMode,
  setIsa,
  takesX16,
  worstRelError,
  x8Bound,
  type FloatDt,
  type Mode,
  type QWeight,
} from "./ref.ts";
import { native } from "../../src/backend/native/lib.ts";

const BEST = String(native().rmlx_isa());
const DEFAULT_GEMV = String(native().rmlx_gemv_mode());
afterAll(() => {
  setIsa(BEST);
  setGemvMode(DEFAULT_GEMV);
});

// f32 accumulation over K <= 384 terms: the error stays far below 1e-5 of sum |x*w|.
const TOL = 1e-5;
// x16: each x is off by at most half a step (max|x| of its group / 65534); on these random inputs the worst
// was 1.3e-5 of sum |x*w| (mxfp4). Its exact rounding is pinned separately against matmulX16Ref.
const TOL_X16 = 5e-5;
const MS = [1, 3, 17, 64];

interface Case {
  mode: Mode;
  bits: number;
  group: number;
  sb: FloatDt;
  gs?: number;
}

const cases: Case[] = [];
const dts: FloatDt[] = ["f32", "f16", "bf16"];
let i = 0;
for (const bits of [2, 3, 4, 5, 6, 8])
  for (const group of [32, 64, 128]) cases.push({ mode: "affine", bits, group, sb: dts[i++ % 3]! });
cases.push({ mode: "mxfp4", bits: 4, group: 32, sb: "f32" });
cases.push({ mode: "mxfp8", bits: 8, group: 32, sb: "f32" });
cases.push({ mode: "nvfp4", bits: 4, group: 16, sb: "f32" });
cases.push({ mode: "nvfp4", bits: 4, group: 16, sb: "f32", gs: 1234.5 });

for (const isa of availableIsas()) {
  describe(`rmlx_qlinear on ${isa}`, () => {
    for (const c of cases) {
      test(`${c.mode} bits=${c.bits} group=${c.group} scales=${c.sb}${c.gs ? " global" : ""}`, () => {
        expect(setIsa(isa)).toBe(0);
        const K = c.group === 128 ? 384 : 256;
        const N = 37;
        const q = randomQWeight(c.bits * 1000 + c.group, c.mode, c.bits, c.group, N, K, c.sb, c.gs ?? 0);
        const wd = dequantAll(q);
        for (const M of MS) {
          const x = randomX(M * 7 + c.bits, M * K);
          const { y, mag } = matmulRef(x, M, wd, N, K);
          for (const mode of ["f32", "x16"]) {
            expect(setGemvMode(mode)).toBe(0);
            const tol = mode === "x16" && takesX16(q) ? TOL_X16 : TOL;
            expect({ mode, err: worstRelError(qlinear(q, x, M), y, mag) < tol }).toEqual({ mode, err: true });
          }
        }
      });
    }

    test("Linear bias is added (f32 bias, M=1 and M=40)", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("f32")).toBe(0);
      const N = 19, K = 64;
      const q = randomQWeight(5, "affine", 4, 64, N, K, "bf16");
      const wd = dequantAll(q);
      const bias = randomX(99, N);
      for (const M of [1, 40]) {
        const x = randomX(M, M * K);
        const { y, mag } = matmulRef(x, M, wd, N, K, Float64Array.from(bias));
        expect(worstRelError(qlinear(q, x, M, bias), y, mag)).toBeLessThan(TOL);
      }
    });

    test("a larger shape crosses panels and thread splits (M=40, N=200, K=512)", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("f32")).toBe(0);
      const N = 200, K = 512, M = 40;
      const q = randomQWeight(77, "mxfp4", 4, 32, N, K);
      const x = randomX(3, M * K);
      const { y, mag } = matmulRef(x, M, dequantAll(q), N, K);
      expect(worstRelError(qlinear(q, x, M), y, mag)).toBeLessThan(TOL);
    });
  });
}

// The x16 path against its documented rounding (matmulX16Ref), for every row count a decode batch can have
// (passes of 4, 2 and 1 rows), biases of the layer included; then what makes it step aside.
function expectX16(q: QWeight, x: Float32Array, M: number, bias?: Float32Array) {
  const { mag } = matmulRef(x, M, dequantAll(q), q.N, q.K, bias ? Float64Array.from(bias) : undefined);
  const want = matmulX16Ref(q, x, M).map((v, i) => v + (bias ? bias[i % q.N]! : 0));
  expect(worstRelError(qlinear(q, x, M, bias ?? null), want, mag)).toBeLessThan(2e-6);
}

for (const isa of availableIsas().filter((i) => i !== "scalar")) {
  describe(`x16 decode products on ${isa}`, () => {
    const xcases: Case[] = [
      { mode: "affine", bits: 2, group: 64, sb: "bf16" },
      { mode: "affine", bits: 2, group: 128, sb: "f32" },
      { mode: "affine", bits: 3, group: 32, sb: "f16" },
      { mode: "affine", bits: 3, group: 128, sb: "bf16" },
      { mode: "affine", bits: 5, group: 64, sb: "f32" },
      { mode: "affine", bits: 6, group: 32, sb: "bf16" },
      { mode: "affine", bits: 6, group: 128, sb: "f16" },
      { mode: "affine", bits: 4, group: 32, sb: "bf16" },
      { mode: "affine", bits: 4, group: 64, sb: "f16" },
      { mode: "affine", bits: 4, group: 128, sb: "f32" },
      { mode: "affine", bits: 8, group: 32, sb: "f32" },
      { mode: "affine", bits: 8, group: 64, sb: "bf16" },
      { mode: "affine", bits: 8, group: 128, sb: "f16" },
      { mode: "mxfp4", bits: 4, group: 32, sb: "f32" },
      { mode: "nvfp4", bits: 4, group: 16, sb: "f32" },
      { mode: "nvfp4", bits: 4, group: 16, sb: "f32", gs: 1234.5 },
    ];
    for (const c of xcases) {
      test(`${c.mode} bits=${c.bits} group=${c.group}${c.gs ? " global" : ""} equals x rounded to 16 bits per group`, () => {
        expect(setIsa(isa)).toBe(0);
        expect(setGemvMode("x16")).toBe(0);
        const K = 384, N = 21;
        const q = randomQWeight(c.bits * 77 + c.group, c.mode, c.bits, c.group, N, K, c.sb, c.gs ?? 0);
        expect(takesX16(q)).toBe(true);
        const bias = randomX(5, N);
        for (const M of [1, 2, 3, 5, 31]) {
          const x = randomX(M + c.group, M * K);
          // one group of x far larger than the rest, one all zero: steps are per group
          for (let i = 0; i < c.group; i++) x[i] = x[i]! * 1000;
          x.fill(0, K - c.group, K);
          expectX16(q, x, M, bias);
        }
      });
    }

    test("long rows are split in blocks of groups (K=4352, 1 to 9 rows, 4-bit g32, mxfp4, nvfp4)", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x16")).toBe(0);
      const K = 4352, N = 6;
      for (const mode of ["affine", "mxfp4", "nvfp4"] as const) {
        const q = randomQWeight(17, mode, 4, mode === "nvfp4" ? 16 : 32, N, K, mode === "affine" ? "bf16" : "f32");
        const bias = randomX(6, N);
        for (const M of [1, 2, 4, 9]) expectX16(q, randomX(M, M * K), M, bias);
      }
    });

    test("affine 2, 4 and 8-bit rows of whole 512-bit units (the AVX-512 variants' wide kernels), 1 to 17 rows, blocks, every scale type", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x16")).toBe(0);
      // [bits, group, K]: every unit shape (one or two steps, one to four groups), and K = 4608 split in blocks
      const shapes: [number, number, number][] = [
        [2, 64, 512], [2, 128, 1024], [4, 32, 256], [4, 64, 512], [4, 128, 256], [4, 64, 4608],
        [8, 32, 256], [8, 64, 128], [8, 128, 512],
      ];
      // scales: one or two rows of x read 16-bit scales in the unit loop, f32 ones beforehand
      const N = 5;
      for (const [bits, group, K] of shapes)
        for (const sb of ["f32", "f16", "bf16"] as const) {
          const q = randomQWeight(bits * 31 + group + K, "affine", bits, group, N, K, sb);
          expect(takesX16(q)).toBe(true);
          const bias = randomX(group, N);
          for (const M of K > 1024 ? [1, 2, 9] : [1, 2, 3, 8, 9, 17]) {
            const x = randomX(M + bits + K, M * K);
            for (let i = 0; i < group; i++) x[i] = x[i]! * 1000;
            x.fill(0, K - group, K);
            expectX16(q, x, M, bias);
          }
        }
    });

    test("batches of 7 and 17 rows (16-row panels on AVX512-VNNI): tiles of W whole and partial, K across blocks", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x16")).toBe(0);
      // [bits, group, K, scales]: K past one or two 1024-element blocks, by a part of a block
      const shapes: [number, number, number, "f32" | "f16" | "bf16"][] = [
        [2, 64, 1280, "bf16"], [4, 32, 1056, "f16"], [4, 64, 2112, "bf16"], [8, 128, 1152, "f32"],
      ];
      const N = 21;
      for (const [bits, group, K, sb] of shapes) {
        const q = randomQWeight(bits * 13 + group + K, "affine", bits, group, N, K, sb);
        expect(takesX16(q)).toBe(true);
        const bias = randomX(K, N);
        for (const M of [7, 17]) {
          const x = randomX(M * 3 + bits, M * K);
          for (let i = 0; i < group; i++) x[K + i] = x[K + i]! * 1000;
          x.fill(0, 2 * K - group, 2 * K);
          expectX16(q, x, M, bias);
        }
      }
    });

    test("fp4 rows of 320 elements (not whole 128-element blocks: the AVX-512 variant takes 256-bit steps)", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x16")).toBe(0);
      const K = 320, N = 9;
      for (const [mode, group] of [["mxfp4", 32], ["nvfp4", 16]] as const) {
        const q = randomQWeight(23, mode, 4, group, N, K);
        for (const M of [1, 3, 6]) expectX16(q, randomX(M + 40, M * K), M);
      }
    });

    test("x with Inf or NaN takes the f32 path (NaN comes out, as MLX gives)", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x16")).toBe(0);
      const q = randomQWeight(3, "affine", 4, 64, 8, 128);
      const x = randomX(1, 128);
      x[5] = NaN;
      expect(Array.from(qlinear(q, x, 1)).every(Number.isNaN)).toBe(true);
      x[5] = Infinity;
      expect(Array.from(qlinear(q, x, 1)).some((v) => !Number.isFinite(v))).toBe(true);
    });
  });
}

// The x8 path (native/cpu/qkern_x8_impl.h): affine 2 and 4-bit weights, 8-bit where the CPU has VNNI, with 2 or
// more rows of x (batched decode and prefill; 7 to 63 rows on the panels with VNNI), x rounded to int8 per weight
// group. Held to its documented rounding (matmulX8Ref) within f32 summation error, and to the bound that rounding
// implies against the exact float64 product; one row keeps the x16 path.
function takesX8(q: QWeight, isa: string, M: number): boolean {
  if (q.mode !== "affine" || M < 2 || q.exactRows) return false;
  if (q.bits === 8 && isa !== "avx512vnni") return false;
  if (q.bits === 2 ? q.group === 32 : q.bits !== 4 && q.bits !== 8) return false;
  const cpb = 8 / q.bits, lanes = isa === "avx2" ? 2 : 4;
  const unit = (q.group / (16 * cpb) >= 2 ? 2 : 1) * lanes * 16 * cpb;
  return q.K % unit === 0;
}

function expectX8(q: QWeight, x: Float32Array, M: number, isa: string, bias?: Float32Array) {
  const exact = matmulRef(x, M, dequantAll(q), q.N, q.K, bias ? Float64Array.from(bias) : undefined);
  const got = qlinear(q, x, M, bias ?? null);
  if (!takesX8(q, isa, M)) {
    // the x16 path below the prefill shapes (32 rows), the f32 GEMM from there
    if (M >= 32) {
      expect({ M, f32: worstRelError(got, exact.y, exact.mag) < TOL }).toEqual({ M, f32: true });
      return;
    }
    const want = matmulX16Ref(q, x, M).map((v, i) => v + (bias ? bias[i % q.N]! : 0));
    expect({ M, x16: worstRelError(got, want, exact.mag) < 2e-6 }).toEqual({ M, x16: true });
    return;
  }
  const want = matmulX8Ref(q, x, M).map((v, i) => v + (bias ? bias[i % q.N]! : 0));
  expect({ M, rounding: worstRelError(got, want, exact.mag) < 2e-6 }).toEqual({ M, rounding: true });
  const bound = x8Bound(q, x, M);
  let worst = 0;
  for (let i = 0; i < got.length; i++)
    worst = Math.max(worst, Math.abs(got[i]! - exact.y[i]!) - bound[i]! - 1e-5 * exact.mag[i]!);
  expect({ M, beyondBound: worst <= 0 }).toEqual({ M, beyondBound: true });
}

for (const isa of availableIsas().filter((i) => i !== "scalar")) {
  describe(`x8 products on ${isa}`, () => {
    const xcases: Case[] = [
      { mode: "affine", bits: 2, group: 64, sb: "bf16" },
      { mode: "affine", bits: 2, group: 128, sb: "f16" },
      { mode: "affine", bits: 4, group: 32, sb: "bf16" },
      { mode: "affine", bits: 4, group: 64, sb: "f16" },
      { mode: "affine", bits: 4, group: 128, sb: "f32" },
      { mode: "affine", bits: 8, group: 32, sb: "f32" },
      { mode: "affine", bits: 8, group: 64, sb: "bf16" },
      { mode: "affine", bits: 8, group: 128, sb: "f16" },
    ];
    for (const c of xcases) {
      test(`affine bits=${c.bits} group=${c.group}: 1 to 40 rows (decode passes, the prefill GEMM), the layer's bias`, () => {
        expect(setIsa(isa)).toBe(0);
        expect(setGemvMode("x8")).toBe(0);
        const K = 512, N = 21;
        const q = randomQWeight(c.bits * 91 + c.group, c.mode, c.bits, c.group, N, K, c.sb);
        const bias = randomX(8, N);
        for (const M of [1, 2, 3, 5, 9, 16, 33, 40]) {
          const x = randomX(M + c.group + 1, M * K);
          // one group of x far larger than the rest, one all zero: steps are per group
          for (let i = 0; i < c.group; i++) x[i] = x[i]! * 1000;
          x.fill(0, K - c.group, K);
          expectX8(q, x, M, isa, bias);
        }
      });
    }

    test("long rows are split in blocks of groups (K = 8704; 6 and 33 rows)", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x8")).toBe(0);
      const K = 8704, N = 5;
      for (const [bits, group] of [[4, 64], [8, 128], [2, 128]] as const) {
        const q = randomQWeight(bits + group, "affine", bits, group, N, K, "bf16");
        for (const M of [6, 33]) expectX8(q, randomX(M + bits, M * K), M, isa, randomX(3, N));
      }
    });

    test("weights marked exact rows (routed models): the x16 rows, exact f32 for prefill shapes", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x8")).toBe(0);
      const q = { ...randomQWeight(5, "affine", 4, 64, 9, 512, "bf16"), exactRows: true };
      for (const M of [2, 5, 40]) expectX8(q, randomX(M + 3, M * 512), M, isa);
    });

    test("K not a whole number of units, 3-bit codes: the x16 path", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x8")).toBe(0);
      for (const [bits, group, K] of [[4, 64, 320], [3, 64, 512]] as const) {
        const q = randomQWeight(bits * 7, "affine", bits, group, 7, K, "bf16");
        expect(takesX8(q, isa, 3)).toBe(false);
        expectX8(q, randomX(11, 3 * K), 3, isa);
      }
    });

    test("x with Inf or NaN takes the f32 path (NaN comes out, as MLX gives), decode and prefill shapes", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x8")).toBe(0);
      const q = randomQWeight(3, "affine", 4, 64, 8, 512);
      for (const M of [2, 40]) {
        const x = randomX(1, M * 512);
        x[M * 512 - 5] = NaN;
        const y = qlinear(q, x, M);
        expect(Array.from(y.subarray((M - 1) * 8)).every(Number.isNaN)).toBe(true);
        expect(Array.from(y.subarray(0, 8)).every(Number.isFinite)).toBe(true);
      }
    });
  });
}

// mxfp8 decode products (native/cpu/qkern_fp8_impl.h): exact products, f32 sums (the bf16 kernels: x split in two
// bf16 parts, off by at most 2^-18 of each |x|), so held to the f32 tolerance
// on both gemv modes, for every row count a decode batch can have (passes of 8, 4, 2 and 1 rows), odd N, group
// counts odd and split in blocks, the layer's bias, and rows whose scale byte sends them to the scalar
// dequantizer (above 246) or to the bottom of the range (0).
for (const isa of availableIsas().filter((i) => i !== "scalar")) {
  describe(`mxfp8 decode products on ${isa}`, () => {
    const check = (q: QWeight, Ms: number[], seed: number) => {
      const wd = dequantAll(q);
      const bias = randomX(seed + 1, q.N);
      for (const M of Ms) {
        const x = randomX(seed + M, M * q.K);
        for (let i = 0; i < 32; i++) x[i] = x[i]! * 1000; // one group of x far larger than the rest
        const { y, mag } = matmulRef(x, M, wd, q.N, q.K, Float64Array.from(bias));
        for (const mode of ["x16", "f32"]) {
          expect(setGemvMode(mode)).toBe(0);
          expect({ M, mode, err: worstRelError(qlinear(q, x, M, bias), y, mag) < TOL }).toEqual({ M, mode, err: true });
        }
      }
    };
    const ALL = Array.from({ length: 31 }, (_, i) => i + 1);

    test("1 to 31 rows, K = 96 and 416 (odd group counts), 448 (bf16 products where the CPU has them), N = 37", () => {
      expect(setIsa(isa)).toBe(0);
      for (const K of [96, 416, 448]) check(randomQWeight(K + 8, "mxfp8", 8, 32, 37, K), ALL, K);
    });

    test("long rows are split in blocks of groups (K = 4352; 1, 2, 5, 8, 13, 31 rows)", () => {
      expect(setIsa(isa)).toBe(0);
      check(randomQWeight(41, "mxfp8", 8, 32, 11, 4352), [1, 2, 5, 8, 13, 31], 9);
    });

    test("scale bytes 0 and 247 (that row through the scalar dequantizer) beside ordinary rows", () => {
      expect(setIsa(isa)).toBe(0);
      for (const K of [160, 192]) {
        const N = 9;
        const q = randomQWeight(12, "mxfp8", 8, 32, N, K);
        const s = q.scales as Uint8Array;
        s.fill(0, 0, K / 32); // row 0: every group 2^-127
        s[3 * (K / 32) + 2] = 247; // row 3, one group 2^120, its elements below 2^-2 so that nothing overflows f32
        const b = new Uint8Array(q.w.buffer);
        for (let i = 3 * K + 64; i < 3 * K + 96; i++) b[i] = b[i]! & 0xa7;
        check(q, [1, 3, 9], 70);
      }
    });

    test("x with NaN gives NaN, as on the f32 path", () => {
      expect(setIsa(isa)).toBe(0);
      expect(setGemvMode("x16")).toBe(0);
      const q = randomQWeight(3, "mxfp8", 8, 32, 8, 128);
      const x = randomX(1, 128);
      x[70] = NaN;
      expect(Array.from(qlinear(q, x, 1)).every(Number.isNaN)).toBe(true);
    });
  });
}
