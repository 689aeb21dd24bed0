// The check the sampled speculative tests share: outcomes of N seeded requests against the target's own
// distribution over them.
import { expect } from "bun:test";

/**
 * Every observed outcome is one the target can produce; a chi-square test at p > 0.001 (cells expected fewer than
 * 5 times pooled; the quantile by Wilson-Hilferty) over more than 10 cells; total variation under 0.08 (sampling
 * noise alone gives about 0.04 at N = 2000 over 27 cells).
 */
export function expectTargetDistribution(expected: Map<string, number>, observed: Map<string, number>, N: number): void {
  for (const key of observed.keys()) expect(expected.has(key)).toBe(true);
  let chi = 0;
  let cells = 0;
  let poolE = 0;
  let poolO = 0;
  let tv = 0;
  for (const [key, p] of expected) {
    const e = p * N;
    const o = observed.get(key) ?? 0;
    tv += Math.abs(o / N - p) / 2;
    if (e < 5) {
      poolE += e;
      poolO += o;
      continue;
    }
    chi += (o - e) ** 2 / e;
    cells++;
  }
  if (poolE > 0) {
    chi += (poolO - poolE) ** 2 / poolE;
    cells++;
  }
  const df = cells - 1;
  const z = 3.0902;
  const critical = df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
  expect(cells).toBeGreaterThan(10);
  expect(chi).toBeLessThan(critical);
  expect(tv).toBeLessThan(0.08);
}
