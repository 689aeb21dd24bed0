// Pipelined decode on the native backend (`RMLX_PIPELINE=1`): steps launched on the library's executor thread while
// the host records the next one, tokens drawn inside the step by the host sampler's own code. Tokens must equal
// plain steps' (greedy, batched, stopped early), the host sampler's picks (sampled, JSON-schema masks), and memory
// the launched step still uses must survive its scope (the arena, results dropped while a later step reads them).
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { NativeBackend } from "../../src/backend/native/backend.ts";
import { cacheForTokens, generate } from "../../src/engine/generate.ts";
import { Sampler } from "../../src/engine/sampler.ts";
import { loadSession, sessionModel, tokenModel } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING } from "../../src/engine/types.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { loadModel } from "../../src/models/registry.ts";
import { randn } from "./helpers.ts";
import { argmaxOf, DRAW_SETTINGS, drawLogits, expectPipelinedGreedyLikePlain, expectSampledLikeHost, jsonSchemaRun } from "./pipeline_checks.ts";

const ROOT = join(import.meta.dir, "../..");

describe("native pipelined decode", () => {
  test("the backend offers it only when asked; tokens are drawn in the step either way", () => {
    const off = new NativeBackend({ pipeline: false });
    expect(off.evalAsync).toBeUndefined();
    expect([off.drawPays(0), off.drawPays(0.7)]).toEqual([true, true]);
    expect(typeof new NativeBackend({ pipeline: true }).evalAsync).toBe("function");
  });

  test.each(["models/default", "test/fixtures/models/gemma4_e", "test/fixtures/models/qwen3_moe_q4"])(
    "greedy decode pipelined (%s) gives the tokens of plain steps, batched and stopped early",
    (dir) => expectPipelinedGreedyLikePlain(loadModel(new NativeBackend({ pipeline: true }), openModelDir(join(ROOT, dir)))),
    120_000,
  );

  test("tokens drawn in the step are the host sampler's picks for the same uniform draws", () => {
    const be = new NativeBackend({ pipeline: true });
    const V = 3000;
    const R = 5;
    const settings = DRAW_SETTINGS;
    for (let round = 0; round < 6; round++) {
      const x = drawLogits(R, V, 100 + round);
      // Row 1 may take only tokens 3..2999 and row 3 only the odd ones (a constraint's mask).
      const allowed = [undefined, Uint8Array.from({ length: V }, (_, t) => (t >= 3 ? 1 : 0)), undefined, Uint8Array.from({ length: V }, (_, t) => t % 2), undefined];
      settings.forEach((s, k) => {
        const params = { ...DEFAULT_SAMPLING, topP: 1, topK: 0, minP: 0, ...s, seed: 1000 * round + k };
        const dev = Array.from({ length: R }, () => new Sampler(params));
        const host = Array.from({ length: R }, () => new Sampler(params));
        const draws = dev.map((d, r) => ({ ...d.rowDraw(), ...(allowed[r] ? { allowed: allowed[r] } : {}) }));
        const ids = be.scope(() => be.toInt32(be.drawRows(be.fromArray(x, [R, V], "f32"), draws)));
        for (let r = 0; r < R; r++) {
          const row = x.slice(r * V, (r + 1) * V);
          if (allowed[r]) for (let t = 0; t < V; t++) if (!allowed[r]![t]) row[t] = -Infinity;
          expect(ids[r]).toBe(host[r]!.sample(row).token);
        }
      });
    }
  });

  test("a row with every token masked is an error, not a token", () => {
    const be = new NativeBackend({ pipeline: true });
    const x = randn(2 * 50, 3);
    const draw = { temperature: 0, topP: 1, topK: 0, minP: 0, u: 0 };
    expect(() => be.scope(() => be.toInt32(be.drawRows(be.fromArray(x, [2, 50], "f32"), [draw, { ...draw, allowed: new Uint8Array(50) }])))).toThrow(/masked/);
    // The backend goes on working after the failed program.
    expect(Array.from(be.scope(() => be.toInt32(be.drawRows(be.fromArray(x, [2, 50], "f32"), [draw, draw]))))).toEqual([
      argmaxOf(x.subarray(0, 50)),
      argmaxOf(x.subarray(50, 100)),
    ]);
  });

  test("sampled requests drawn in the step and pipelined give the host sampler's tokens", () => {
    const prompt = Array.from({ length: 12 }, (_, i) => (i * 29 + 11) % 2000);
    const run = (pipeline: boolean, sampling: typeof DEFAULT_SAMPLING) => {
      const model = loadModel(new NativeBackend({ pipeline }), openModelDir(join(ROOT, "models/default")));
      const cache = cacheForTokens(model, 64);
      const out = generate(tokenModel(model, cache), { prompt, maxTokens: 40, sampling, stop: [], stopTokenIds: [], ignoreEos: true });
      cache.dispose();
      return out.tokenIds;
    };
    expectSampledLikeHost(run);
  });

  test("JSON-schema requests picked in the step through their masks give the host's tokens", () => {
    const run = (pipeline: boolean, temperature: number) => {
      const session = loadSession(join(ROOT, "models/default"), new NativeBackend({ pipeline }));
      const cache = cacheForTokens(session.model, 512);
      const r = jsonSchemaRun(sessionModel(session, cache), temperature, pipeline);
      cache.dispose();
      return r;
    };
    for (const t of [0, 0.9]) {
      const device = run(true, t);
      const host = run(false, t);
      expect(device.text).toBe(host.text);
      expect(device.masked).toBeGreaterThan(5);
      expect(host.text).toMatch(/^\s*\{\s*"/);
    }
  });

  test("a launched step's results outlive their scope; the arena of a launched step is not reused under it", () => {
    const be = new NativeBackend({ pipeline: true });
    const n = 1 << 16;
    const x = randn(n, 7);
    const ref = Array.from(x, (v) => v * 3 + 1);
    const outs = [];
    // Each launch's temporaries sit in the arena of its scope; the scope after it fills fresh inputs at once.
    for (let i = 0; i < 6; i++) {
      outs.push(
        be.scope(() => {
          const t = be.add(be.scale(be.fromArray(x, [n], "f32"), 3), be.fromArray(new Float32Array(n).fill(1), [n], "f32"));
          be.evalAsync!(t);
          return t;
        }),
      );
      be.scope(() => be.zeros([n], "f32"));
    }
    for (const t of outs) expect(Array.from(be.toFloat32(t)).every((v, i) => Math.abs(v - ref[i]!) < 1e-5)).toBe(true);
    // A result dropped while a later launch reads it stays valid for that launch.
    const first = be.scope(() => {
      const t = be.scale(be.fromArray(x, [n], "f32"), 2);
      be.evalAsync!(t);
      return t;
    });
    const second = be.scope(() => {
      const t = be.add(first, first);
      be.evalAsync!(t);
      return t;
    });
    be.dispose(first);
    Bun.gc(true);
    expect(Array.from(be.toFloat32(second)).every((v, i) => Math.abs(v - 4 * x[i]!) < 1e-5)).toBe(true);
  });
});
