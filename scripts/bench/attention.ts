// Paged attention throughput through the native backend: one layer of a Qwen3-0.6B-like shape (16 query heads,
// 8 KV heads, head dim 128, 16-token blocks). Reports wall and CPU time per call (CPU time is steadier on a busy
// machine; with RMLX_THREADS=1 it is the kernel's own cost).
// Usage: bun run bench attention [context=4096] [tokens=1] [pool dtype=f32] [calls=20]
import type { DType } from "../../src/backend/backend.ts";
import { NativeBackend } from "../../src/backend/native/backend.ts";

const ctx = Number(process.argv[2] ?? 4096);
const T = Number(process.argv[3] ?? 1);
const dtype = (process.argv[4] ?? "f32") as DType;
const calls = Number(process.argv[5] ?? 20);
const [H, KVH, D, BS] = [16, 8, 128, 16];

const be = new NativeBackend();
const total = ctx + T;
const numBlocks = Math.ceil(total / BS);
const pool = be.createKvPool(numBlocks, BS, KVH, D, dtype);
const blockTables = Int32Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
const slots = Int32Array.from({ length: total }, (_, p) => blockTables[Math.floor(p / BS)]! * BS + (p % BS));
const rand = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + seed) * 0.5);
be.scope(() => {
  be.kvWrite(pool, be.fromArray(rand(total * KVH * D, 1), [total, KVH, D], "f32"), be.fromArray(rand(total * KVH * D, 2), [total, KVH, D], "f32"), slots);
  return 0;
});
const q = be.fromArray(rand(T * H * D, 3), [T, H, D], "f32");
const positions = Int32Array.from({ length: T }, (_, i) => ctx + i);
const batch = { blockTables, maxBlocks: numBlocks, seqLens: new Int32Array([total]), tokenSeq: new Int32Array(T), positions };
const call = () => be.scope(() => be.eval(be.pagedAttention(q, pool, batch, { scale: 1 / Math.sqrt(D) })));

for (let i = 0; i < 3; i++) call();
const cpu0 = process.cpuUsage();
const t0 = Bun.nanoseconds();
for (let i = 0; i < calls; i++) call();
const wallUs = (Bun.nanoseconds() - t0) / calls / 1000;
const cpu = process.cpuUsage(cpu0);
const cpuUs = (cpu.user + cpu.system) / calls;
const kvBytes = total * KVH * D * 2 * (dtype === "f32" ? 4 : 2);
console.log(
  `${be.device}: paged attention ctx ${ctx}, ${T} token(s), ${dtype} pool: wall ${(wallUs / 1000).toFixed(2)} ms, CPU ${(cpuUs / 1000).toFixed(2)} ms per call; KV ${(kvBytes / 2 ** 20).toFixed(1)} MiB read at ${(kvBytes / wallUs / 1e3).toFixed(1)} GB/s (wall)`,
);
