// The mlx backend, whenever libmlxc can be loaded (RMLX_MLX_C_LIB, or the default install locations): the op tests
// written for the backend interface (hand-computed and formula references) run again with the mlx backend, plus
// checks of what is particular to it. Without libmlxc every case is skipped with the reason in its name.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { MlxBackend } from "../../src/backend/mlx/backend.ts";
import { MTensor } from "../../src/backend/mlx/tensor.ts";
import { outSlot, probeMlx, readSlot, slotPtr, spareHandle, takeSpares } from "../../src/backend/mlx/lib.ts";
import { ptr, read, toArrayBuffer, type Pointer } from "bun:ffi";
import { forwardBatch } from "../../src/engine/forward_batch.ts";
import { cacheForTokens, generate } from "../../src/engine/generate.ts";
import { Sequence } from "../../src/engine/kv/kv_cache.ts";
import { defaultKvCodec } from "../../src/engine/kv/codec.ts";
import { Sampler } from "../../src/engine/sampler.ts";
import { loadSession, sessionModel, tokenModel } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING } from "../../src/engine/types.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { loadModel } from "../../src/models/registry.ts";
import { RmlxError } from "../../src/errors.ts";
import { expectClose, linearRef, randn } from "./helpers.ts";
import { DRAW_SETTINGS, drawLogits, expectPipelinedGreedyLikePlain, expectSampledLikeHost, jsonSchemaRun } from "./pipeline_checks.ts";

const probe = probeMlx();
const skipReason = probe.ok ? "" : ` (skipped: ${probe.reason})`;
if (!probe.ok) console.warn(`mlx backend tests skipped: ${probe.reason}`);
const ROOT = join(import.meta.dir, "../..");

/** How many times fn calls the backend's mlx-c function `name`. */
function countCalls(be: MlxBackend, name: string, fn: () => void): number {
  const S = (be as unknown as { S: Record<string, (...a: unknown[]) => unknown> }).S;
  const real = S[name]!;
  let n = 0;
  S[name] = (...a: unknown[]) => {
    n++;
    return real(...a);
  };
  try {
    fn();
  } finally {
    S[name] = real;
  }
  return n;
}


/** Op test files of the interface that hold no native-only expectations. */
const SHARED_OP_TESTS = ["elementwise", "shape", "products", "norm_rope", "attention", "ternary", "kv_packed", "linear_attn"];

