import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MetricsStore } from "../../src/metrics/store.ts";

const BIN = join(import.meta.dir, "..", "..", "dist", "rmlx");
const dir = mkdtempSync(join(tmpdir(), "rmlx-metrics-cli-"));
const db = join(dir, "m.db");

function run(...args: string[]) {
  const p = Bun.spawnSync([BIN, "metrics", "--db", db, ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

beforeAll(() => {
  const s = MetricsStore.open(db);
  s.startRun({ kind: "serve", model: "tiny" });
  const now = Date.now();
  for (let i = 0; i < 10; i++) {
    s.recordRequest({ model: "tiny", api: i % 2 ? "anthropic" : "openai", startedAt: now - i * 1000, endedAt: now, promptTokens: 20, cachedTokens: 10, generatedTokens: 8, ttftMs: 10 + i, decodeTps: 50, finishReason: "stop", status: 200 });
  }
  s.startRun({ kind: "bench" });
  s.recordBenchmarks([{ name: "decode", shape: "q4", figure: 100, unit: "tok/s" }]);
  s.startRun({ kind: "bench" });
  s.recordBenchmarks([{ name: "decode", shape: "q4", figure: 50, unit: "tok/s" }]);
  s.close();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("rmlx metrics", () => {
  test("path prints the --db path", () => {
    expect(run("path").out.trim()).toBe(db);
  });

  test("summary --json reports per-model figures", () => {
    const r = run("summary", "--json");
    expect(r.code).toBe(0);
    const [m] = JSON.parse(r.out);
    expect(m.model).toBe("tiny");
    expect(m.requests).toBe(10);
    expect(m.cacheHitRate).toBeCloseTo(0.5, 6);
  });

  test("requests as plain text when piped and as CSV", () => {
    const plain = run("requests");
    expect(plain.out.split("\n")[0]).toBe("time\tmodel\tapi\tstatus\tprompt\tcached\tgenerated\tttft ms\ttok/s\tfinish");
    expect(plain.out.trim().split("\n").length).toBe(11);
    const c = run("requests", "--csv", "--limit", "3");
    expect(c.out.trim().split("\n").length).toBe(4);
    expect(c.out.split("\n")[1]).toContain(",tiny,");
  });

  test("regress exits 1 when a figure fell beyond the threshold, 0 otherwise", () => {
    expect(run("regress", "--baseline", "2", "--threshold", "10").code).toBe(1);
    expect(run("regress", "--baseline", "3", "--threshold", "10").code).toBe(0);
  });

  test("bad input: one line, exit 2", () => {
    const r = run("requests", "--limit", "-4");
    expect(r.code).toBe(2);
    expect(r.err.trim().split("\n").length).toBe(1);
    const missing = Bun.spawnSync([BIN, "metrics", "--db", join(dir, "nope.db"), "summary"], { stderr: "pipe" });
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr.toString()).toContain("no metrics database");
  });
});
