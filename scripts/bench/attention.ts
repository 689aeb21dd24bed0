// Paged attention throughput through the native backend: one layer of a Qwen3-0.6B-like shape (16 query heads,
// 8 KV heads, head dim 128, 16-token blocks). Reports wall and CPU time per call (CPU time is steadier on a busy
// machine; with RMLX_THREADS=1 it is the kernel's own cost).
// Usage: bun run bench attention [context=4096] [tokens=1] [pool codecs=f32] [calls=20] [rounds=1] [layers=1]
// layers > 1: that many pools per codec, called in turn, as a model's layers are; with enough of them each call
// reads its KV from memory rather than from the last call's cache, the case a decode step is in.
// Several codecs (comma-separated, e.g. f16,q8,q4) are timed in alternation, `rounds` times each (calls per round),
// and each reports the median and the range of its per-round times: on a shared machine A/B in one process is the
// comparison to trust.
import { NativeBackend } from "../../src/backend/native/backend.ts";
import { type KvFormat, kvElementBytes, kvLayerFormat, parseKvCodec } from "../../src/quant/kv_codec.ts";

const ctx = Number(process.argv[2] ?? 4096);
const T = Number(process.argv[3] ?? 1);
const codecs = (process.argv[4] ?? "f32").split(",");
const calls = Number(process.argv[5] ?? 20);
const rounds = Number(process.argv[6] ?? 1);
const layers = Math.max(1, Number(process.argv[7] ?? 1));
const [H, KVH, D, BS] = [16, 8, 128, 16];

const be = new NativeBackend();
const total = ctx + T;
const numBlocks = Math.ceil(total / BS);
const blockTables = Int32Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
const slots = Int32Array.from({ length: total }, (_, p) => blockTables[Math.floor(p / BS)]! * BS + (p % BS));
const rand = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + seed) * 0.5);
const q = be.fromArray(rand(T * H * D, 3), [T, H, D], "f32");
// Prefill-shaped calls (T > 1) attend T consecutive positions ending at the last one.
const positions = Int32Array.from({ length: T }, (_, i) => ctx + i);
const batch = { blockTables, maxBlocks: numBlocks, seqLens: new Int32Array([total]), tokenSeq: new Int32Array(T), positions };

const runs = codecs.map((name) => {
  const format: KvFormat = kvLayerFormat(parseKvCodec(name), D);
  const pools = Array.from({ length: layers }, () => {
    const pool = be.createKvPool(numBlocks, BS, KVH, D, format);
    be.scope(() => {
      be.kvWrite(pool, be.fromArray(rand(total * KVH * D, 1), [total, KVH, D], "f32"), be.fromArray(rand(total * KVH * D, 2), [total, KVH, D], "f32"), slots);
      return 0;
    });
    return pool;
  });
  const kvBytes = total * KVH * (kvElementBytes(format.k, D) + kvElementBytes(format.v, D));
  let next = 0;
  const call = () => {
    const pool = pools[next++ % layers]!;
    return be.scope(() => be.eval(be.pagedAttention(q, pool, batch, { scale: 1 / Math.sqrt(D) })));
  };
  for (let i = 0; i < 3; i++) call();
  return { name, call, kvBytes, wall: [] as number[], cpu: [] as number[] };
});

for (let r = 0; r < rounds; r++) {
  for (const run of runs) {
    const cpu0 = process.cpuUsage();
    const t0 = Bun.nanoseconds();
    for (let i = 0; i < calls; i++) run.call();
    run.wall.push((Bun.nanoseconds() - t0) / calls / 1000);
    const cpu = process.cpuUsage(cpu0);
    run.cpu.push((cpu.user + cpu.system) / calls);
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const ms = (us: number) => (us / 1000).toFixed(3);
const base = median(runs[0]!.wall);
for (const run of runs) {
  const wallUs = median(run.wall);
  const cpuUs = median(run.cpu);
  console.log(
    `${be.device}: paged attention ctx ${ctx}, ${T} token(s), ${run.name.padEnd(5)} pool: wall ${ms(wallUs)} ms (${ms(Math.min(...run.wall))}-${ms(Math.max(...run.wall))}, ${(wallUs / base).toFixed(2)}x ${runs[0]!.name}), CPU ${ms(cpuUs)} ms per call; KV ${(run.kvBytes / 2 ** 20).toFixed(1)} MiB read at ${(run.kvBytes / wallUs / 1e3).toFixed(1)} GB/s (wall)`,
  );
}
