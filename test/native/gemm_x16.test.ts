// The x16 prefill products of affine 4 and 8-bit weights (rmlx_set_gemm_mode("x16"),
// native/cpu/qkern_gemm_x16_impl.h): x in 16-bit fixed point per weight group, integer sums, so the result is
// held, within f32 summation error, to the float64 product with x rounded as the one-row x16 kernels round it
// (matmulX16Ref), on the AVX-512 variants; elsewhere the mode reads f32 and the products stay exact.
import { describe, expect, test } from "bun:test";
import { native } from "../../src/backend/native/lib.ts";
import {
  availableIsas,
  dequantAll,
  matmulRef,
  matmulX16Ref,
  qlinear,
  randomQWeight,
  randomX,
  restoreIsaAndGemmAfterAll,
  setGemmMode,
  setGemvMode,
  setIsa,
  worstRelError,
} from "./ref.ts";

const DEFAULT_GEMM = restoreIsaAndGemmAfterAll();

const TOL = 2e-6;
const AVX512 = new Set(["avx512", "avx512vnni"]);

function modeOn(isa: string, mode: string): string {
  expect(setIsa(isa)).toBe(0);
  expect(setGemmMode(mode)).toBe(0);
  return String(native().rmlx_gemm_mode());
}

test("auto is the default gemm mode (f32 where no AVX-512 variant runs)", () => {
  if (process.env.RMLX_GEMM || process.env.RMLX_GEMV === "f32") return;
  expect(DEFAULT_GEMM).toBe(AVX512.has(String(native().rmlx_isa())) ? "auto" : "f32");
});

for (const isa of availableIsas()) {
  describe(`prefill products with --gemm x16 on ${isa}`, () => {
    test("4 and 8-bit, groups 32/64/128, every scale dtype: x rounded as the x16 kernels round it", () => {
      const mode = modeOn(isa, "x16");
      expect(mode).toBe(AVX512.has(isa) ? "x16" : "f32");
      // On AVX512-VNNI up to 63 rows run on the x16 panels of batched decode (K past their 1024-element blocks,
      // partial tiles of 16 outputs), from 64 on the GEMM: both are held to the same rounding.
      const cases = [
        [4, 64, 320, 37, 40, "bf16"],
        [4, 32, 512, 70, 45, "f16"],
        [4, 128, 384, 130, 33, "f32"],
        [8, 32, 320, 29, 41, "bf16"],
        [8, 64, 1088, 64, 50, "f32"],
        [8, 128, 256, 100, 32, "f16"],
        [4, 64, 2112, 21, 63, "bf16"],
        [8, 32, 1056, 37, 47, "f16"],
        [4, 32, 320, 45, 64, "f32"],
        [8, 128, 512, 19, 97, "bf16"],
      ] as const;
      for (const [bits, group, K, N, M, sb] of cases) {
        const q = randomQWeight(bits * 31 + group + K, "affine", bits, group, N, K, sb);
        const x = randomX(bits + K + M, M * K);
        // one large element in every 32 makes the steps coarse: x16's rounding then shows far above TOL
        for (let i = 0; i < x.length; i += 32) x[i] = x[i]! * 300;
        const exact = matmulRef(x, M, dequantAll(q), N, K);
        const y = qlinear(q, x, M);
        const want = mode === "x16" ? matmulX16Ref(q, x, M) : exact.y;
        expect({ bits, group, K, N, M, ok: worstRelError(y, want, exact.mag) < TOL }).toEqual({ bits, group, K, N, M, ok: true });
        if (mode === "x16") expect(worstRelError(y, exact.y, exact.mag)).toBeGreaterThan(10 * TOL);
      }
    });

    test("auto: x16 on plain weights, exact f32 on weights marked exact rows and while the gemv mode is f32", () => {
      const on = modeOn(isa, "auto") === "auto";
      expect(on).toBe(AVX512.has(isa));
      const M = 40;
      const q = randomQWeight(11, "affine", 4, 64, 48, 512, "bf16");
      const x = randomX(12, M * 512);
      for (let i = 0; i < x.length; i += 32) x[i] = x[i]! * 300;
      const exact = matmulRef(x, M, dequantAll(q), q.N, q.K);
      const plain = qlinear(q, x, M);
      expect(worstRelError(plain, on ? matmulX16Ref(q, x, M) : exact.y, exact.mag)).toBeLessThan(TOL);
      expect(worstRelError(qlinear({ ...q, exactRows: true }, x, M), exact.y, exact.mag)).toBeLessThan(TOL);
      // --gemm x16 asked for by name takes marked weights too
      if (on) {
        modeOn(isa, "x16");
        expect(worstRelError(qlinear({ ...q, exactRows: true }, x, M), matmulX16Ref(q, x, M), exact.mag)).toBeLessThan(TOL);
      }
      const before = String(native().rmlx_gemv_mode());
      expect(setGemvMode("f32")).toBe(0);
      try {
        expect(modeOn(isa, "auto")).toBe("f32");
        expect(worstRelError(qlinear(q, x, M), exact.y, exact.mag)).toBeLessThan(TOL);
      } finally {
        setGemvMode(before);
      }
    });

    test("a bias is added once", () => {
      modeOn(isa, "x16");
      const q = randomQWeight(5, "affine", 4, 64, 40, 256, "bf16");
      const M = 36;
      const x = randomX(6, M * 256);
      const bias = randomX(7, 40);
      const plain = qlinear(q, x, M);
      const got = qlinear(q, x, M, bias);
      let worst = 0;
      for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - plain[i]! - bias[i % 40]!));
      expect(worst).toBeLessThan(1e-5);
    });

    test("x with NaN gives NaN in its own row only, Inf likewise", () => {
      modeOn(isa, "x16");
      const q = randomQWeight(3, "affine", 8, 64, 70, 256);
      const M = 40;
      for (const bad of [NaN, Infinity]) {
        const x = randomX(1, M * 256);
        x[5 * 256 + 17] = bad;
        const y = qlinear(q, x, M);
        for (let m = 0; m < M; m++) {
          const row = Array.from(y.subarray(m * 70, (m + 1) * 70));
          expect({ m, finite: row.every(Number.isFinite) }).toEqual({ m, finite: m !== 5 });
        }
      }
    });

    test("an all-zero group of x gives the bias terms exactly", () => {
      const mode = modeOn(isa, "x16");
      const q = randomQWeight(9, "affine", 4, 32, 33, 256, "f32");
      const M = 32;
      const x = randomX(10, M * 256);
      for (let m = 0; m < M; m++) x.fill(0, m * 256, m * 256 + 32);
      const exact = matmulRef(x, M, dequantAll(q), 33, 256);
      const want = mode === "x16" ? matmulX16Ref(q, x, M) : exact.y;
      expect(worstRelError(qlinear(q, x, M), want, exact.mag)).toBeLessThan(TOL);
    });

    test("f32 keeps the products exact", () => {
      expect(modeOn(isa, "f32")).toBe("f32");
      const q = randomQWeight(11, "affine", 4, 64, 37, 320, "bf16");
      const x = randomX(12, 40 * 320);
      const exact = matmulRef(x, 40, dequantAll(q), 37, 320);
      expect(worstRelError(qlinear(q, x, 40), exact.y, exact.mag)).toBeLessThan(TOL);
    });
  });
}
