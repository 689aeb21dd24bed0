import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Tensor } from "../../src/backend/backend.ts";
import { NativeBackend } from "../../src/backend/native/backend.ts";
import { Arena, ARENA_KEEP } from "../../src/backend/native/memory.ts";
import { RmlxError } from "../../src/errors.ts";
import { backend, randn } from "./helpers.ts";

const be = backend();
const t = (data: Float32Array, shape: number[]) => be.fromArray(data, shape, "f32");

/** After a full collection: bytes the JS heap holds (objects and buffers) and the process RSS. */
function memory(): { js: number; rss: number } {
  Bun.gc(true);
  const m = process.memoryUsage();
  return { js: m.heapUsed + m.external, rss: m.rss };
}

describe("scope", () => {
  test("returned tensors survive, others are freed", () => {
    const a = t(new Float32Array([1, 2, 3, 4]), [2, 2]);
    let inner: ReturnType<typeof be.add> | undefined;
    const out = be.scope(() => {
      inner = be.add(a, a);
      const kept = be.mul(inner, a);
      return { kept, pair: [be.scale(a, 3)] };
    });
    expect([...be.toFloat32(out.kept)]).toEqual([2, 8, 18, 32]);
    expect([...be.toFloat32(out.pair[0]!)]).toEqual([3, 6, 9, 12]);
    expect(() => be.toFloat32(inner!)).toThrow(RmlxError);
    expect(() => be.add(inner!, a)).toThrow(/scope/);
  });

  test("results already computed inside the scope, and views, are moved out", () => {
    const a = t(new Float32Array([1, 2, 3, 4, 5, 6]), [3, 2]);
    const [computed, view, row] = be.scope(() => {
      const c = be.scale(a, 2);
      be.eval(c);
      const r = be.add(a, a);
      return [c, be.reshape(be.scale(a, -1), [6]), be.slice(r, 0, 1, 2)];
    });
    // New work in another scope reuses the arena; the moved results must not change.
    be.scope(() => be.toFloat32(be.scale(be.add(a, a), 100)));
    expect([...be.toFloat32(computed)]).toEqual([2, 4, 6, 8, 10, 12]);
    expect([...be.toFloat32(view)]).toEqual([-1, -2, -3, -4, -5, -6]);
    expect([...be.toFloat32(row)]).toEqual([6, 8]);
  });

  test("results of nested scopes flow into the outer one", () => {
    const a = t(new Float32Array([1, 2]), [2]);
    const out = be.scope(() => {
      const x = be.scope(() => be.add(a, a));
      const y = be.scope(() => be.mul(x, x));
      return be.add(x, y);
    });
    expect([...be.toFloat32(out)]).toEqual([6, 20]);
  });

  test("nested scopes free their temporaries: the arena holds about one layer", () => {
    const [T, D] = [128, 1024];
    const x0 = randn(T * D, 12, 0.5);
    const w = randn(D, 13);
    const run = (nestedLayers: boolean) => {
      const b = new NativeBackend();
      const f = (x: Float32Array, shape: number[]) => b.fromArray(x, shape, "f32");
      const layer = (h: Tensor) => {
        const n = b.rmsNorm(h, f(w, [D]), 1e-6);
        const g = b.silu(b.scale(n, 0.5));
        return b.add(h, b.mul(g, n));
      };
      const out = b.scope(() => {
        let h = f(x0, [T, D]);
        // An outer tensor left pending, computed inside a nested scope below: it must stay valid.
        const side = b.scale(h, 2);
        for (let i = 0; i < 20; i++) {
          const src = h;
          const l = () => (i === 3 ? layer(b.add(src, b.scale(side, 0))) : layer(src));
          h = nestedLayers ? b.scope(l) : l();
        }
        const view = b.scope(() => b.reshape(b.scale(h, 1), [T * D]));
        expect([...b.toFloat32(b.slice(side, 0, 0, 1))]).toEqual([...x0.slice(0, D)].map((v) => v * 2));
        return b.toFloat32(view);
      });
      return { out, arena: b.arenaBytes };
    };
    const flat = run(false);
    const nested = run(true);
    expect(nested.out).toEqual(flat.out);
    // 20 layers x 5 temporaries of 0.5 MiB: about 50 MiB when kept to the end, one 16 MiB block when freed per layer.
    expect(flat.arena).toBeGreaterThan(40 << 20);
    expect(nested.arena).toBeLessThanOrEqual(16 << 20);
  });

  test("the arena keeps a large step's memory for the small steps after it (up to ARENA_KEEP)", () => {
    const b = new NativeBackend();
    const big = b.scope(() => b.toFloat32(b.sum(b.scale(b.zeros([16, 1 << 20], "f32"), 2), 1)));
    expect(big.length).toBe(16);
    const grown = b.arenaBytes;
    expect(grown).toBeGreaterThan(64 << 20);
    expect(grown).toBeLessThanOrEqual(ARENA_KEEP);
    const x = b.fromArray(randn(64, 1), [1, 64], "f32");
    for (let i = 0; i < 40; i++) b.scope(() => b.toFloat32(b.add(x, x)));
    expect(b.arenaBytes).toBe(grown);
  });

  test("a forward with one nested scope per layer (cache writes, attention) equals the flat one", () => {
    const [T, H, D, L] = [6, 2, 8, 3];
    const x0 = randn(T * H * D, 21);
    const ws = [...Array(L).keys()].map((i) => randn(H * D * H * D, 30 + i, 0.2));
    const run = (perLayer: boolean) => {
      const b = new NativeBackend();
      const pools = ws.map(() => b.createKvPool(2, 4, H, D, "f32"));
      const w = ws.map((x) => b.fromArray(x, [H * D, H * D], "f32"));
      const positions = Int32Array.from({ length: T }, (_, i) => i);
      const batch = { blockTables: new Int32Array([1, 0]), maxBlocks: 2, seqLens: new Int32Array([T]), tokenSeq: new Int32Array(T), positions };
      const slots = Int32Array.from({ length: T }, (_, p) => (p < 4 ? 4 + p : p - 4));
      return b.scope(() => {
        let h = b.fromArray(x0, [T, H * D], "f32");
        for (let i = 0; i < L; i++) {
          const layer = (x: Tensor) => {
            const kv = b.reshape(b.linear(x, w[i]!), [T, H, D]);
            b.kvWrite(pools[i]!, kv, b.scale(kv, 0.5), slots);
            const a = b.pagedAttention(b.reshape(x, [T, H, D]), pools[i]!, batch, { scale: 0.3 });
            return b.add(x, b.reshape(a, [T, H * D]));
          };
          const x = h;
          h = perLayer ? b.scope(() => layer(x)) : layer(x);
        }
        return b.toFloat32(h);
      });
    };
    expect(run(true)).toEqual(run(false));
  });

  test("a throwing scope still frees and the backend keeps working", () => {
    const a = t(new Float32Array([1, 2]), [2]);
    expect(() =>
      be.scope(() => {
        be.add(a, a);
        throw new Error("boom");
      }),
    ).toThrow("boom");
    expect([...be.toFloat32(be.scope(() => be.add(a, a)))]).toEqual([2, 4]);
  });

  test("10k small steps keep the arena and RSS flat", () => {
    const w = t(randn(64, 1), [64]);
    const x0 = t(randn(64, 2), [1, 64]);
    const pool = be.createKvPool(4, 16, 1, 64, "f32");
    const step = (i: number) =>
      be.scope(() => {
        let h = be.rmsNorm(x0, w, 1e-6);
        h = be.add(h, be.scale(x0, 0.5));
        be.kvWrite(pool, be.reshape(h, [1, 1, 64]), be.reshape(h, [1, 1, 64]), new Int32Array([i % 64]));
        const big = be.mul(be.silu(h), h);
        return be.toFloat32(big)[0]!;
      });
    // Steady state after a warm-up (the JIT and the allocators settle), then 10k more steps must not grow.
    for (let i = 0; i < 3000; i++) step(i);
    const arena0 = be.arenaBytes;
    const m0 = memory();
    for (let i = 0; i < 10000; i++) step(i);
    const m1 = memory();
    expect(be.arenaBytes).toBe(arena0);
    expect(m1.js - m0.js).toBeLessThan(4 << 20);
    // RSS also depends on when the allocators hand pages back, which other tests in the process influence.
    expect(m1.rss - m0.rss).toBeLessThan(64 << 20);
  });

  test("escaping results of 10k steps are reclaimed", () => {
    // 16 KiB escape each step: 160 MiB over the run if nothing were reclaimed. In a process of its own, so that
    // RSS reflects these steps alone.
    const run = Bun.spawnSync([process.execPath, join(import.meta.dir, "scope_escape_run.ts")], { stderr: "pipe" });
    expect(run.exitCode).toBe(0);
    const growth = JSON.parse(run.stdout.toString()) as { js: number; rss: number };
    expect(growth.js).toBeLessThan(4 << 20);
    expect(growth.rss).toBeLessThan(64 << 20);
  });

  test("an attention read left unevaluated in an ended scope does not hold up later pool writes", () => {
    const pool = be.createKvPool(2, 4, 1, 8, "f32");
    const batch = { blockTables: new Int32Array([0, 1]), maxBlocks: 2, seqLens: new Int32Array([1]), tokenSeq: new Int32Array([0]), positions: new Int32Array([0]) };
    const kv = () => t(randn(8, 4), [1, 1, 8]);
    be.scope(() => {
      be.kvWrite(pool, kv(), kv(), new Int32Array([0]));
      be.pagedAttention(t(randn(8, 5), [1, 1, 8]), pool, batch, { scale: 1 });
      return 0;
    });
    const v = randn(8, 6);
    const out = be.scope(() => {
      be.kvWrite(pool, kv(), t(v, [1, 1, 8]), new Int32Array([0]));
      return be.toFloat32(be.pagedAttention(t(randn(8, 5), [1, 1, 8]), pool, batch, { scale: 1 }));
    });
    expect([...out]).toEqual([...v]);
  });

  test("persistent tensors are not freed by scopes; dispose frees them", () => {
    const p = be.allocPersistent([4], "f32");
    expect([...be.toFloat32(p)]).toEqual([0, 0, 0, 0]);
    const viewOut = be.scope(() => be.reshape(p, [2, 2]));
    expect([...be.toFloat32(viewOut)]).toEqual([0, 0, 0, 0]);
    be.dispose(p);
    expect(() => be.toFloat32(p)).toThrow(RmlxError);
  });

  test("dispose leaves pending and arena tensors alone", () => {
    const out = be.scope(() => {
      const a = be.scale(t(new Float32Array([1, 2]), [2]), 2);
      const b = be.add(a, a);
      be.dispose(a);
      return be.toFloat32(b);
    });
    expect([...out]).toEqual([4, 8]);
  });

  test("fromBytes wraps caller memory without copying", () => {
    const bytes = new Uint8Array(new Float32Array([1, 2, 3]).buffer);
    const w = be.fromBytes(bytes, [3], "f32");
    new Float32Array(bytes.buffer)[1] = 7;
    expect([...be.toFloat32(w)]).toEqual([1, 7, 3]);
    expect(() => be.fromBytes(bytes, [4], "f32")).toThrow(/12 bytes/);
    // Reading back bf16 bytes at an odd offset in the caller's buffer.
    const file = new Uint8Array(7);
    file.set([0x80, 0x3f, 0x00, 0xc0], 1);
    expect([...be.toFloat32(be.fromBytes(file.subarray(1, 5), [2], "bf16"))]).toEqual([1, -2]);
  });
});

