// rmlx_linear, rmlx_take_rows and the MoE gathers (rmlx_gather_linear, rmlx_gather_qlinear) against float64
// references, on every ISA.
import { ptr } from "bun:ffi";
import { afterAll, describe, expect, test } from "bun:test";
import { DT, native } from "../../src/backend/native/lib.ts";
import {
  availableIsas,
  bf16ToNumber,
  dequantAll,
  f16ToNumber,
  matmulRef,
  MODE_ID,
  numberToBf16,
  numberToF16,
  randomQWeight,
  randomX,
  setGemvMode,
  setIsa,
  worstRelError,
  type FloatDt,
} from "./ref.ts";

const BEST = String(native().rmlx_isa());
afterAll(() => setIsa(BEST));
const TOL = 1e-5;

/** A random float table [N, K] in dtype dt, with its exact values as float64. */
function table(seed: number, N: number, K: number, dt: FloatDt) {
  const x = randomX(seed, N * K);
  if (dt === "f32") return { raw: x, vals: Float64Array.from(x) };
  const raw = Uint16Array.from(x, dt === "f16" ? numberToF16 : numberToBf16);
  const back = dt === "f16" ? f16ToNumber : bf16ToNumber;
  return { raw, vals: Float64Array.from(raw, back) };
}

for (const isa of availableIsas()) {
  describe(`dense products on ${isa}`, () => {
    for (const dt of ["f32", "f16", "bf16"] as FloatDt[]) {
      test(`rmlx_linear ${dt}, K odd and even, with and without bias`, () => {
        expect(setIsa(isa)).toBe(0);
        for (const K of [67, 256]) {
          const N = 29;
          const w = table(K + 1, N, K, dt);
          const b = table(K + 2, 1, N, dt);
          for (const M of [1, 3, 17, 64]) {
            const x = randomX(M, M * K);
            for (const withBias of [false, true]) {
              const y = new Float32Array(M * N);
              const st = native().rmlx_linear(ptr(y), ptr(x), M, K, N, ptr(w.raw), DT[dt], withBias ? ptr(b.raw) : null);
              expect(st).toBe(0);
              const ref = matmulRef(x, M, w.vals, N, K, withBias ? b.vals : undefined);
              expect(worstRelError(y, ref.y, ref.mag)).toBeLessThan(TOL);
            }
          }
        }
      });

      test(`rmlx_take_rows ${dt}`, () => {
        expect(setIsa(isa)).toBe(0);
        const N = 11, K = 45;
        const w = table(3, N, K, dt);
        const rows = new Int32Array([10, 0, 3, 3]);
        const out = new Float32Array(rows.length * K);
        expect(native().rmlx_take_rows(ptr(out), ptr(rows), rows.length, N, K, ptr(w.raw), DT[dt])).toBe(0);
        const want: number[] = [];
        for (const r of rows) for (let k = 0; k < K; k++) want.push(Math.fround(w.vals[r * K + k]!));
        expect(Array.from(out)).toEqual(want);
      });
    }

    test("rmlx_gather_linear: pairs grouped by expert, x_div = topk and 1", () => {
      expect(setIsa(isa)).toBe(0);
      const E = 5, N = 13, K = 40, T = 7, topk = 3;
      const w = table(8, E * N, K, "bf16");
      const idx = new Int32Array(T * topk);
      for (let p = 0; p < idx.length; p++) idx[p] = (p * 3 + (p % 4)) % E;
      for (const xDiv of [topk, 1]) {
        const rowsX = xDiv === 1 ? T * topk : T;
        const x = randomX(xDiv, rowsX * K);
        const y = new Float32Array(T * topk * N);
        const st = native().rmlx_gather_linear(ptr(y), ptr(x), T * topk, xDiv, K, N, ptr(idx), E, ptr(w.raw), DT.bf16);
        expect(st).toBe(0);
        for (let p = 0; p < T * topk; p++) {
          const e = idx[p]!;
          const xr = x.subarray((Math.floor(p / xDiv)) * K, (Math.floor(p / xDiv) + 1) * K);
          const ref = matmulRef(xr, 1, w.vals.subarray(e * N * K, (e + 1) * N * K), N, K);
          expect(worstRelError(y.subarray(p * N, (p + 1) * N), ref.y, ref.mag)).toBeLessThan(TOL);
        }
      }
    });

    test("rmlx_gather_qlinear: affine 4-bit and mxfp4 experts, many rows on one expert (f32 and x16 products)", () => {
      expect(setIsa(isa)).toBe(0);
      const E = 4, N = 21, K = 128, P = 40;
      for (const [mode, gemv] of [["affine", "f32"], ["mxfp4", "f32"], ["affine", "x16"], ["mxfp4", "x16"]] as const) {
        expect(setGemvMode(gemv)).toBe(0);
        // x16 (experts with few rows): see TOL_X16 in qlinear.test.ts
        const tol = gemv === "x16" ? 5e-5 : TOL;
        const q = randomQWeight(11, mode, 4, 32, E * N, K, "f16");
        const wd = dequantAll(q);
        // Expert 2 gets most pairs (the batched many-rows kernel), expert 3 none.
        const idx = Int32Array.from({ length: P }, (_, p) => (p % 5 === 0 ? p % 2 : 2));
        const x = randomX(4, P * K);
        const y = new Float32Array(P * N);
        const st = native().rmlx_gather_qlinear(
          ptr(y), ptr(x), P, 1, K, N, ptr(idx), E, ptr(q.w), ptr(q.scales), q.biases ? ptr(q.biases) : null,
          DT.f16, MODE_ID[mode], 4, 32, 0,
        );
        expect(st).toBe(0);
        for (let p = 0; p < P; p++) {
          const e = idx[p]!;
          const ref = matmulRef(x.subarray(p * K, (p + 1) * K), 1, wd.subarray(e * N * K, (e + 1) * N * K), N, K);
          expect(worstRelError(y.subarray(p * N, (p + 1) * N), ref.y, ref.mag)).toBeLessThan(tol);
        }
      }
      setGemvMode("x16");
    });
  });
}