async function runWithMlx(files: string[]): Promise<{ code: number; out: string }> {
  const proc = Bun.spawn([process.execPath, "test", ...files], {
    cwd: ROOT,
    env: { ...process.env, RMLX_TEST_BACKEND: "mlx", RMLX_BACKEND: "mlx", RMLX_MLX_VERIFY: "1" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [o, e] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  return { code: await proc.exited, out: `${o}\n${e}` };
}

describe(`mlx backend${skipReason}`, () => {
  test.skipIf(!probe.ok).each(SHARED_OP_TESTS)("the shared %s op tests pass on mlx", async (name) => {
    const r = await runWithMlx([`test/backend/${name}.test.ts`]);
    if (r.code !== 0) console.error(r.out.split("\n").filter((l) => /fail|error|Error|expect|mismatch/.test(l)).slice(0, 40).join("\n"));
    expect(r.code).toBe(0);
  }, 300_000);

  test.skipIf(!probe.ok)("tensors made in a scope are freed when it ends; returned ones survive", () => {
    const be = new MlxBackend();
    let inner: ReturnType<typeof be.add> | undefined;
    const out = be.scope(() => {
      const a = be.fromArray(Float32Array.of(1, 2, 3), [3], "f32");
      inner = be.scale(a, 2);
      return be.add(inner, a);
    });
    expect(Array.from(be.toFloat32(out))).toEqual([3, 6, 9]);
    expect(() => be.toFloat32(inner!)).toThrow(/gone/);
  });

  test.skipIf(!probe.ok)("a step's temporaries give their memory back when its scope ends", () => {
    const be = new MlxBackend();
    const x = be.fromArray(randn(1 << 16, 3), [256, 256], "f32");
    be.eval(x);
    const before = be.activeMemory();
    for (let step = 0; step < 20; step++) {
      const s = be.scope(() => {
        const big = be.matmul(be.silu(x), x);
        be.eval(big);
        return be.sum(be.sum(big, 1), 0);
      });
      be.eval(s);
      be.dispose(s);
    }
    // 20 steps of about 768 KiB of temporaries each: what stays is at most a few scalars and MLX's rounding
    expect(be.activeMemory() - before).toBeLessThan(64 * 1024);
  });

  test.skipIf(!probe.ok)("fromBytes reads tensors at any offset of a shared buffer (views, or a copy when unaligned)", () => {
    const be = new MlxBackend();
    // bf16 of 1.5, -2, 0.25, 3: the top 16 bits of their f32 patterns, little-endian, behind 3 bytes of padding
    const file = new Uint8Array(3 + 8 + 16);
    file.set([0xc0, 0x3f, 0x00, 0xc0, 0x80, 0x3e, 0x40, 0x40], 3);
    const f32 = new Float32Array([0.5, -7, 1e-3, 42]);
    file.set(new Uint8Array(f32.buffer), 11);
    const unaligned = be.fromBytes(file.subarray(3, 11), [2, 2], "bf16");
    expect(Array.from(be.toFloat32(unaligned))).toEqual([1.5, -2, 0.25, 3]);
    const copy = new Uint8Array(file.length + 1);
    copy.set(file, 1);
    const aligned = be.fromBytes(copy.subarray(4, 12), [4], "bf16");
    expect(Array.from(be.toFloat32(aligned))).toEqual([1.5, -2, 0.25, 3]);
    const floats = be.fromBytes(copy.subarray(12, 28), [2, 2], "f32");
    expect([...floats.shape]).toEqual([2, 2]);
    expect(Array.from(be.toFloat32(floats))).toEqual(Array.from(f32));
  });

  test.skipIf(!probe.ok)("swiglu and geglu equal their formulas, through one compiled function each", () => {
    const be = new MlxBackend();
    const g = randn(64, 1, 4);
    const u = randn(64, 2, 2);
    const G = be.fromArray(g, [8, 8], "f32");
    const U = be.fromArray(u, [8, 8], "f32");
    const silu = (x: number) => x / (1 + Math.exp(-x));
    const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
    const applied = countCalls(be, "mlx_closure_apply", () => {
      expectClose(be.toFloat32(be.swiglu(G, U)), Array.from(g, (x, i) => silu(x) * u[i]!), 1e-5, 1e-5);
      expectClose(be.toFloat32(be.geglu(G, U)), Array.from(g, (x, i) => gelu(x) * u[i]!), 1e-5, 1e-5);
      // Another shape and rank replays the same compiled functions (shapeless).
      const g3 = be.fromArray(g.subarray(0, 48), [2, 3, 8], "f32");
      const u3 = be.fromArray(u.subarray(0, 48), [2, 3, 8], "f32");
      expectClose(be.toFloat32(be.swiglu(g3, u3)), Array.from(g.subarray(0, 48), (x, i) => silu(x) * u[i]!), 1e-5, 1e-5);
    });
    // The one-time checks apply each once more.
    expect(applied).toBe(5);
  });

  test.skipIf(!probe.ok)("affine 4-bit quantize matches REFERENCE's formula; quantizedMatmul equals x @ dequant(w).T", () => {
    const be = new MlxBackend();
    const N = 3;
    const K = 64;
    const g = 32;
    const w = randn(N * K, 7, 1);
    const q = be.quantize(be.fromArray(w, [N, K], "f32"), "affine", 4, g);
    const packed = new Uint32Array(be.toInt32(q.w).buffer);
    const scales = be.toFloat32(q.scales);
    const biases = be.toFloat32(q.biases!);
    const deq = new Float32Array(N * K);
    for (let r = 0; r < N; r++)
      for (let i = 0; i < K; i++) {
        const code = (packed[r * (K / 8) + (i >> 3)]! >>> ((i & 7) * 4)) & 15;
        const gi = r * (K / g) + Math.floor(i / g);
        deq[r * K + i] = scales[gi]! * code + biases[gi]!;
      }
    // Scale and bias of each group as REFERENCE.md states MLX's affine rule; values within one step of the input
    // (the far end of a group may clip once the scale is fitted to the edge).
    for (let gi = 0; gi < (N * K) / g; gi++) {
      const grp = w.slice(gi * g, gi * g + g);
      const lo = Math.min(...grp);
      const hi = Math.max(...grp);
      let scale = Math.max((hi - lo) / 15, 1e-7);
      const edge = Math.abs(lo) > Math.abs(hi) ? lo : hi;
      if (edge === hi) scale = -scale;
      const q0 = Math.round(edge / scale);
      const bias = q0 !== 0 ? edge : 0;
      if (q0 !== 0) scale = edge / q0;
      expect(Math.abs(scales[gi]! - scale)).toBeLessThanOrEqual(1e-6 * Math.abs(scale));
      expect(Math.abs(biases[gi]! - bias)).toBeLessThanOrEqual(1e-6 * Math.abs(bias));
      for (let i = 0; i < g; i++) expect(Math.abs(deq[gi * g + i]! - grp[i]!)).toBeLessThanOrEqual(Math.abs(scale) * 1.0001);
    }
    expectClose(be.toFloat32(be.dequantize(q)), deq, 1e-6, 1e-6);
    const x = randn(2 * K, 9, 1);
    const want = linearRef(x, 2, K, deq, N);
    expectClose(be.toFloat32(be.quantizedMatmul(be.fromArray(x, [2, K], "f32"), q)), want, 1e-4, 1e-4);
  });

  /** REFERENCE.md's fp4 (E2M1) element, E8M0 and E4M3 scales. */
  const FP4 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
  const fp4 = (n: number) => (n & 8 ? -1 : 1) * FP4[n & 7]!;
  const e8m0 = (s: number) => 2 ** (s - 127);
  const e4m3 = (b: number) => {
    const e = (b >> 3) & 15;
    const m = b & 7;
    return (b & 128 ? -1 : 1) * (e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7));
  };

  for (const [mode, bits, group, scaleOf, globalScale] of [
    ["mxfp4", 4, 32, e8m0, undefined],
    ["mxfp8", 8, 32, e8m0, undefined],
    ["nvfp4", 4, 16, e4m3, undefined],
    ["nvfp4", 4, 16, e4m3, 1234.5],
  ] as const)
    test.skipIf(!probe.ok)(`${mode}${globalScale ? " with a global scale" : ""}: dequantize, take and quantizedMatmul follow REFERENCE's decoding`, () => {
      const be = new MlxBackend();
      const [N, K] = [4, 64];
      const q0 = be.quantize(be.fromArray(randn(N * K, 11, 3), [N, K], "f32"), mode, bits, group);
      const q = { ...q0, ...(globalScale ? { globalScale } : {}) };
      const packed = new Uint32Array(be.toInt32(q.w).buffer);
      const scales = be.toInt32(q.scales);
      const factor = globalScale ? globalScale / (448 * 6) : 1;
      const deq = new Float32Array(N * K);
      const per = 32 / bits;
      for (let i = 0; i < N * K; i++) {
        const code = (packed[Math.floor(i / per)]! >>> ((i % per) * bits)) & ((1 << bits) - 1);
        deq[i] = (bits === 4 ? fp4(code) : e4m3(code)) * scaleOf(scales[Math.floor(i / group)]!) * factor;
      }
      expectClose(be.toFloat32(be.dequantize(q)), deq, 1e-6, 1e-6);
      expectClose(be.toFloat32(be.take(q, be.fromArray(Int32Array.of(3, 1), [2], "i32"))), [...deq.slice(3 * K, 4 * K), ...deq.slice(K, 2 * K)], 1e-6, 1e-6);
      const x = randn(2 * K, 12, 1);
      const want = linearRef(x, 2, K, deq, N);
      expectClose(be.toFloat32(be.quantizedMatmul(be.fromArray(x, [2, K], "f32"), q)), want, 1e-3, 1e-3);
    });

  test.skipIf(!probe.ok)("out-slots read back what the last call wrote, in a hot loop (Bun's JIT once read stale values)", () => {
    const be = new MlxBackend();
    const a = be.fromArray(Float32Array.of(1, 2), [2], "f32") as unknown as { h: number };
    const S = be.lib.sym;
    const stream = Number(S.mlx_default_cpu_stream_new());
    let stale = 0;
    for (let i = 0; i < 300_000; i++) {
      const slot = slotPtr();
      if (S.mlx_add(slot, a.h, a.h, stream) !== 0) throw new Error("mlx_add failed");
      const written = Number(read.u64(ptr(slot), 0));
      const h = readSlot();
      if (h === 0 || h !== written) stale++;
      S.mlx_array_free(h);
    }
    S.mlx_stream_free(stream);
    expect(stale).toBe(0);
  }, 120_000);

  test.skipIf(!probe.ok)("a bf16 model computes in bf16 with --compute-dtype model: no weight or cache is converted on a step", () => {
    const prev = process.env.RMLX_COMPUTE_DTYPE;
    process.env.RMLX_COMPUTE_DTYPE = "model";
    try {
      const base = new MlxBackend();
      const model = loadModel(base, openModelDir(join(ROOT, "models/default")));
      const be = model.backend as MlxBackend;
      expect(be.computeDtype).toBe("bf16");
      const cache = cacheForTokens(model, 64, "bf16");
      const seq = new Sequence();
      forwardBatch(model, cache, [{ seq, tokens: Int32Array.from({ length: 8 }, (_, i) => i + 3) }]);
      const casts = countCalls(be, "mlx_astype", () => {
        const r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.of(11) }]);
        expect(r.logits.every(Number.isFinite)).toBe(true);
      });
      // the step's only casts: the logits to f32 for the read-back
      expect(casts).toBeLessThanOrEqual(1);
      cache.dispose();
    } finally {
      if (prev === undefined) delete process.env.RMLX_COMPUTE_DTYPE;
      else process.env.RMLX_COMPUTE_DTYPE = prev;
    }
  });

  test.skipIf(!probe.ok).each(["models/default", "test/fixtures/models/gemma4_e", "test/fixtures/models/qwen3_moe_q4"])(
    "greedy decode pipelined on the device (%s) gives the tokens of plain steps, batched and stopped early",
    (dir) => expectPipelinedGreedyLikePlain(loadModel(new MlxBackend(), openModelDir(join(ROOT, dir)))),
    120_000,
  );

  test.skipIf(!probe.ok)("tokens drawn on the device are the host sampler's picks for the same uniform draws", () => {
    const be = new MlxBackend();
    const V = 3000;
    const R = 5;
    const settings = DRAW_SETTINGS;
    let same = 0;
    let total = 0;
    for (let round = 0; round < 8; round++) {
      const x = drawLogits(R, V, 100 + round);
      settings.forEach((s, k) => {
        const params = { ...DEFAULT_SAMPLING, topP: 1, topK: 0, minP: 0, ...s, seed: 1000 * round + k };
        const dev = Array.from({ length: R }, () => new Sampler(params));
        const host = Array.from({ length: R }, () => new Sampler(params, true));
        const ids = be.scope(() => be.toInt32(be.drawRows(be.fromArray(x, [R, V], "f32"), dev.map((d) => d.rowDraw()))));
        for (let r = 0; r < R; r++) {
          total++;
          if (ids[r] === host[r]!.sample(x.subarray(r * V, (r + 1) * V)).token) same++;
        }
      });
    }
    // f32 sums on the device against the host's f64 walk may part at a boundary, very rarely.
    expect(same).toBeGreaterThanOrEqual(total - 1);
    // Sampled rows are drawn there only on a GPU; argmax everywhere.
    expect([be.drawPays(0), be.drawPays(0.7)]).toEqual([true, probe.ok && probe.lib.metal]);
  });

  test.skipIf(!probe.ok)("sampled requests drawn on the device and pipelined (as on a GPU) give the host sampler's tokens", () => {
    const model = loadModel(new MlxBackend(), openModelDir(join(ROOT, "models/default")));
    const be = model.backend as MlxBackend;
    const prompt = Array.from({ length: 12 }, (_, i) => (i * 29 + 11) % model.vocabSize);
    const run = (onDevice: boolean, sampling: typeof DEFAULT_SAMPLING) => {
      be.drawPays = (t: number) => onDevice || t === 0;
      const cache = cacheForTokens(model, 64);
      const out = generate(tokenModel(model, cache), { prompt, maxTokens: 40, sampling, stop: [], stopTokenIds: [], ignoreEos: true });
      cache.dispose();
      return out.tokenIds;
    };
    try {
      expectSampledLikeHost(run);
    } finally {
      delete (be as { drawPays?: unknown }).drawPays;
    }
  });

  test.skipIf(!probe.ok)("JSON-schema requests picked on the device through their masks give the host's tokens", () => {
    const session = loadSession(join(ROOT, "models/default"), new MlxBackend());
    const run = (onDevice: boolean, temperature: number) => {
      const cache = cacheForTokens(session.model, 512);
      const base = sessionModel(session, cache);
      const r = jsonSchemaRun(onDevice ? base : { ...base, vocabSize: undefined }, temperature, onDevice);
      cache.dispose();
      return r;
    };
    const be = session.model.backend as MlxBackend;
    try {
      for (const t of [0, 0.9]) {
        be.drawPays = () => true;
        const device = run(true, t);
        const host = run(false, t);
        expect(device.text).toBe(host.text);
        expect(device.masked).toBeGreaterThan(5);
        // A JSON object under way (the small model may run out of tokens inside a string).
        expect(host.text).toMatch(/^\s*\{\s*"/);
      }
    } finally {
      delete (be as { drawPays?: unknown }).drawPays;
    }
  });

  test.skipIf(!probe.ok)("an op whose operands are made inside its own argument list gets an array of its own", () => {
    const be = new MlxBackend().withComputeDtype("bf16");
    const x = be.fromArray(Float32Array.of(1, 2, 3, 4), [4], "f32");
    // scale() makes its bf16 scalar on first use inside the multiply's arguments; the scalar must stay a scalar
    expect(Array.from(be.toFloat32(be.scale(x, 0.375)))).toEqual([0.375, 0.75, 1.125, 1.5]);
    expect(Array.from(be.toFloat32(be.scale(be.fromArray(Float32Array.of(8, 16), [2], "f32"), 0.375)))).toEqual([3, 6]);
  });

  test.skipIf(!probe.ok)("float MoE experts multiply in a 16-bit compute dtype too (MLX's CPU gather_mm takes f32 only)", () => {
    const be = new MlxBackend();
    const half = be.withComputeDtype("bf16");
    const [E, N, K, T] = [3, 4, 8, 2];
    const w = randn(E * N * K, 21, 0.5);
    const x = randn(T * K, 22, 0.5);
    const idx = Int32Array.of(2, 0, 1, 2);
    const run = (b: MlxBackend) =>
      b.toFloat32(b.gatherMatmul(b.fromArray(x, [T, K], "f32"), b.astype(b.fromArray(w, [E, N, K], "f32"), "bf16"), b.fromArray(idx, [T, 2], "i32")));
    expectClose(run(half), run(be), 3e-2, 3e-2);
  });

  test.skipIf(!probe.ok)("--compute-dtype auto follows the model on Metal and computes in f32 on MLX's CPU build", () => {
    const be = new MlxBackend();
    const dtype = (b: MlxBackend | undefined) => (b ?? be).computeDtype;
    expect(dtype(be.forModel("bf16", "auto"))).toBe(be.lib.metal ? "bf16" : "f32");
    expect(dtype(be.forModel("bf16", "model"))).toBe("bf16");
    expect(be.forModel("bf16", "f32")).toBeUndefined();
    expect(be.forModel("f16", "model")).toBe(be.forModel("f16", "model")!);
  });

  test.skipIf(!probe.ok)("recurrent steps update the state pools in place: no copy of a whole pool per step", () => {
    // MLX reuses an array's buffer for its update only when nothing else reads that buffer in the same
    // evaluation; the pool's data pointer shows whether a step copied the pool.
    const be = new MlxBackend();
    const spec = { convDim: 24, kernel: 4, keyHeads: 2, valueHeads: 4, keyDim: 8, valueDim: 8 };
    const pool = be.createStatePool(8, spec);
    const data = (t: unknown) => Number(probe.ok && probe.lib.sym.mlx_array_data_uint8((t as { h: number }).h));
    const f32 = (n: number, shape: number[], seed: number) => be.fromArray(randn(n, seed, 0.3), shape, "f32");
    const pointers: number[][] = [];
    for (let step = 0; step < 5; step++) {
      const lens = step === 0 ? [3, 2] : [1, 1];
      const T = lens[0]! + lens[1]!;
      const batch = { seqStart: Int32Array.of(0, lens[0]!, T), slots: Int32Array.of(5, 2), fresh: Int32Array.of(step === 0 ? 1 : 0, step === 0 ? 1 : 0) };
      be.scope(() => {
        const c = be.causalConv1d(f32(T * 24, [T, 24], step), f32(24 * 4, [24, 4], 99), pool, batch);
        const o = be.gatedDelta(f32(T * 16, [T, 2, 8], step + 10), f32(T * 16, [T, 2, 8], step + 20), f32(T * 32, [T, 4, 8], step + 30), be.fromArray(new Float32Array(T * 4).fill(-0.1), [T, 4], "f32"), be.fromArray(new Float32Array(T * 4).fill(0.5), [T, 4], "f32"), pool, batch);
        be.eval(c, o);
        return null;
      });
      pointers.push([data(pool.conv), data(pool.delta)]);
    }
    for (const p of pointers.slice(1)) expect(p).toEqual(pointers[0]!);
  });

  test.skipIf(!probe.ok)("with bf16 activations the default KV cache is bf16: the same tokens as an f32 cache, no cast of the context", () => {
    const prev = process.env.RMLX_COMPUTE_DTYPE;
    process.env.RMLX_COMPUTE_DTYPE = "model";
    try {
      const model = loadModel(new MlxBackend(), openModelDir(join(ROOT, "models/default")));
      expect(defaultKvCodec(model.backend)).toBe("bf16");
      expect(defaultKvCodec(new MlxBackend().forModel("f16", "model")!)).toBe("f16");
      const tokens = (codec: string) => {
        const cache = cacheForTokens(model, 64, codec);
        try {
          const request = { prompt: Array.from({ length: 12 }, (_, i) => i * 7 + 3), maxTokens: 16, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], stopTokenIds: [], ignoreEos: true };
          return generate(tokenModel(model, cache), request).tokenIds;
        } finally {
          cache.dispose();
        }
      };
      const got = tokens(defaultKvCodec(model.backend));
      expect(got.length).toBe(16);
      expect(got).toEqual(tokens("f32"));
      const cache = cacheForTokens(model, 64, defaultKvCodec(model.backend));
      const seq = new Sequence();
      forwardBatch(model, cache, [{ seq, tokens: Int32Array.from({ length: 8 }, (_, i) => i + 3) }]);
      // the step's only cast: the logits to f32 for the read-back
      expect(countCalls(model.backend as MlxBackend, "mlx_astype", () => forwardBatch(model, cache, [{ seq, tokens: Int32Array.of(11) }]))).toBeLessThanOrEqual(1);
      cache.dispose();
    } finally {
      if (prev === undefined) delete process.env.RMLX_COMPUTE_DTYPE;
      else process.env.RMLX_COMPUTE_DTYPE = prev;
    }
  });

  test.skipIf(!probe.ok)("decode steps write the KV pools in place and reuse their handles instead of freeing one a call", () => {
    // A spare handle still holding a view of a pool at eval time would make MLX copy the pool: the pools' data
    // pointers show that every step updated them in place.
    const be = new MlxBackend();
    const model = loadModel(be, openModelDir(join(ROOT, "models/default")));
    const cache = cacheForTokens(model, 64, "f32");
    const seq = new Sequence();
    const data = (t: unknown) => Number(probe.ok && probe.lib.sym.mlx_array_data_uint8((t as { h: number }).h));
    const pointers = () => cache.pools.flatMap((p) => [data((p as unknown as { k: unknown }).k), data((p as unknown as { v: unknown }).v)]);
    forwardBatch(model, cache, [{ seq, tokens: Int32Array.from({ length: 8 }, (_, i) => i + 3) }]);
    const first = pointers();
    for (let step = 0; step < 4; step++) {
      const frees = countCalls(be, "mlx_array_free", () => {
        const r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.of(11 + step) }]);
        expect(r.logits.every(Number.isFinite)).toBe(true);
      });
      // one free for every intermediate would be about 40 a layer
      expect(frees).toBeLessThan(4 * model.layers.length);
      expect(pointers()).toEqual(first);
    }
    cache.dispose();
  });

  test.skipIf(!probe.ok)("a dense weight is transposed once for all its products, and disposing it frees its memory", () => {
    const be = new MlxBackend();
    const w = be.fromArray(randn(512 * 256, 3, 0.1), [512, 256], "f32");
    const x = be.fromArray(randn(2 * 256, 4), [2, 256], "f32");
    const transposes = countCalls(be, "mlx_transpose_axes", () => {
      for (let i = 0; i < 3; i++) expectClose(be.toFloat32(be.linear(x, w)), linearRef(randn(2 * 256, 4), 2, 256, randn(512 * 256, 3, 0.1), 512), 1e-4, 1e-4);
    });
    expect(transposes).toBe(1);
    const before = be.activeMemory();
    be.dispose(w);
    expect(before - be.activeMemory()).toBeGreaterThanOrEqual(512 * 256 * 4);
    // a scope's own weight keeps no transpose past its scope
    const held = be.activeMemory();
    be.scope(() => {
      const tw = be.fromArray(randn(512 * 256, 5, 0.1), [512, 256], "f32");
      be.eval(be.linear(x, tw));
      return null;
    });
    expect(be.activeMemory() - held).toBeLessThan(512 * 256 * 4);
  });

  test.skipIf(!probe.ok)("a pool dropped after a write that was never evaluated leaves later evals working", () => {
    // a step that failed after its cache writes, whose cache was then disposed
    const be = new MlxBackend();
    const pool = be.createKvPool(2, 4, 1, 8, "f32") as unknown as { k: MTensor; v: MTensor };
    be.scope(() => {
      const x = be.fromArray(new Float32Array(8).fill(1), [1, 1, 8], "f32");
      be.kvWrite(pool as never, x, x, Int32Array.of(0));
      return null;
    });
    be.dispose(pool.k);
    be.dispose(pool.v);
    const y = be.add(be.fromArray(Float32Array.of(1, 2), [2], "f32"), be.fromArray(Float32Array.of(3, 4), [2], "f32"));
    expect([...be.toFloat32(y)]).toEqual([4, 6]);
  });

  test.skipIf(!probe.ok)("spare handles receive results in a hot loop, and a call nested in another's arguments keeps both results apart", () => {
    const be = new MlxBackend();
    const a = be.fromArray(Float32Array.of(1, 2), [2], "f32") as unknown as { h: number };
    const S = be.lib.sym;
    const stream = Number(S.mlx_default_cpu_stream_new());
    const values = (h: number) => {
      expect(S.mlx_array_eval(h)).toBe(0);
      return [...new Float32Array(toArrayBuffer(S.mlx_array_data_uint8(h) as Pointer, 0, 8))];
    };
    takeSpares().forEach((h) => S.mlx_array_free(h));
    let reused = 0;
    let last = 0;
    for (let i = 0; i < 100_000; i++) {
      if (S.mlx_add(outSlot(), a.h, a.h, stream) !== 0) throw new Error("mlx_add failed");
      const h = readSlot();
      if (h !== 0 && h === last) reused++;
      last = h;
      spareHandle(h);
    }
    expect(reused).toBe(99_999);
    // the outer call's slot is taken by the call that makes its operand: the operand keeps the spare handle, the
    // outer result gets a handle of its own
    const inner: number[] = [];
    const st = S.mlx_add(outSlot(), a.h, (S.mlx_multiply(outSlot(), a.h, a.h, stream), inner.push(readSlot()), inner[0]), stream);
    expect(st).toBe(0);
    const outer = readSlot();
    expect(inner[0]).toBe(last);
    expect(outer).not.toBe(last);
    expect(values(inner[0]!)).toEqual([1, 4]);
    expect(values(outer)).toEqual([2, 6]);
    for (const h of [...takeSpares(), outer, inner[0]!]) S.mlx_array_free(h);
    S.mlx_stream_free(stream);
  });

  test.skipIf(!probe.ok)("MLX's own errors come back as RmlxError with MLX's message", () => {
    const be = new MlxBackend();
    const a = be.fromArray(new Float32Array(6), [2, 3], "f32");
    expect(() => be.matmul(a, a)).toThrow(RmlxError);
    expect(() => be.reshape(a, [4, 2])).toThrow(/\[2, 3\]/);
  });
});
