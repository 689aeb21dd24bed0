// Bad arguments give RMLX_E_INVALID with a message, never a crash.
import { ptr, type Pointer } from "bun:ffi";
import { describe, expect, test } from "bun:test";
import { check, DT, QMODE, native } from "../../src/backend/native/lib.ts";
import { RmlxError } from "../../src/errors.ts";

const INVALID = 1;
const lib = native();
const y = new Float32Array(4096);
const x = new Float32Array(4096);
const w = new Uint32Array(4096);
const s = new Float32Array(256);
const b = new Float32Array(256);
const u8 = new Uint8Array(256);

interface QArgs {
  y: Pointer | null;
  x: Pointer | null;
  M: number;
  K: number;
  N: number;
  w: Pointer | null;
  scales: Pointer | null;
  biases: Pointer | null;
  sb: number;
  mode: number;
  bits: number;
  group: number;
  gs: number;
}

function q(over: Partial<QArgs> = {}) {
  const a: QArgs = {
    y: ptr(y), x: ptr(x), M: 1, K: 64, N: 4, w: ptr(w), scales: ptr(s), biases: ptr(b),
    sb: DT.f32, mode: QMODE.affine, bits: 4, group: 32, gs: 0, ...over,
  };
  return lib.rmlx_qlinear(a.y, a.x, a.M, a.K, a.N, a.w, a.scales, a.biases, a.sb, a.mode, a.bits, a.group, a.gs, null, 0);
}

function lastError(): string {
  return String(lib.rmlx_last_error());
}

describe("rmlx_qlinear argument checks", () => {
  test("valid arguments pass", () => expect(q()).toBe(0));
  const bad: [string, Partial<QArgs>, RegExp][] = [
    ["bits 7", { bits: 7 }, /bits/],
    ["bits 1", { bits: 1 }, /bits/],
    ["group 48", { group: 48 }, /group/],
    ["K not a multiple of the group", { K: 48 }, /multiple/],
    ["K zero", { K: 0 }, /positive/],
    ["N negative", { N: -3 }, /positive/],
    ["M zero", { M: 0 }, /positive/],
    ["null weight", { w: null }, /null/],
    ["null scales", { scales: null }, /null/],
    ["null x", { x: null }, /null/],
    ["affine without biases", { biases: null }, /biases/],
    ["bad scale dtype", { sb: DT.u8 }, /dtype/],
    ["unknown mode", { mode: 9 }, /mode/],
    ["mxfp4 with group 64", { mode: QMODE.mxfp4, group: 64, scales: ptr(u8) }, /group/],
    ["mxfp8 with bits 4", { mode: QMODE.mxfp8, bits: 4, scales: ptr(u8) }, /bits/],
    ["nvfp4 with group 32", { mode: QMODE.nvfp4, group: 32, scales: ptr(u8) }, /group/],
    ["nvfp4 with an infinite global scale", { mode: QMODE.nvfp4, group: 16, scales: ptr(u8), gs: Infinity }, /global/],
  ];
  for (const [name, over, msg] of bad)
    test(name, () => {
      expect(q(over)).toBe(INVALID);
      expect(lastError()).toMatch(msg);
    });

  test("check() turns the status into an RmlxError", () => {
    expect(() => check(q({ bits: 7 }), "qlinear")).toThrow(RmlxError);
  });
});

