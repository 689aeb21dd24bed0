// Bad input is an RmlxError("invalid_argument" / "unsupported") with the shapes in the message, at record time,
// never a crash in native code.
import { describe, expect, test } from "bun:test";
import { type ErrorCode, RmlxError } from "../../src/errors.ts";
import { backend, randn } from "./helpers.ts";

const be = backend();
const f = (shape: number[]) => be.fromArray(randn(shape.reduce((a, b) => a * b, 1), 1), shape, "f32");
const ids = (v: number[], shape = [v.length]) => be.fromArray(Int32Array.from(v), shape, "i32");

function expectError(fn: () => unknown, code: ErrorCode, pattern?: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(RmlxError);
  expect((err as RmlxError).code).toBe(code);
  if (pattern) expect((err as RmlxError).message).toMatch(pattern);
}

describe("shape errors at record time", () => {
  const cases: [string, () => unknown, RegExp][] = [
    ["fromArray size", () => be.fromArray(new Float32Array(5), [2, 3], "f32"), /\[2, 3\]/],
    ["reshape size", () => be.reshape(f([2, 3]), [4, 2]), /\[2, 3\].*\[4, 2\]/],
    ["transpose repeated axis", () => be.transpose(f([2, 3]), [0, 0]), /repeat/],
    ["transpose rank", () => be.transpose(f([2, 3]), [0]), /rank 2/],
    ["slice axis", () => be.slice(f([2, 3]), 2, 0, 1), /axis 2/],
    ["concatenate shapes", () => be.concatenate([f([2, 3]), f([3, 4])], 0), /\[2, 3\].*\[3, 4\]/],
    ["matmul inner dims", () => be.matmul(f([2, 3]), f([4, 2])), /\[2, 3\].*\[4, 2\]/],
    ["matmul batch broadcast", () => be.matmul(f([2, 2, 3]), f([3, 3, 2])), /broadcast/],
    ["linear width", () => be.linear(f([2, 5]), f([4, 3])), /\[2, 5\].*\[4, 3\]/],
    ["linear bias size", () => be.linear(f([2, 3]), f([4, 3]), f([5])), /bias/],
    ["softmax axis", () => be.softmax(f([2, 3]), 3), /axis 3/],
    ["sum axis", () => be.sum(f([2, 3]), -3), /axis -3/],
    ["topk k", () => be.topk(f([2, 3]), 4), /k=4/],
    ["rmsNorm weight", () => be.rmsNorm(f([2, 3]), f([4]), 1e-6), /\[4\]/],
    ["layerNorm bias", () => be.layerNorm(f([2, 3]), f([3]), f([2]), 1e-6), /\[2\]/],
    ["rope rank", () => be.rope(f([2, 8]), new Int32Array(2), { dims: 8, traditional: false, base: 1e4, scale: 1 }), /\[2, 8\]/],
    ["sdpa ranks", () => be.sdpa(f([1, 2, 3, 4]), f([1, 3, 3, 4]), f([1, 3, 3, 4]), 1, true), /\[1, 2, 3, 4\]/],
    ["take ids dtype", () => be.take(f([4, 3]), f([2])), /i32/],
    ["gatherMatmul indices", () => be.gatherMatmul(f([2, 3]), f([4, 5, 3]), ids([0, 1, 2], [3])), /\[T, topk\]/],
    ["gatherMatmul rows", () => be.gatherMatmul(f([5, 3]), f([4, 5, 3]), ids([0, 1, 2, 3], [2, 2])), /5 rows/],
    [
      "kvWrite shapes",
      () => be.kvWrite(be.createKvPool(2, 4, 2, 8, "f32"), f([1, 1, 8]), f([1, 1, 8]), new Int32Array([0])),
      /\[1, 1, 8\]/,
    ],
    ["kvPool dtype", () => be.createKvPool(2, 4, 2, 8, "i32"), /i32/],
    ["binary broadcast", () => be.sub(f([3, 2]), f([3])), /\[3, 2\].*\[3\]/],
  ];
  for (const [name, fn, pattern] of cases) test(name, () => expectError(fn, "invalid_argument", pattern));

  test("quantize is unsupported on the native backend", () => expectError(() => be.quantize(f([4, 64]), "affine", 4, 64), "unsupported"));
  test("astype to an unsigned dtype is unsupported", () => expectError(() => be.astype(f([2]), "u8"), "unsupported"));
  test("a tensor from an ended scope", () => {
    const dead = be.scope(() => {
      const x = f([2]);
      be.scope(() => 0);
      return [x, be.add(x, x)];
    })[0]!;
    const gone = (() => {
      let keep: ReturnType<typeof f> | undefined;
      be.scope(() => {
        keep = be.add(dead, dead);
        return 0;
      });
      return keep!;
    })();
    expect(be.toFloat32(dead).length).toBe(2);
    expectError(() => be.add(gone, dead), "invalid_argument", /scope/);
  });
  test("a tensor of another backend object", () => {
    expectError(() => be.add({ shape: [1], dtype: "f32" }, f([1])), "invalid_argument", /native backend/);
  });
});
