// The kernels read what `rmlx convert` writes: weights quantized by src/quant, decoded by rmlx_dequantize_rows
// on every ISA, agree with src/quant's own dequantization in f32 (within one rounding: the kernels may fuse
// scale*q + bias into one FMA), and a product over them matches the float64 product of those values.
import { ptr } from "bun:ffi";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { DT, QMODE, native } from "../../src/backend/native/lib.ts";
import { affineDequantize, affineQuantize } from "../../src/quant/affine.ts";
import { fpDequantize, fpQuantize, type FpMode } from "../../src/quant/fp.ts";
import { availableIsas, matmulRef, randomX, setGemvMode, setIsa, worstRelError } from "./ref.ts";

const BEST = String(native().rmlx_isa());
// the products here check the formats, in exact f32 arithmetic (the x16 path has tests of its own)
beforeAll(() => setGemvMode("f32"));
afterAll(() => {
  setIsa(BEST);
  setGemvMode("x16");
});

const N = 24;
const K = 256;

interface Case {
  name: string;
  mode: number;
  bits: number;
  group: number;
  w: Uint32Array;
  scales: Float32Array | Uint8Array;
  biases: Float32Array | null;
  gs: number;
  want: Float32Array;
}

const weights = randomX(42, N * K).map((v) => v * 0.05);
const cases: Case[] = [];
for (const bits of [2, 3, 4, 5, 6, 8])
  for (const group of [32, 64, 128]) {
    const q = affineQuantize(weights, group, bits);
    cases.push({
      name: `affine ${bits}-bit g${group}`,
      mode: QMODE.affine, bits, group, w: q.weight, scales: q.scales, biases: q.biases, gs: 0,
      want: affineDequantize(q.weight, q.scales, q.biases, group, bits, "F32"),
    });
  }
for (const mode of ["mxfp4", "mxfp8", "nvfp4"] as FpMode[]) {
  const q = fpQuantize(weights, mode);
  cases.push({
    name: mode, mode: QMODE[mode], bits: mode === "mxfp8" ? 8 : 4, group: mode === "nvfp4" ? 16 : 32,
    w: q.weight, scales: q.scales, biases: null, gs: 0, want: fpDequantize(q.weight, q.scales, mode, "F32"),
  });
}

for (const isa of availableIsas()) {
  describe(`weights from src/quant on ${isa}`, () => {
    for (const c of cases) {
      test(c.name, () => {
        expect(setIsa(isa)).toBe(0);
        const out = new Float32Array(N * K);
        const st = native().rmlx_dequantize_rows(
          ptr(out), null, 0, N, K, ptr(c.w), ptr(c.scales), c.biases ? ptr(c.biases) : null, DT.f32, c.mode,
          c.bits, c.group, c.gs,
        );
        expect(st).toBe(0);
        let worst = 0;
        for (let i = 0; i < out.length; i++) {
          const tol = 2 ** -23 * (Math.abs(c.want[i]!) + (c.biases ? Math.abs(c.biases[Math.floor(i / c.group)]!) : 0));
          worst = Math.max(worst, Math.abs(out[i]! - c.want[i]!) / (tol + 1e-30));
        }
        expect(worst).toBeLessThanOrEqual(1);

        const M = 3;
        const x = randomX(7, M * K);
        const y = new Float32Array(M * N);
        expect(
          native().rmlx_qlinear(ptr(y), ptr(x), M, K, N, ptr(c.w), ptr(c.scales), c.biases ? ptr(c.biases) : null,
            DT.f32, c.mode, c.bits, c.group, c.gs, null, 0),
        ).toBe(0);
        const ref = matmulRef(x, M, Float64Array.from(c.want), N, K);
        expect(worstRelError(y, ref.y, ref.mag)).toBeLessThan(1e-5);
      });
    }
  });
}