describe("step arena", () => {
  // Blocks are mapped, never written, here (so never resident): only their sizes are looked at.
  const scopeOf = (a: Arena, bytes: number) => {
    a.alloc(bytes);
    a.reset();
  };

  test("keeps what a short prefill needed across the decode steps after it", () => {
    const a = new Arena();
    scopeOf(a, 60 << 20);
    const grown = a.capacity;
    expect(grown).toBeGreaterThanOrEqual(60 << 20);
    for (let i = 0; i < 100; i++) scopeOf(a, 1 << 20);
    expect(a.capacity).toBe(grown);
  });

  test("a scope that outgrew it gets the same memory next time: blocks are kept, not merged into fresh ones", () => {
    const a = new Arena();
    const first = [a.alloc(10 << 20), a.alloc(10 << 20), a.alloc(30 << 20)];
    a.reset();
    const again = [a.alloc(10 << 20), a.alloc(10 << 20), a.alloc(30 << 20)];
    expect(again).toEqual(first);
    // a block added is as large as the ones before it: the chain of a growing arena stays short
    expect(a.capacity).toBeGreaterThanOrEqual(2 * (16 << 20) + (30 << 20));
    a.reset();
    a.alloc(600 << 20);
    a.reset();
    expect(a.capacity).toBeGreaterThanOrEqual(600 << 20);
  });

  test("gives back what a long prefill needed beyond ARENA_KEEP once the steps after it use little", () => {
    const a = new Arena();
    scopeOf(a, ARENA_KEEP + (200 << 20));
    for (let i = 0; i < 40; i++) scopeOf(a, 1 << 20);
    expect(a.capacity).toBe(ARENA_KEEP);
  });
});