describe("other entry points", () => {
  test("rmlx_linear: bad dtype, sizes, null pointers", () => {
    expect(lib.rmlx_linear(ptr(y), ptr(x), 1, 8, 4, ptr(w), DT.u32, null)).toBe(INVALID);
    expect(lib.rmlx_linear(ptr(y), ptr(x), 1, 0, 4, ptr(w), DT.f32, null)).toBe(INVALID);
    expect(lib.rmlx_linear(ptr(y), ptr(x), -1, 8, 4, ptr(w), DT.f32, null)).toBe(INVALID);
    expect(lib.rmlx_linear(null, ptr(x), 1, 8, 4, ptr(w), DT.f32, null)).toBe(INVALID);
    expect(lib.rmlx_linear(ptr(y), ptr(x), 1, 8, 4, null, DT.f32, null)).toBe(INVALID);
  });

  test("gathers: expert index out of range, bad x_div, E zero", () => {
    const idx = new Int32Array([0, 3]);
    expect(lib.rmlx_gather_linear(ptr(y), ptr(x), 2, 1, 8, 4, ptr(idx), 3, ptr(w), DT.f32)).toBe(INVALID);
    expect(lastError()).toMatch(/expert index 3/);
    expect(lib.rmlx_gather_linear(ptr(y), ptr(x), 2, 0, 8, 4, ptr(idx), 4, ptr(w), DT.f32)).toBe(INVALID);
    expect(lib.rmlx_gather_linear(ptr(y), ptr(x), 2, 1, 8, 4, ptr(idx), 0, ptr(w), DT.f32)).toBe(INVALID);
    expect(lib.rmlx_gather_qlinear(ptr(y), ptr(x), 2, 1, 64, 4, ptr(idx), 3, ptr(w), ptr(s), ptr(b), DT.f32,
      QMODE.affine, 4, 32, 0)).toBe(INVALID);
    expect(lib.rmlx_gather_qlinear(ptr(y), ptr(x), 2, 1, 64, 4, ptr(idx), 4, ptr(w), ptr(s), ptr(b), DT.f32,
      QMODE.affine, 4, 100, 0)).toBe(INVALID);
    expect(lib.rmlx_gather_qlinear(ptr(y), ptr(x), 2, 1, 64, 4, ptr(idx), 4, ptr(w), ptr(s), ptr(b), DT.f32,
      QMODE.affine, 4, 32, 0)).toBe(0);
  });

  test("row lookups: index out of range, negative, no rows", () => {
    const rows = new Int32Array([0, 4]);
    expect(lib.rmlx_take_rows(ptr(y), ptr(rows), 2, 4, 8, ptr(x), DT.f32)).toBe(INVALID);
    expect(lastError()).toMatch(/outside/);
    expect(lib.rmlx_take_rows(ptr(y), ptr(new Int32Array([-1])), 1, 4, 8, ptr(x), DT.f32)).toBe(INVALID);
    expect(lib.rmlx_take_rows(ptr(y), ptr(rows), 0, 4, 8, ptr(x), DT.f32)).toBe(INVALID);
    expect(lib.rmlx_dequantize_rows(ptr(y), ptr(rows), 2, 4, 64, ptr(w), ptr(s), ptr(b), DT.f32, QMODE.affine, 4, 32,
      0)).toBe(INVALID);
    expect(lib.rmlx_dequantize_rows(null, null, 0, 4, 64, ptr(w), ptr(s), ptr(b), DT.f32, QMODE.affine, 4, 32,
      0)).toBe(INVALID);
    expect(lib.rmlx_dequantize_rows(ptr(y), null, 0, 4, 64, ptr(w), ptr(s), ptr(b), DT.f32, QMODE.affine, 4, 32,
      0)).toBe(0);
  });

  test("rmlx_set_gemv_mode: unknown or null names", () => {
    expect(lib.rmlx_set_gemv_mode(ptr(Buffer.from("int8\0")))).toBe(INVALID);
    expect(String(lib.rmlx_last_error())).toContain("int8");
    expect(lib.rmlx_set_gemv_mode(null)).toBe(INVALID);
    expect(String(lib.rmlx_gemv_mode())).toBe("x16");
  });

  test("rmlx_bench_triad: bad arguments", () => {
    const out = new Float64Array(1);
    expect(lib.rmlx_bench_triad(0, 1, ptr(out))).toBe(INVALID);
    expect(lib.rmlx_bench_triad(1024, 0, ptr(out))).toBe(INVALID);
    expect(lib.rmlx_bench_triad(1024, 1, ptr(out))).toBe(0);
    expect(out[0]).toBeGreaterThan(0);
  });
});
