import { describe, expect, test } from "bun:test";
import { Rng, Sampler } from "../../src/engine/sampler.ts";
import { DEFAULT_SAMPLING, type SamplingParams } from "../../src/engine/types.ts";
import { RmlxError } from "../../src/errors.ts";

const params = (p: Partial<SamplingParams>): SamplingParams => ({ ...DEFAULT_SAMPLING, seed: 1, ...p });
const logs = (ps: number[]) => new Float32Array(ps.map(Math.log));

function frequencies(s: Sampler, row: Float32Array, n: number): number[] {
  const f = new Array(row.length).fill(0);
  for (let i = 0; i < n; i++) f[s.sample(row).token]++;
  return f.map((c) => c / n);
}

describe("sampler", () => {
  test("temperature 0 is argmax, first index on ties", () => {
    const s = new Sampler(params({ temperature: 0 }));
    expect(s.sample(new Float32Array([1, 2, 3, 0])).token).toBe(2);
    expect(s.sample(new Float32Array([5, 1, 5])).token).toBe(0);
  });

  test("logprob of the chosen token and top alternatives are log-softmax values", () => {
    const s = new Sampler(params({ temperature: 0, logprobs: true, topLogprobs: 2 }));
    const r = s.sample(new Float32Array([0, Math.log(3), -Infinity]));
    expect(r.token).toBe(1);
    expect(r.logprob).toBeCloseTo(Math.log(0.75), 6);
    expect(r.top.map((t) => t.token)).toEqual([1, 0]);
    expect(r.top[1]!.logprob).toBeCloseTo(Math.log(0.25), 6);
  });

  test("same seed gives the same tokens; another seed differs", () => {
    const row = logs([0.2, 0.2, 0.2, 0.2, 0.2]);
    const run = (seed: number) => {
      const s = new Sampler(params({ seed }));
      return Array.from({ length: 40 }, () => s.sample(row).token);
    };
    expect(run(7)).toEqual(run(7));
    expect(run(7)).not.toEqual(run(8));
  });

  test("draws follow softmax(logits / temperature)", () => {
    const f1 = frequencies(new Sampler(params({ seed: 3 })), logs([0.5, 0.3, 0.2]), 20000);
    expect(Math.abs(f1[0] - 0.5)).toBeLessThan(0.02);
    expect(Math.abs(f1[1] - 0.3)).toBeLessThan(0.02);
    // at T = 0.5: p ∝ [0.36, 0.16] -> 0.6923, 0.3077
    const f2 = frequencies(new Sampler(params({ seed: 4, temperature: 0.5 })), logs([0.6, 0.4]), 20000);
    expect(Math.abs(f2[0] - 0.6923)).toBeLessThan(0.02);
  });

  test("top_p keeps the smallest most likely set reaching the mass", () => {
    const row = logs([0.3, 0.5, 0.05, 0.15]);
    const f = frequencies(new Sampler(params({ topP: 0.7 })), row, 8000);
    expect(f[2]).toBe(0);
    expect(f[3]).toBe(0);
    // renormalised 0.5 : 0.3
    expect(Math.abs(f[1] - 0.625)).toBeLessThan(0.03);
    const g = frequencies(new Sampler(params({ topP: 0.5 })), row, 500);
    expect(g[1]).toBe(1);
  });

  test("top_p on a large vocabulary", () => {
    const V = 50000;
    const row = new Float32Array(V).fill(0);
    row[123] = 14;
    row[456] = 13;
    // p123 = e^14 / (e^14 + e^13 + 49998) ≈ 0.7096, p456 ≈ 0.2610: together past 0.9, the rest below
    const f = frequencies(new Sampler(params({ topP: 0.9 })), row, 300);
    expect(f[123] + f[456]).toBe(1);
  });

  test("min_p drops tokens below min_p times the top probability", () => {
    const row = logs([0.5, 0.3, 0.15, 0.05]);
    const f = frequencies(new Sampler(params({ minP: 0.4 })), row, 4000);
    expect(f[2]).toBe(0);
    expect(f[3]).toBe(0);
    expect(f[1]).toBeGreaterThan(0.3);
    const g = frequencies(new Sampler(params({ minP: 0.25 })), row, 4000);
    expect(g[3]).toBe(0);
    expect(g[2]).toBeGreaterThan(0.1);
  });

  test("top_k keeps the k largest", () => {
    const row = logs([0.1, 0.4, 0.2, 0.3]);
    const f = frequencies(new Sampler(params({ topK: 2 })), row, 4000);
    expect(f[0]).toBe(0);
    expect(f[2]).toBe(0);
    expect(Math.abs(f[1] - 4 / 7)).toBeLessThan(0.03);
    const one = frequencies(new Sampler(params({ topK: 1, temperature: 2 })), row, 200);
    expect(one[1]).toBe(1);
  });

  test("repetition penalty is multiplicative and sign-aware over the last N tokens", () => {
    const s = new Sampler(params({ repetitionPenalty: 2, repetitionContext: 20 }));
    const x = new Float32Array([2, -2, 1]);
    s.applyProcessors(x, [0, 1, 1]);
    expect([...x]).toEqual([1, -4, 1]);
    const w = new Sampler(params({ repetitionPenalty: 2, repetitionContext: 1 }));
    const y = new Float32Array([2, -2, 1]);
    w.applyProcessors(y, [0, 1]);
    expect([...y]).toEqual([2, -4, 1]);
  });

  test("presence and frequency penalties are additive; logit bias adds", () => {
    const s = new Sampler(params({ presencePenalty: 0.5, frequencyPenalty: 0.25, logitBias: { 1: 5 } }));
    const x = new Float32Array([1, 1, 1]);
    s.applyProcessors(x, [0, 0, 2]);
    expect([...x]).toEqual([0, 6, 0.25]);
    // the bias decides a greedy pick
    const g = new Sampler(params({ temperature: 0, logitBias: { 2: -100 } }));
    expect(g.sample(new Float32Array([0, 1, 2])).token).toBe(1);
  });

  test("bad parameters are invalid_argument", () => {
    expect(() => new Sampler(params({ topP: 0 }))).toThrow(RmlxError);
    expect(() => new Sampler(params({ temperature: -1 }))).toThrow(RmlxError);
    expect(() => new Sampler(params({ topK: 1.5 }))).toThrow(RmlxError);
  });

  test("Rng is uniform-ish in [0, 1)", () => {
    const r = new Rng(42);
    let sum = 0;
    for (let i = 0; i < 10000; i++) {
      const u = r.next();
      expect(u >= 0 && u < 1).toBe(true);
      sum += u;
    }
    expect(Math.abs(sum / 10000 - 0.5)).toBeLessThan(0.02);
  });
});

