// Packed weights written out by hand from MLX's documented layout (little-endian bit streams, low bits first),
// decoded by rmlx_dequantize_rows and rmlx_qlinear on every ISA: exact values, so every bit placement counts.
import { ptr } from "bun:ffi";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { DT, QMODE, native } from "../../src/backend/native/lib.ts";
import { availableIsas, setGemvMode, setIsa } from "./ref.ts";

const BEST = String(native().rmlx_isa());
// exact values through one-hot rows of x need exact f32 products (x16 rounds x; qlinear.test.ts covers it)
beforeAll(() => setGemvMode("f32"));
afterAll(() => {
  setIsa(BEST);
  setGemvMode("x16");
});

interface Packed {
  N: number;
  K: number;
  w: Uint32Array;
  scales: Float32Array | Uint8Array;
  biases: Float32Array | null;
  mode: number;
  bits: number;
  group: number;
  gs?: number;
}

function dequant(p: Packed, rows: Int32Array | null = null): Float32Array {
  const nrows = rows ? rows.length : p.N;
  const out = new Float32Array(nrows * p.K);
  const st = native().rmlx_dequantize_rows(
    ptr(out),
    rows ? ptr(rows) : null,
    nrows,
    p.N,
    p.K,
    ptr(p.w),
    ptr(p.scales),
    p.biases ? ptr(p.biases) : null,
    DT.f32,
    p.mode,
    p.bits,
    p.group,
    p.gs ?? 0,
  );
  expect(st).toBe(0);
  return out;
}

/** y = x @ W^T through rmlx_qlinear, for checking the product kernels on the same hand-made weights. */
function qlinear(p: Packed, x: Float32Array, M: number): Float32Array {
  const y = new Float32Array(M * p.N);
  const st = native().rmlx_qlinear(
    ptr(y), ptr(x), M, p.K, p.N, ptr(p.w), ptr(p.scales), p.biases ? ptr(p.biases) : null, DT.f32,
    p.mode, p.bits, p.group, p.gs ?? 0, null, DT.f32,
  );
  expect(st).toBe(0);
  return y;
}

const rep = <T>(a: T[], n: number) => Array.from({ length: n }, () => a).flat();

