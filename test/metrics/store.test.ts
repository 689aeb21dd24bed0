import { afterAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLIENT_CLOSED_STATUS, MetricsStore, type RequestRow } from "../../src/metrics/store.ts";
import { benchAt, latestBench, parseSince, regressions, summary } from "../../src/metrics/queries.ts";
import { sparkline, table } from "../../src/metrics/format.ts";
import { MIGRATIONS } from "../../src/metrics/schema.ts";

const dir = mkdtempSync(join(tmpdir(), "rmlx-metrics-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function row(over: Partial<RequestRow> = {}): RequestRow {
  const t = Date.now();
  return { model: "m", api: "openai", startedAt: t, endedAt: t + 10, promptTokens: 10, cachedTokens: 0, generatedTokens: 5, status: 200, ...over };
}

describe("metrics store", () => {
  test("creates the schema and records batched request rows", () => {
    const path = join(dir, "a.db");
    const s = MetricsStore.open(path);
    expect(s.enabled).toBe(true);
    s.startRun({ kind: "serve", model: "m" });
    for (let i = 1; i <= 100; i++) s.recordRequest(row({ ttftMs: i, decodeTps: 1000 - i, cachedTokens: i % 2 ? 10 : 0, cachedDiskTokens: i % 2 ? 4 : 0 }));
    s.close();
    const db = new Database(path, { readonly: true });
    expect((db.query("SELECT count(*) AS n FROM requests").get() as { n: number }).n).toBe(100);
    expect((db.query("PRAGMA user_version").get() as { user_version: number }).user_version).toBe(MIGRATIONS.length);
    const [m] = summary(db, 0);
    expect(m!.requests).toBe(100);
    // nearest-rank over 1..100: index floor(99 * p)
    expect(m!.ttftP50).toBe(50);
    expect(m!.ttftP95).toBe(95);
    expect(m!.cacheHitRate).toBeCloseTo(0.5, 6);
    expect(m!.diskHitRate).toBeCloseTo(0.2, 6);
    db.close();
  });

  test("a database of the first schema is migrated in place and keeps its rows; read-only it still summarises", () => {
    const path = join(dir, "v1.db");
    const old = new Database(path, { create: true });
    old.exec(MIGRATIONS[0]!);
    old.exec("PRAGMA user_version = 1");
    old.query("INSERT INTO requests (model, api, started_at, ended_at, prompt_tokens, cached_tokens, status) VALUES ('m', 'openai', 1, 2, 10, 5, 200)").run();
    old.close();
    const ro = new Database(path, { readonly: true });
    expect(summary(ro, 0)[0]!.diskHitRate).toBe(0);
    ro.close();
    const s = MetricsStore.open(path);
    s.recordRequest(row({ cachedTokens: 10, cachedDiskTokens: 10 }));
    s.close();
    const db = new Database(path, { readonly: true });
    expect((db.query("PRAGMA user_version").get() as { user_version: number }).user_version).toBe(MIGRATIONS.length);
    const [m] = summary(db, 0);
    expect(m!.requests).toBe(2);
    expect(m!.cachedTokens).toBe(15);
    expect(m!.cachedDiskTokens).toBe(10);
    db.close();
  });

  test("the summary's errors leave out requests whose client went away", () => {
    const path = join(dir, "errors.db");
    const s = MetricsStore.open(path);
    s.startRun({ kind: "serve", model: "m" });
    for (const status of [200, 200, CLIENT_CLOSED_STATUS, 400, 500]) s.recordRequest(row({ status }));
    s.close();
    const db = new Database(path, { readonly: true });
    const [m] = summary(db, 0);
    expect(m!.requests).toBe(5);
    expect(m!.errors).toBe(2);
    db.close();
  });

  test("a database of the first schema gains the speculative columns and keeps its rows", () => {
    const path = join(dir, "v1.db");
    const old = new Database(path, { create: true });
    old.exec(MIGRATIONS[0]!);
    old.exec("PRAGMA user_version = 1");
    old.query("INSERT INTO requests (model, api, started_at, ended_at, status) VALUES ('m', 'openai', 1, 2, 200)").run();
    old.close();
    const s = MetricsStore.open(path);
    s.recordRequest(row({ draftTokens: 12, acceptedTokens: 9 }));
    s.close();
    const db = new Database(path, { readonly: true });
    const rows = db.query("SELECT draft_tokens, accepted_tokens FROM requests ORDER BY id").all();
    expect(rows).toEqual([
      { draft_tokens: null, accepted_tokens: null },
      { draft_tokens: 12, accepted_tokens: 9 },
    ]);
    db.close();
  });

  test("reopening an up-to-date database keeps its rows", () => {
    const path = join(dir, "a.db");
    const s = MetricsStore.open(path);
    s.recordRequest(row());
    s.close();
    const db = new Database(path, { readonly: true });
    expect((db.query("SELECT count(*) AS n FROM requests").get() as { n: number }).n).toBe(101);
    db.close();
  });

  test("a corrupt file gives one warning and a disabled store that accepts writes silently", () => {
    const path = join(dir, "corrupt.db");
    writeFileSync(path, "this is not a sqlite database at all, just text that is long enough".repeat(20));
    const warnings: string[] = [];
    const s = MetricsStore.open(path, { warn: (m) => warnings.push(m) });
    expect(s.enabled).toBe(false);
    s.recordRequest(row());
    s.flush();
    expect(warnings.length).toBe(1);
    expect(warnings[0]).toContain(path);
  });

  // Root writes through file modes, so the case cannot be made there.
  test.skipIf(process.getuid?.() === 0)("a read-only database file disables metrics with a warning", () => {
    const path = join(dir, "ro.db");
    MetricsStore.open(path).close();
    chmodSync(path, 0o444);
    const warnings: string[] = [];
    const s = MetricsStore.open(path, { warn: (m) => warnings.push(m) });
    s.startRun({ kind: "serve" });
    expect(s.enabled).toBe(false);
    expect(warnings.length).toBe(1);
  });

  test("a database locked by another writer disables metrics instead of hanging", () => {
    const path = join(dir, "locked.db");
    MetricsStore.open(path).close();
    const holder = new Database(path);
    holder.exec("PRAGMA journal_mode = WAL; BEGIN EXCLUSIVE; INSERT INTO runs (started_at, version, kind) VALUES (0, 'x', 'bench');");
    const warnings: string[] = [];
    const s = MetricsStore.open(path, { warn: (m) => warnings.push(m), busyTimeoutMs: 50 });
    s.recordRequest(row());
    s.flush();
    expect(s.enabled).toBe(false);
    expect(warnings[0]).toContain("locked");
    holder.exec("ROLLBACK");
    holder.close();
  });

  test("two processes writing at once lose nothing", async () => {
    const path = join(dir, "concurrent.db");
    const script = join(dir, "writer.ts");
    writeFileSync(
      script,
      `import { MetricsStore } from ${JSON.stringify(join(import.meta.dir, "../../src/metrics/store.ts"))};
       const s = MetricsStore.open(process.argv[2]);
       s.startRun({ kind: "bench" });
       for (let i = 0; i < 2000; i++) {
         s.recordRequest({ model: process.argv[3], api: "openai", startedAt: Date.now(), endedAt: Date.now(), promptTokens: 1, cachedTokens: 0, generatedTokens: 1, status: 200 });
         if (i % 100 === 0) await Bun.sleep(1);
       }
       s.close();
       if (!s.enabled && process.argv[4]) process.exit(3);`,
    );
    const procs = ["a", "b", "c"].map((m) => Bun.spawn([process.execPath, script, path, m], { stderr: "pipe" }));
    const codes = await Promise.all(procs.map((p) => p.exited));
    expect(codes).toEqual([0, 0, 0]);
    const db = new Database(path, { readonly: true });
    const counts = db.query("SELECT model, count(*) AS n FROM requests GROUP BY model ORDER BY model").all();
    expect(counts).toEqual([
      { model: "a", n: 2000 },
      { model: "b", n: 2000 },
      { model: "c", n: 2000 },
    ]);
    db.close();
  });
});

describe("benchmark queries", () => {
  test("latest figures, comparison by run and regressions in both directions", () => {
    const path = join(dir, "bench.db");
    const s = MetricsStore.open(path);
    const run1 = s.startRun({ kind: "bench" })!;
    s.recordBenchmarks([
      { name: "decode", shape: "1x4096x4096", figure: 100, unit: "GB/s", peerName: "llama.cpp", peerFigure: 80 },
      { name: "step overhead", figure: 10, unit: "us", higherIsBetter: false },
    ]);
    s.startRun({ kind: "bench" });
    s.recordBenchmarks([
      { name: "decode", shape: "1x4096x4096", figure: 90, unit: "GB/s" },
      { name: "step overhead", figure: 10.4, unit: "us", higherIsBetter: false },
    ]);
    const db = s.handle!;
    const latest = latestBench(db);
    expect(latest.map((b) => b.figure)).toEqual([90, 10.4]);
    const base = benchAt(db, String(run1));
    const r5 = regressions(base, latest, 5);
    expect(r5.map((r) => r.key)).toEqual(["decode|1x4096x4096"]);
    expect(r5[0]!.worsePct).toBeCloseTo(10, 6);
    expect(regressions(base, latest, 3).map((r) => r.key)).toEqual(["decode|1x4096x4096", "step overhead|"]);
    expect(() => benchAt(db, "999")).toThrow("no benchmark figures");
    s.close();
  });
});

describe("formatting", () => {
  test("parseSince reads durations and dates", () => {
    expect(parseSince("2h", 10000)).toBe(10000 - 7200);
    expect(parseSince("2026-01-01T00:00:00Z")).toBe(Date.parse("2026-01-01T00:00:00Z") / 1000);
    expect(() => parseSince("yesterday")).toThrow("--since");
  });

  test("tables align in a terminal and are tab-separated when piped", () => {
    expect(table(["a", "n"], [["x", 1], ["long", 22]], false)).toBe("a\tn\nx\t1\nlong\t22\n");
    expect(table(["a", "n"], [["x", 1], ["long", 22]], true)).toBe("a      n\n----  --\nx      1\nlong  22\n");
  });

  test("sparkline spans min to max", () => {
    expect(sparkline([1, 2, 3, Number.NaN, 8])).toBe("▁▂▃ █");
  });
});
