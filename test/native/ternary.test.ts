// rmlx_ternary_linear (BitNet b1.58's linears) against the reference backend's rendering of transformers'
// BitLinear / AutoBitLinear formulas, on every ISA. Both quantize x to int8 the same way in f32 and the products
// are exact integers, so the outputs must be equal bit for bit: shapes cover the SIMD widths' tails (K not a
// multiple of 32 or 64), several rows of x sharing each decoded chunk of codes, and tiles of rows.
import { ptr } from "bun:ffi";
import { afterAll, describe, expect, test } from "bun:test";
import { native } from "../../src/backend/native/lib.ts";
import { RefBackend } from "../models/ref_backend.ts";
import { availableIsas, randomX, rng, setIsa } from "./ref.ts";

const BEST = String(native().rmlx_isa());
/** An f32 value, as the weight_scale tensors hold and the kernel takes. */
const SCALE = Math.fround(0.0371);
afterAll(() => setIsa(BEST));

function reference(x: Float32Array, M: number, K: number, packed: Uint8Array, N: number, scale: number, divide: boolean): Float32Array {
  const be = new RefBackend();
  const w = { packed: be.fromBytes(packed, [N / 4, K], "u8"), scale, divide };
  return be.toFloat32(be.ternaryLinear(be.fromArray(x, [M, K], "f32"), w));
}

function run(x: Float32Array, M: number, K: number, packed: Uint8Array, N: number, scale: number, divide: boolean): Float32Array {
  const y = new Float32Array(M * N);
  expect(native().rmlx_ternary_linear(ptr(y), ptr(x), M, K, N, ptr(packed), scale, divide ? 1 : 0)).toBe(0);
  return y;
}

/** Packed codes: bytes whose four 2-bit fields are each 0, 1 or 2. */
function randomPacked(seed: number, n: number): Uint8Array {
  const r = rng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) for (let f = 0; f < 4; f++) out[i]! |= Math.floor(r.next() * 3) << (2 * f);
  return out;
}

const SHAPES: [number, number, number][] = [
  [1, 64, 8],
  [1, 100, 12],
  [3, 256, 64],
  [5, 200, 36],
  [37, 128, 16],
  [2, 2560, 16],
];

for (const isa of availableIsas()) {
  describe(`ternary products on ${isa}`, () => {
    for (const [M, K, N] of SHAPES) {
      test(`M=${M} K=${K} N=${N}, scale multiplied and divided`, () => {
        expect(setIsa(isa)).toBe(0);
        const x = randomX(M * 7 + K, M * K);
        // a row of zeros: its scale is 127/1e-5 and every product zero
        if (M > 2) x.fill(0, K, 2 * K);
        const packed = randomPacked(N + K, (N / 4) * K);
        for (const divide of [false, true]) {
          const want = reference(x, M, K, packed, N, SCALE, divide);
          expect(Array.from(run(x, M, K, packed, N, SCALE, divide))).toEqual(Array.from(want));
        }
      });
    }
  });
}

test("an output dimension that does not pack four rows to a byte is refused", () => {
  const y = new Float32Array(6);
  expect(native().rmlx_ternary_linear(ptr(y), ptr(new Float32Array(64)), 1, 64, 6, ptr(new Uint8Array(128)), 1, 0)).not.toBe(0);
});
