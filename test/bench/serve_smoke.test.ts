// The serving benchmark in its seconds-long mode: one client, a few tokens, a tiny random-weight Qwen3 behind a
// real `rmlx serve`. Checks that every part runs and records its figures, and that the prefix cache served the
// whole shared prefix (64 tokens: four full 16-token blocks) on the second request, and from its SSD tier on the
// third, after a restart.
import { Database } from "bun:sqlite";
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "../..");

test("bench serve --smoke runs every part and records its figures", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rmlx-bench-smoke-"));
  try {
    const db = join(dir, "metrics.db");
    const proc = Bun.spawn([process.execPath, join(ROOT, "scripts/bench/index.ts"), "serve", "--smoke", "--source"], {
      cwd: ROOT,
      env: { ...process.env, RMLX_DB: db },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    expect(err).not.toContain("error");
    expect(code).toBe(0);
    expect(out).toMatch(/^1 +[\d.]+ +[\d.]+ +\d+ ms +\d+ ms +[\d.]+ +[\d.]+$/m);
    // f32 keys and values: 2 layers x 2 sides x 1 KV head x 64 dims x 4 bytes a token
    expect(out).toMatch(/^server KV cache: the server's default codec, \d+ blocks, 1024\.0 bytes a token$/m);
    expect(out).toMatch(/TTFT cold \d+ ms \(0 of 80 prompt tokens cached\), RAM hit \d+ ms \(64 cached\): [\d.]+x; after a restart, SSD hit \d+ ms \(64 cached, 64 from disk\)/);
    expect(out).toMatch(/mask alone over a typical answer's [1-9]\d* tokens/);

    const store = new Database(db, { readonly: true });
    const rows = store.query("SELECT name, figure, unit FROM benchmarks").all() as { name: string; figure: number; unit: string }[];
    const runs = store.query("SELECT kind FROM runs").all() as { kind: string }[];
    store.close();
    expect(runs).toEqual([{ kind: "bench" }]);
    const names = rows.map((r) => r.name).sort();
    expect(names).toEqual(
      [
        "json mask mean / plain decode step",
        "json mask per step mean",
        "serve CPU per token",
        "serve TTFT p50",
        "serve TTFT p95",
        "serve aggregate decode",
        "serve decode step json_schema",
        "serve decode step plain",
        "serve json_schema CPU overhead",
        "serve json_schema step overhead",
        "serve prefix TTFT cold",
        "serve prefix TTFT gain",
        "serve prefix TTFT warm",
        "serve prefix TTFT ssd after restart",
        "serve prefix TTFT ssd gain",
      ].sort(),
    );
    for (const r of rows) expect(Number.isFinite(r.figure)).toBe(true);
    for (const r of rows.filter((r) => r.unit !== "%")) expect(r.figure).toBeGreaterThan(0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);

test("bench serve --kv-quant hands the codec to the server, whose prefix cache and SSD tier keep it", async () => {
  const proc = Bun.spawn(
    [process.execPath, join(ROOT, "scripts/bench/index.ts"), "serve", "--smoke", "--source", "--no-record", "--kv-quant", "q8"],
    { cwd: ROOT, stdout: "pipe", stderr: "pipe" },
  );
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  expect(err).not.toContain("error");
  expect(code).toBe(0);
  expect(out).toMatch(/^model: random-weight qwen3 tiny \(h128 l2\) q4 kv q8,/m);
  // q8: 64 one-byte codes and an f16 scale and bias per 64 values, so 68 bytes a row, 4 rows a token
  expect(out).toMatch(/^server KV cache: q8, \d+ blocks, 272\.0 bytes a token$/m);
  expect(out).toMatch(/RAM hit \d+ ms \(64 cached\): [\d.]+x; after a restart, SSD hit \d+ ms \(64 cached, 64 from disk\)/);
}, 120_000);
