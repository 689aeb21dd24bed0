// The Lloyd-Max scalar codebooks of the turbo KV codecs: the levels that minimise the mean squared error of
// quantizing a unit Gaussian, found by Lloyd's algorithm (boundaries at the midpoints of neighbouring levels,
// each level at the mean of the Gaussian over its cell) run to a fixed point from uniform starting levels.
// `bun scripts/turbo_codebook.ts` prints the 3- and 4-bit levels, their boundaries and distortions; the native
// KV codec (native/cpu/ops_attention.cpp, kTurbo3 / kTurbo4) holds these values, and test/backend/kv_turbo.test.ts
// runs this algorithm again and checks the round trip against them. They agree with Max's published tables
// (J. Max, "Quantizing for minimum distortion", IRE Trans. Inf. Theory, 1960) to the four decimals printed there
// (4-bit levels 0.1284 ... 2.7326, distortion 0.0095; 3-bit levels 0.2451 ... 2.1520, distortion 0.03455).

const SQRT2PI = Math.sqrt(2 * Math.PI);
const phi = (x: number) => (Number.isFinite(x) ? Math.exp(-0.5 * x * x) / SQRT2PI : 0);

/** P(a < X < b) for a unit Gaussian, by composite Simpson integration of the density (infinite ends cut at 12). */
function mass(a: number, b: number): number {
  const lo = Math.max(a, -12);
  const hi = Math.min(b, 12);
  if (hi <= lo) return 0;
  const n = 4000;
  const h = (hi - lo) / n;
  let s = phi(lo) + phi(hi);
  for (let i = 1; i < n; i++) s += (i % 2 ? 4 : 2) * phi(lo + i * h);
  return (s * h) / 3;
}

/** E[(X - level)^2] over a cell, from the cell's mass and the Gaussian's partial moments. */
function cellError(a: number, b: number, c: number): number {
  const m0 = mass(a, b);
  const m1 = phi(a) - phi(b);
  const m2 = m0 + (Number.isFinite(a) ? a * phi(a) : 0) - (Number.isFinite(b) ? b * phi(b) : 0);
  return m2 - 2 * c * m1 + c * c * m0;
}

export interface Codebook {
  /** Ascending levels (2^bits of them). */
  readonly levels: number[];
  /** The 2^bits - 1 decision boundaries between neighbouring levels. */
  readonly bounds: number[];
  /** Mean squared error for a unit Gaussian. */
  readonly distortion: number;
}

/** The Lloyd-Max quantizer of a unit Gaussian with 2^bits levels. */
export function lloydMaxGaussian(bits: number): Codebook {
  const n = 2 ** bits;
  let levels = Array.from({ length: n }, (_, i) => -3 + (6 * (i + 0.5)) / n);
  for (let it = 0; it < 2000; it++) {
    const edges = [-Infinity, ...levels.slice(1).map((l, i) => (l + levels[i]!) / 2), Infinity];
    const next = levels.map((_, i) => (phi(edges[i]!) - phi(edges[i + 1]!)) / mass(edges[i]!, edges[i + 1]!));
    const moved = Math.max(...next.map((l, i) => Math.abs(l - levels[i]!)));
    levels = next;
    if (moved < 1e-12) break;
  }
  const bounds = levels.slice(1).map((l, i) => (l + levels[i]!) / 2);
  const edges = [-Infinity, ...bounds, Infinity];
  const distortion = levels.reduce((s, c, i) => s + cellError(edges[i]!, edges[i + 1]!, c), 0);
  return { levels, bounds, distortion };
}

if (import.meta.main) {
  for (const bits of [3, 4]) {
    const cb = lloydMaxGaussian(bits);
    console.log(`${bits}-bit levels: ${cb.levels.map((v) => v.toFixed(9)).join(", ")}`);
    console.log(`${bits}-bit bounds: ${cb.bounds.map((v) => v.toFixed(9)).join(", ")}`);
    console.log(`${bits}-bit distortion: ${cb.distortion.toFixed(7)}`);
  }
}
