// Per-step overhead of the native backend: a one-layer model step with tiny shapes ([1, 64] activations, 16 ops:
// norms, projections, rope, KV write, paged attention, SwiGLU MLP, residuals), where the kernels cost almost
// nothing, so the time is recording + encoding + one FFI call + kernel dispatch.
// Usage: bun scripts/bench/overhead.ts [steps]
import { defaultDbPath, MetricsStore } from "../../src/metrics/store.ts";
import { NativeBackend } from "../../src/backend/native/backend.ts";

const steps = Number(process.argv[2] ?? 20000);
const be = new NativeBackend();
const D = 64;
const heads = 4;
const hd = D / heads;
const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.1);
const W = (o: number, i: number) => be.fromArray(rand(o * i), [o, i], "f32");
const wq = W(D, D);
const wk = W(D, D);
const wv = W(D, D);
const wo = W(D, D);
const wg = W(2 * D, D);
const wu = W(2 * D, D);
const wd = W(D, 2 * D);
const n1 = be.fromArray(rand(D), [D], "f32");
const n2 = be.fromArray(rand(D), [D], "f32");
const pool = be.createKvPool(64, 16, heads, hd, "f32");
const rope = { dims: hd, traditional: false, base: 10000, scale: 1 };
const x = be.fromArray(rand(D), [1, D], "f32");
const blockTables = Int32Array.from({ length: 64 }, (_, i) => i);

function step(pos: number): Float32Array {
  return be.scope(() => {
    const positions = new Int32Array([pos]);
    const h = be.rmsNorm(x, n1, 1e-6);
    const q = be.rope(be.reshape(be.linear(h, wq), [1, heads, hd]), positions, rope);
    const k = be.rope(be.reshape(be.linear(h, wk), [1, heads, hd]), positions, rope);
    const v = be.reshape(be.linear(h, wv), [1, heads, hd]);
    be.kvWrite(pool, k, v, positions);
    const batch = { blockTables, maxBlocks: 64, seqLens: new Int32Array([pos + 1]), tokenSeq: new Int32Array([0]), positions };
    const a = be.pagedAttention(q, pool, batch, { scale: 1 / Math.sqrt(hd) });
    const x1 = be.add(x, be.linear(be.reshape(a, [1, D]), wo));
    const h2 = be.rmsNorm(x1, n2, 1e-6);
    const m = be.swiglu(be.linear(h2, wg), be.linear(h2, wu));
    const out = be.add(x1, be.linear(m, wd));
    return be.toFloat32(out);
  });
}

for (let i = 0; i < 2000; i++) step(i % 16);
const times: number[] = [];
const cpu0 = process.cpuUsage();
for (let i = 0; i < steps; i++) {
  const t0 = Bun.nanoseconds();
  step(i % 16);
  times.push(Bun.nanoseconds() - t0);
}
const cpu = process.cpuUsage(cpu0);
times.sort((a, b) => a - b);
const us = (q: number) => (times[Math.floor(q * (times.length - 1))]! / 1000).toFixed(1);
// CPU time per step counts every thread (the pool's spinning too); with RMLX_THREADS=1 it is the step's own cost
// even on a busy machine, where wall times wander.
const cpuUs = ((cpu.user + cpu.system) / steps).toFixed(1);
console.log(
  `${be.device}: one-layer tiny step (16 ops, [1, ${D}]): wall median ${us(0.5)} us, p10 ${us(0.1)} us, p90 ${us(0.9)} us; CPU ${cpuUs} us/step over ${steps} steps`,
);

if (!process.argv.includes("--no-record")) {
  const store = MetricsStore.open(defaultDbPath());
  store.startRun({ kind: "bench", backend: be.name, device: be.device });
  store.recordBenchmarks([
    { name: "step overhead (one-layer tiny step, wall median)", shape: `16 ops [1, ${D}]`, figure: times[Math.floor(0.5 * (times.length - 1))]! / 1000, unit: "us", higherIsBetter: false },
  ]);
  store.close();
}