// Every case: the packed weight and the values it must decode to (one row unless N says more).
const cases: { name: string; p: Packed; want: number[] }[] = [
  {
    // values 1,2,3,4,5,6,7,0 at 3 bits: 1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 = 0x1f58d1, bytes d1 58 1f;
    // value 2 straddles bytes 0-1, value 10 straddles words 0-1, value 21 straddles words 1-2.
    name: "affine 3-bit stream across bytes and words",
    p: {
      N: 1, K: 32, mode: QMODE.affine, bits: 3, group: 32,
      w: new Uint32Array([0xd11f58d1, 0x58d11f58, 0x1f58d11f]),
      scales: new Float32Array([0.5]), biases: new Float32Array([-1]),
    },
    want: rep([1, 2, 3, 4, 5, 6, 7, 0], 4).map((q) => 0.5 * q - 1),
  },
  {
    // values 0..31 in order at 5 bits: bytes 20 88 41 8a 39 28 a9 c5 9a 7b 30 ca 49 ab bd 38 eb cd bb ff
    name: "affine 5-bit stream, values 0..31",
    p: {
      N: 1, K: 32, mode: QMODE.affine, bits: 5, group: 32,
      w: new Uint32Array([0x8a418820, 0xc5a92839, 0xca307b9a, 0x38bdab49, 0xffbbcdeb]),
      scales: new Float32Array([2]), biases: new Float32Array([0.25]),
    },
    want: Array.from({ length: 32 }, (_, i) => 2 * i + 0.25),
  },
  {
    // values (5*i) mod 64 at 6 bits: bytes 40 a1 3c 54 e6 8d 68 2b df 7c 60 2c 50 a5 7d 64 ea ce 78 2f 1c 4c 64 6d
    name: "affine 6-bit stream, negative scale",
    p: {
      N: 1, K: 32, mode: QMODE.affine, bits: 6, group: 32,
      w: new Uint32Array([0x543ca140, 0x2b688de6, 0x2c607cdf, 0x647da550, 0x2f78ceea, 0x6d644c1c]),
      scales: new Float32Array([-0.125]), biases: new Float32Array([3]),
    },
    want: Array.from({ length: 32 }, (_, i) => -0.125 * ((5 * i) % 64) + 3),
  },
  {
    // 4-bit, two groups of 32 with different scale signs, then an all-zero group (scale 0, bias 0).
    // Word 0x76543210 holds 0,1,...,7 (low nibble first); 0xfedcba98 holds 8..15.
    name: "affine 4-bit group boundaries and an all-zero group",
    p: {
      N: 1, K: 96, mode: QMODE.affine, bits: 4, group: 32,
      w: new Uint32Array([...rep([0x76543210, 0xfedcba98], 4), 0, 0, 0, 0]),
      scales: new Float32Array([-0.5, 0.25, 0]), biases: new Float32Array([3, -1, 0]),
    },
    want: [
      ...rep(Array.from({ length: 16 }, (_, i) => -0.5 * i + 3), 2),
      ...rep(Array.from({ length: 16 }, (_, i) => 0.25 * i - 1), 2),
      ...new Array(32).fill(0),
    ],
  },
  {
    // 2-bit: 0xe4 = 0b11_10_01_00 is 0,1,2,3; 8-bit: bytes in order.
    name: "affine 2-bit codes, two rows",
    p: {
      N: 2, K: 32, mode: QMODE.affine, bits: 2, group: 32,
      w: new Uint32Array([0xe4e4e4e4, 0xe4e4e4e4, 0xffffffff, 0x00000000]),
      scales: new Float32Array([1, 1.5]), biases: new Float32Array([0, -2]),
    },
    want: [...rep([0, 1, 2, 3], 8), ...new Array(16).fill(1.5 * 3 - 2), ...new Array(16).fill(-2)],
  },
  {
    name: "affine 8-bit bytes, lowest byte first",
    p: {
      N: 1, K: 32, mode: QMODE.affine, bits: 8, group: 32,
      w: new Uint32Array(rep([0x03020100, 0xff800701], 4)),
      scales: new Float32Array([0.5]), biases: new Float32Array([1]),
    },
    want: rep([0, 1, 2, 3, 1, 7, 128, 255], 4).map((q) => 0.5 * q + 1),
  },
  {
    // E2M1 nibbles 0..15 in order (0,.5,1,1.5,2,3,4,6, then negated); E8M0 scales 127 (1), 0 (2^-127), 254 (2^127).
    name: "mxfp4 nibbles with E8M0 scales 127, 0 and 254",
    p: {
      N: 1, K: 96, mode: QMODE.mxfp4, bits: 4, group: 32,
      w: new Uint32Array([...rep([0x76543210, 0xfedcba98], 2), ...rep([0x22222222], 4), ...rep([0xaaaaaaaa], 4)]),
      scales: new Uint8Array([127, 0, 254]), biases: null,
    },
    want: [
      ...rep([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6], 2),
      ...new Array(32).fill(2 ** -127),
      ...new Array(32).fill(-(2 ** 127)),
    ],
  },
  {
    // E4M3 bytes: 0x00 = 0, 0x01 = 2^-9 (smallest subnormal), 0x07 = 7*2^-9, 0x08 = 2^-6 (smallest normal),
    // 0x38 = 1, 0x7e = 448 (largest), 0x81 = -2^-9, 0xfe = -448. E8M0 scale 128 = 2.
    name: "mxfp8 E4M3 edge values",
    p: {
      N: 1, K: 32, mode: QMODE.mxfp8, bits: 8, group: 32,
      w: new Uint32Array(rep([0x08070100, 0xfe817e38], 4)),
      scales: new Uint8Array([128]), biases: null,
    },
    want: rep([0, 2 ** -9, 7 * 2 ** -9, 2 ** -6, 1, 448, -(2 ** -9), -448], 4).map((v) => 2 * v),
  },
  {
    // E8M0 scales 200 (2^73) and 0 (2^-127): far outside what real weights use, still exact.
    name: "mxfp8 with E8M0 scales 200 and 0",
    p: {
      N: 1, K: 64, mode: QMODE.mxfp8, bits: 8, group: 32,
      w: new Uint32Array(rep([0x08070100, 0xfe817e38], 8)),
      scales: new Uint8Array([200, 0]), biases: null,
    },
    want: [
      ...rep([0, 2 ** -9, 7 * 2 ** -9, 2 ** -6, 1, 448, -(2 ** -9), -448], 4).map((v) => 2 ** 73 * v),
      ...rep([0, 2 ** -9, 7 * 2 ** -9, 2 ** -6, 1, 448, -(2 ** -9), -448], 4).map((v) => 2 ** -127 * v),
    ],
  },
  {
    // E8M0 scale 250 (2^123): too large to fold the kernels' internal factors into, so decoded another way.
    name: "mxfp8 with E8M0 scale 250",
    p: {
      N: 1, K: 32, mode: QMODE.mxfp8, bits: 8, group: 32,
      w: new Uint32Array(rep([0x00813801], 8)),
      scales: new Uint8Array([250]), biases: null,
    },
    want: rep([2 ** -9, 1, -(2 ** -9), 0], 8).map((v) => 2 ** 123 * v),
  },
  {
    // nvfp4: groups of 16 with E4M3 scales 0x38 (1), 0x7e (448), 0x02 (2^-8) and 0xb0 (-0.5).
    name: "nvfp4 E4M3 scales without a global scale",
    p: {
      N: 1, K: 64, mode: QMODE.nvfp4, bits: 4, group: 16,
      w: new Uint32Array(rep([0x76543210, 0xfedcba98], 4)),
      scales: new Uint8Array([0x38, 0x7e, 0x02, 0xb0]), biases: null,
    },
    want: [1, 448, 2 ** -8, -0.5].flatMap((s) =>
      [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6].map((v) => v * s),
    ),
  },
  {
    name: "nvfp4 with a global scale: w = fp4 * e4m3(scale) * global / (448 * 6)",
    p: {
      N: 1, K: 16, mode: QMODE.nvfp4, bits: 4, group: 16, gs: 2688,
      w: new Uint32Array([0x76543210, 0xfedcba98]),
      scales: new Uint8Array([0x40]), biases: null, // 0x40 = 2
    },
    want: [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6].map((v) => v * 2),
  },
];