describe("weights in the backend's own memory (weightBuffer)", () => {
  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]) * 1024;

  test("large weights get memory of their own, small ones stay in place", () => {
    if (!be.weightBuffer) return;
    expect(be.weightBuffer([1 << 10], "f32")).toBeUndefined();
    const own = be.weightBuffer([1 << 19], "f32");
    // none where the kernel gives no transparent huge pages
    if (!own) return;
    const data = randn(1 << 19, 9);
    own.bytes.set(new Uint8Array(data.buffer));
    expect(be.toFloat32(be.scale(own.tensor, 2))[7]).toBe(data[7]! * 2);
    be.dispose(own.tensor);
  });

  test("RMLX_MMAP_WEIGHTS=1 keeps weights in place", () => {
    if (!be.weightBuffer) return;
    process.env.RMLX_MMAP_WEIGHTS = "1";
    try {
      expect(be.weightBuffer([1 << 20], "f32")).toBeUndefined();
    } finally {
      delete process.env.RMLX_MMAP_WEIGHTS;
    }
  });

  test("a weight's memory is freed once its tensor is collected (a model is dropped on unload)", async () => {
    if (!be.weightBuffer) return;
    const size = 64 << 20;
    const probe = be.weightBuffer([1 << 20], "f32");
    if (!probe) return;
    be.dispose(probe.tensor);
    const make = () => {
      const own = be.weightBuffer!([size / 4], "f32")!;
      own.bytes.fill(3);
      return be.toFloat32(be.sum(own.tensor, 0))[0];
    };
    Bun.gc(true);
    const before = rss();
    make();
    for (let i = 0; i < 20 && rss() - before > size / 2; i++) {
      Bun.gc(true);
      await Bun.sleep(10);
    }
    expect(rss() - before).toBeLessThan(size / 2);
  });
});
