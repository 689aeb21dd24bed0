// The bf16 prefill products (rmlx_set_gemm_mode("bf16"), native/cpu/qkern_impl.h): x and the decoded weights are
// rounded to bf16 (nearest even) and multiplied exactly with f32 sums, so the result is held, within f32
// summation error, to the float64 product of those rounded values, on the AVX-512 variants of a CPU with
// AVX512-BF16. Elsewhere the mode reads x16 on AVX-512 (gemm_x16.test.ts), f32 on the other variants.
import { ptr } from "bun:ffi";
import { describe, expect, test } from "bun:test";
import { DT, native } from "../../src/backend/native/lib.ts";
import {
  availableIsas,
  bf16ToNumber,
  dequantAll,
  matmulRef,
  matmulX16Ref,
  numberToBf16,
  qlinear,
  randomQWeight,
  randomX,
  restoreIsaAndGemmAfterAll,
  setGemmMode,
  setIsa,
  worstRelError,
} from "./ref.ts";

restoreIsaAndGemmAfterAll();

const TOL = 1e-5;
const toBf16 = (v: number) => bf16ToNumber(numberToBf16(v));
const roundX = (x: Float32Array) => Float32Array.from(x, toBf16);

function gemmModeOn(isa: string): string {
  expect(setIsa(isa)).toBe(0);
  expect(setGemmMode("bf16")).toBe(0);
  return String(native().rmlx_gemm_mode());
}

describe("gemm mode", () => {
  test("an unknown mode is refused with its name", () => {
    expect(setGemmMode("fp8")).not.toBe(0);
    expect(String(native().rmlx_last_error())).toContain("unknown gemm mode 'fp8'");
  });
  test("f32 reads f32", () => {
    expect(setGemmMode("f32")).toBe(0);
    expect(String(native().rmlx_gemm_mode())).toBe("f32");
  });
});

for (const isa of availableIsas()) {
  describe(`prefill products with --gemm bf16 on ${isa}`, () => {
    test("bf16 weights: K odd, across column blocks, partial tiles, with bias", () => {
      const mode = gemmModeOn(isa);
      if (isa !== "avx512" && isa !== "avx512vnni") expect(mode).toBe("f32");
      else expect(["bf16", "x16"]).toContain(mode);
      for (const [M, K, N] of [[40, 67, 29], [45, 600, 70], [33, 256, 64]] as const) {
        const w = Uint16Array.from(randomX(K + N, N * K), numberToBf16);
        const wv = Float64Array.from(w, bf16ToNumber);
        const bias = Uint16Array.from(randomX(N, N), numberToBf16);
        const bv = Float64Array.from(bias, bf16ToNumber);
        const x = randomX(M + K, M * K);
        const y = new Float32Array(M * N);
        expect(native().rmlx_linear(ptr(y), ptr(x), M, K, N, ptr(w), DT.bf16, ptr(bias))).toBe(0);
        const exact = matmulRef(x, M, wv, N, K, bv);
        const rounded = matmulRef(roundX(x), M, wv, N, K, bv);
        const want = mode === "bf16" ? rounded : exact;
        expect({ M, K, N, err: worstRelError(y, want.y, exact.mag) < TOL }).toEqual({ M, K, N, err: true });
      }
    });

    test("affine 4 and 8-bit weights: the decoded value rounded to bf16", () => {
      const mode = gemmModeOn(isa);
      for (const [bits, group, K] of [[4, 64, 512], [8, 32, 320], [4, 128, 384]] as const) {
        const N = 37, M = 41;
        const q = randomQWeight(bits * 13 + group, "affine", bits, group, N, K, "bf16");
        const wd = dequantAll(q);
        const x = randomX(bits + K, M * K);
        const exact = matmulRef(x, M, wd, N, K);
        const want =
          mode === "bf16" ? matmulRef(roundX(x), M, wd.map((v) => toBf16(Math.fround(v))), N, K).y : mode === "x16" ? matmulX16Ref(q, x, M) : exact.y;
        expect({ bits, group, err: worstRelError(qlinear(q, x, M), want, exact.mag) < TOL }).toEqual({ bits, group, err: true });
      }
    });

    test("x with NaN gives NaN in its own row only", () => {
      gemmModeOn(isa);
      const q = randomQWeight(3, "affine", 4, 64, 8, 256);
      const M = 40;
      const x = randomX(1, M * 256);
      x[M * 256 - 7] = NaN;
      const y = qlinear(q, x, M);
      expect(Array.from(y.subarray((M - 1) * 8)).every(Number.isNaN)).toBe(true);
      expect(Array.from(y.subarray(0, (M - 1) * 8)).every(Number.isFinite)).toBe(true);
    });
  });
}