describe("sampler distribution (what speculative decoding verifies against)", () => {
  const logits = Float32Array.from([2, 1, 0.5, 3, -1, 2.5, 0, 1.5]);

  test("top_k and temperature: softmax at T over the k best, zero elsewhere", () => {
    const s = new Sampler({ ...DEFAULT_SAMPLING, temperature: 0.7, topK: 3 });
    const p = new Float32Array(logits.length);
    s.distribution(logits, [], p);
    const best = [3, 5, 0];
    const w = best.map((i) => Math.exp(logits[i]! / 0.7));
    const z = w.reduce((a, b) => a + b, 0);
    for (let i = 0; i < logits.length; i++) {
      const j = best.indexOf(i);
      expect(p[i]!).toBeCloseTo(j < 0 ? 0 : w[j]! / z, 6);
    }
  });

  test("top_p, penalties and bias shape it as they shape sample()", () => {
    const params = { ...DEFAULT_SAMPLING, temperature: 1.3, topP: 0.8, repetitionPenalty: 1.5, logitBias: { 4: 3 } };
    const history = [3, 3, 5];
    const p = new Float32Array(logits.length);
    new Sampler(params).distribution(logits, history, p);
    expect(p.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
    const s = new Sampler({ ...params, seed: 7 });
    const counts = new Float64Array(logits.length);
    const n = 20000;
    for (let i = 0; i < n; i++) counts[s.sample(logits, history).token]! += 1;
    for (let i = 0; i < logits.length; i++) {
      if (p[i] === 0) expect(counts[i]).toBe(0);
      else expect(Math.abs(counts[i]! / n - p[i]!)).toBeLessThan(0.015);
    }
  });

  test("a greedy sampler has no distribution", () => {
    expect(() => new Sampler({ ...DEFAULT_SAMPLING, temperature: 0 }).distribution(logits, [], new Float32Array(8))).toThrow(RmlxError);
  });
});

describe("sampler: native and TypeScript steps agree", () => {
  // Logits with a realistic spread (a few strong tokens over a long tail), a vocabulary of Qwen's size, some masked.
  function row(V: number, seed: number): Float32Array {
    const r = new Rng(seed);
    const x = new Float32Array(V);
    for (let i = 0; i < V; i++) x[i] = (r.next() - 0.5) * 8 + (r.next() < 0.001 ? 12 : 0);
    for (let i = 0; i < V; i += 97) x[i] = -Infinity;
    return x;
  }
  const cases: Partial<SamplingParams>[] = [
    { temperature: 0 },
    { temperature: 0, logprobs: true, topLogprobs: 5 },
    { temperature: 1 },
    { temperature: 0.7, topP: 0.9 },
    { temperature: 0.6, topK: 20 },
    { temperature: 1.2, topK: 400 },
    { temperature: 0.8, minP: 0.05 },
    { temperature: 1, topP: 0.95, topK: 50, minP: 0.02, logprobs: true, topLogprobs: 3 },
    { temperature: 1, repetitionPenalty: 1.3, presencePenalty: 0.5, logitBias: { 5: 4, 17: -100 } },
  ];
  for (const c of cases) {
    test(JSON.stringify(c), () => {
      const nat = new Sampler(params({ ...c, seed: 11 }));
      const js = new Sampler(params({ ...c, seed: 11 }), true);
      for (let k = 0; k < 30; k++) {
        const x = row(151936, 100 + k);
        const history = [5, 17, 42, 42, 1000];
        const a = nat.sample(x, history);
        const b = js.sample(x, history);
        expect(a.token).toBe(b.token);
        if (Number.isNaN(b.logprob)) expect(a.logprob).toBeNaN();
        else expect(Math.abs(a.logprob - b.logprob)).toBeLessThan(1e-4);
        expect(a.top.map((t) => t.token)).toEqual(b.top.map((t) => t.token));
      }
    });
  }

  test("a masked token is never drawn, and an all-masked row is an error in both", () => {
    const x = new Float32Array(1000).fill(-Infinity);
    x[3] = -200;
    x[700] = -200.5;
    const s = new Sampler(params({ temperature: 5, seed: 2 }));
    for (let i = 0; i < 200; i++) expect([3, 700]).toContain(s.sample(x).token);
    for (const jsOnly of [false, true]) {
      const t = new Sampler(params({ temperature: 1 }), jsOnly);
      expect(() => t.sample(new Float32Array(8).fill(-Infinity))).toThrow(RmlxError);
    }
  });
});
