import type { Command } from "commander";
import type { Database } from "bun:sqlite";
import { existsSync } from "node:fs";
import { RmlxError } from "../errors.ts";
import { MetricsStore, defaultDbPath } from "../metrics/store.ts";
import { benchAt, latestBench, parseSince, regressions, requests, summary, tpsTrend } from "../metrics/queries.ts";
import { type Cell, csv, table, sparkline } from "../metrics/format.ts";
import { action } from "./action.ts";

interface DbOpts {
  db?: string;
}

function withDb<T>(opts: DbOpts, fn: (db: Database) => T): T {
  const path = defaultDbPath(opts.db);
  if (!existsSync(path)) throw new RmlxError("not_found", `no metrics database at ${path} (nothing recorded yet)`);
  let problem = "";
  const store = MetricsStore.open(path, { warn: (m) => (problem = m) });
  if (!store.enabled) throw new RmlxError("bad_model", problem || `cannot open ${path}`);
  try {
    return fn(store.handle!);
  } finally {
    store.close();
  }
}

function out(s: string): void {
  process.stdout.write(s);
}

const tty = () => Boolean(process.stdout.isTTY);
/** The terminal's width, so that tables fit it (undefined when piped). */
const cols = () => (process.stdout.isTTY ? process.stdout.columns : undefined);
const pct = (v: number | null) => (v === null ? null : `${(v * 100).toFixed(1)}%`);