for (const isa of availableIsas()) {
  describe(`hand-packed weights on ${isa}`, () => {
    for (const c of cases) {
      test(c.name, () => {
        expect(setIsa(isa)).toBe(0);
        const got = dequant(c.p);
        expect(Array.from(got)).toEqual(c.want.map((v) => Math.fround(v)));
        // The product kernels decode the same way: a one-hot row of x picks each element out.
        const { N, K } = c.p;
        const M = 40; // many rows: the panel kernel; then 1 row: the streaming kernel
        for (const rows of [M, 1]) {
          const x = new Float32Array(rows * K);
          for (let m = 0; m < rows; m++) x[m * K + ((m * 7) % K)] = 1;
          const y = qlinear(c.p, x, rows);
          for (let m = 0; m < rows; m++)
            for (let n = 0; n < N; n++) expect(y[m * N + n]! + 0).toBe(Math.fround(c.want[n * K + ((m * 7) % K)]!) + 0);
        }
      });
    }

    test("selected rows, in any order and repeated", () => {
      expect(setIsa(isa)).toBe(0);
      const p = cases[4]!.p; // two rows
      const got = dequant(p, new Int32Array([1, 0, 1]));
      const want = cases[4]!.want;
      const r0 = want.slice(0, 32), r1 = want.slice(32);
      expect(Array.from(got)).toEqual([...r1, ...r0, ...r1]);
    });
  });
}
