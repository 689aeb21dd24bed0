import { describe, expect, test } from "bun:test";
import { RmlxError } from "../../src/errors.ts";
import { checkPositions, ropeSetup } from "../../src/models/rope.ts";

const close = (a: Float32Array | undefined, b: number[]) => {
  expect(a).toBeDefined();
  expect(a!.length).toBe(b.length);
  b.forEach((v, i) => expect(Math.abs(a![i]! - v) / v).toBeLessThan(1e-5));
};

describe("rope setup", () => {
  test("default: 1 / theta^(2i/d)", () => {
    const s = ropeSetup({ type: "default", theta: 10000 }, 8, 128);
    expect(s.opts.dims).toBe(8);
    expect(s.opts.traditional).toBe(false);
    close(s.opts.freqs, [1, 0.1, 0.01, 0.001]);
  });

  test("linear divides the frequencies by the factor", () => {
    close(ropeSetup({ type: "linear", theta: 10000, factor: 2 }, 8, 128).opts.freqs, [0.5, 0.05, 0.005, 0.0005]);
  });

  test("llama3: high frequencies kept, low divided, the middle interpolated", () => {
    const s = ropeSetup(
      { type: "llama3", theta: 10000, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
      8,
      128,
    );
    // wavelengths 6.28 (< 16: kept), 62.83 (between 16 and 64: smooth = (64/62.83 - 1)/3 = 0.0061973),
    // 628 and 6283 (> 64: divided by 8)
    close(s.opts.freqs, [1, 0.0125 * (1 - 0.0061973) + 0.1 * 0.0061973, 0.00125, 0.000125]);
  });

  test("partial rotary rotates a fraction of the head", () => {
    const s = ropeSetup({ type: "default", theta: 10000, partialRotaryFactor: 0.5 }, 16, 128);
    expect(s.opts.dims).toBe(8);
    close(s.opts.freqs, [1, 0.1, 0.01, 0.001]);
  });

  test("yarn: attention factor 0.1 ln(factor) + 1", () => {
    const s = ropeSetup({ type: "yarn", theta: 10000, factor: 4, originalMaxPositionEmbeddings: 64 }, 8, 256);
    expect(s.opts.mscale!).toBeCloseTo(0.1 * Math.log(4) + 1, 6);
    // the fastest frequency is extrapolated (kept), the slowest interpolated (divided by the factor)
    expect(s.opts.freqs![0]!).toBeCloseTo(1, 6);
    expect(s.opts.freqs![3]!).toBeCloseTo(0.001 / 4, 8);
  });

  test("dynamic: exact below the original length, a clear error past it", () => {
    const s = ropeSetup({ type: "dynamic", theta: 10000, factor: 2 }, 8, 64);
    close(s.opts.freqs, [1, 0.1, 0.01, 0.001]);
    expect(() => checkPositions(s, Int32Array.of(10, 63))).not.toThrow();
    expect(() => checkPositions(s, Int32Array.of(64))).toThrow(RmlxError);
  });

  test("unsupported kinds are named", () => {
    expect(() => ropeSetup({ type: "longrope", theta: 10000 }, 8, 64)).toThrow(/longrope/);
  });
});