export function register(program: Command): void {
  const metrics = program
    .command("metrics")
    .description("Read per-request and benchmark figures from the metrics database")
    .option("--db <path>", "metrics database (default: $RMLX_DB or ~/.rmlx/metrics.db)");
  const dbOpts = (): DbOpts => metrics.opts() as DbOpts;

  metrics
    .command("summary")
    .description("Per model: requests, p50/p95 TTFT and decode tokens/s, prefix-cache hit rate (and its SSD tier's part)")
    .option("--since <when>", "a duration (24h, 7d) or a date", "24h")
    .option("--json", "one JSON array")
    .action(
      action((o: { since: string; json?: boolean }) => {
        const since = parseSince(o.since);
        withDb(dbOpts(), (db) => {
          const rows = summary(db, since);
          if (o.json) return out(JSON.stringify(rows, null, 2) + "\n");
          if (rows.length === 0) return out(`no requests since ${new Date(since * 1000).toISOString()}\n`);
          const headers = ["model", "requests", "errors", "ttft p50 ms", "ttft p95 ms", "tok/s p50", "tok/s p95", "cache hit", "from ssd", "trend (tok/s)"];
          out(
            table(
              headers,
              rows.map((r): Cell[] => [
                r.model, r.requests, r.errors, r.ttftP50, r.ttftP95, r.tpsP50, r.tpsP95, pct(r.cacheHitRate), pct(r.diskHitRate),
                sparkline(tpsTrend(db, r.model, since)),
              ]),
              tty(),
              cols(),
            ),
          );
        });
      }),
    );

  metrics
    .command("requests")
    .description("Recent requests, newest first")
    .option("--since <when>", "a duration (24h, 7d) or a date", "24h")
    .option("--limit <n>", "at most this many rows", "50")
    .option("-m, --model <name>", "only this model")
    .option("--json", "one JSON array")
    .option("--csv", "comma-separated values")
    .action(
      action((o: { since: string; limit: string; model?: string; json?: boolean; csv?: boolean }) => {
        const limit = Number(o.limit);
        if (!Number.isInteger(limit) || limit <= 0) throw new RmlxError("invalid_argument", `--limit must be a positive integer, got '${o.limit}'`);
        withDb(dbOpts(), (db) => {
          const rows = requests(db, parseSince(o.since), limit, o.model);
          if (o.json) return out(JSON.stringify(rows, null, 2) + "\n");
          const headers = ["time", "model", "api", "status", "prompt", "cached", "generated", "ttft ms", "tok/s", "finish"];
          const cells = rows.map((r): Cell[] => [
            new Date(r.started_at * 1000).toISOString().replace("T", " ").slice(0, 19), r.model, r.api, r.status,
            r.prompt_tokens, r.cached_tokens, r.generated_tokens, r.ttft_ms, r.decode_tps, r.finish_reason,
          ]);
          out(o.csv ? csv(headers, cells) : table(headers, cells, tty(), cols()));
        });
      }),
    );

  metrics
    .command("bench")
    .description("The latest figure of every benchmark, with the peer's figure and our ratio to it")
    .option("--json", "one JSON array")
    .action(
      action((o: { json?: boolean }) => {
        withDb(dbOpts(), (db) => {
          const rows = latestBench(db);
          if (o.json) return out(JSON.stringify(rows, null, 2) + "\n");
          const ratio = (r: (typeof rows)[number]) =>
            r.peer_figure ? (r.higher_is_better ? r.figure / r.peer_figure : r.peer_figure / r.figure) : null;
          out(
            table(
              ["benchmark", "shape", "figure", "unit", "peer", "peer figure", "ratio", "version"],
              rows.map((r): Cell[] => [r.name, r.shape, r.figure, r.unit, r.peer_name, r.peer_figure, ratio(r)?.toFixed(2), r.version]),
              tty(),
              cols(),
            ),
          );
        });
      }),
    );

  metrics
    .command("compare <a> <b>")
    .description("Benchmark figures of two runs (run id) or versions side by side")
    .action(
      action((a: string, b: string) => {
        withDb(dbOpts(), (db) => {
          const A = benchAt(db, a);
          const B = benchAt(db, b);
          const keys = [...new Set([...A.keys(), ...B.keys()])].sort();
          out(
            table(
              ["benchmark", "shape", a, b, "unit", "change"],
              keys.map((k): Cell[] => {
                const x = A.get(k);
                const y = B.get(k);
                const [name, shape] = k.split("|");
                const change = x && y && x.figure !== 0 ? `${(((y.figure - x.figure) / Math.abs(x.figure)) * 100).toFixed(1)}%` : null;
                return [name, shape, x?.figure, y?.figure, (x ?? y)!.unit, change];
              }),
              tty(),
              cols(),
            ),
          );
        });
      }),
    );

  metrics
    .command("regress")
    .description("Exit 1 when a latest benchmark figure is worse than the baseline's by more than the threshold")
    .requiredOption("--baseline <ref>", "a run id or an rmlx version")
    .option("--threshold <pct>", "allowed worsening in percent", "5")
    .action(
      action((o: { baseline: string; threshold: string }) => {
        const threshold = Number(o.threshold);
        if (!Number.isFinite(threshold) || threshold < 0) throw new RmlxError("invalid_argument", `--threshold must be a non-negative number, got '${o.threshold}'`);
        const found = withDb(dbOpts(), (db) => regressions(benchAt(db, o.baseline), latestBench(db), threshold));
        if (found.length === 0) return out(`no figure worse than ${o.baseline} by more than ${threshold}%\n`);
        out(
          table(
            ["benchmark", "baseline", "current", "unit", "worse by"],
            found.map((r): Cell[] => [r.key.replace("|", " "), r.baseline, r.current, r.unit, `${r.worsePct.toFixed(1)}%`]),
            tty(),
            cols(),
          ),
        );
        process.exitCode = 1;
      }),
    );

  metrics
    .command("path")
    .description("Print where the metrics database is")
    .action(() => out(defaultDbPath(dbOpts().db) + "\n"));

  metrics
    .command("vacuum")
    .description("Checkpoint the write-ahead log and compact the database")
    .action(
      action(() => {
        withDb(dbOpts(), (db) => {
          db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
          db.exec("VACUUM");
        });
        out("vacuumed\n");
      }),
    );
}
