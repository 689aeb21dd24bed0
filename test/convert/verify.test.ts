import { afterAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { verifyPrompts } from "../../src/convert/verify.ts";
import { klDivergence } from "../../src/engine/logprobs.ts";
import { ROOT, runCli, tmp, cleanupScratch } from "./helpers.ts";

afterAll(cleanupScratch);

describe("KL divergence", () => {
  test("zero for identical distributions, the textbook value otherwise", () => {
    const p = Float64Array.from([0.5, 0.5].map(Math.log));
    const q = Float64Array.from([0.25, 0.75].map(Math.log));
    expect(klDivergence(p, p)).toBe(0);
    // 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75)
    expect(klDivergence(p, q)).toBeCloseTo(0.5 * Math.log(2) + 0.5 * Math.log(2 / 3), 12);
  });

  test("prompts are token ids inside the vocabulary", () => {
    for (const ids of verifyPrompts(50)) for (const id of ids) expect(id).toBeLessThan(50);
  });
});

const QWEN3 = join(ROOT, "test", "fixtures", "models", "qwen3");
const NATIVE = join(ROOT, "native", "build", "librmlx.so");

function verify(...flags: string[]): { mean: number; agree: number } {
  const r = runCli("convert", "--model", QWEN3, "--out", join(tmp(), "v"), ...flags, "--verify");
  const m = /KL\(source \|\| output\) mean ([0-9.e+-]+), max [0-9.e+-]+; top-1 agreement ([0-9.]+)%/.exec(r.err);
  if (r.code !== 0 || !m) throw new Error(`verify failed: ${r.err}`);
  return { mean: Number(m[1]), agree: Number(m[2]) };
}

describe.skipIf(!existsSync(QWEN3) || !existsSync(NATIVE))("--verify on the qwen3 fixture", () => {
  test("a float conversion is exact; fewer bits move the distributions further", () => {
    expect(verify()).toEqual({ mean: 0, agree: 100 });
    const q8 = verify("-q", "--bits", "8");
    const q2 = verify("-q", "--bits", "2", "--group-size", "32");
    expect(q8.mean).toBeGreaterThan(0);
    expect(q8.mean).toBeLessThan(1e-2);
    expect(q2.mean).toBeGreaterThan(10 * q8.mean);
  }, 60_000);
});
