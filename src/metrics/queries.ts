// Read-side queries behind `rmlx metrics`. Percentiles are computed in SQL over ordered windows so that large
// tables are never loaded into JavaScript.
import type { Database } from "bun:sqlite";
import { RmlxError } from "../errors.ts";
import { CLIENT_CLOSED_STATUS } from "./store.ts";

export interface ModelSummary {
  model: string;
  requests: number;
  /** Requests answered with an error status; those whose client went away are not errors of the server. */
  errors: number;
  promptTokens: number;
  generatedTokens: number;
  cachedTokens: number;
  ttftP50: number | null;
  ttftP95: number | null;
  tpsP50: number | null;
  tpsP95: number | null;
  /** Cached prompt tokens over all prompt tokens. */
  cacheHitRate: number | null;
  /** Of the cached prompt tokens, those read back from the SSD tier. */
  cachedDiskTokens: number;
  /** Prompt tokens read back from the SSD tier over all prompt tokens. */
  diskHitRate: number | null;
}

/** Whether a table has a column: a database written by an older rmlx and opened read-only may lack newer ones. */
function hasColumn(db: Database, table: string, column: string): boolean {
  return (db.query(`PRAGMA table_info(${table})`).all() as { name: string }[]).some((c) => c.name === column);
}

/** Parses "24h", "7d", "30m", "90s" or an ISO date into epoch seconds. */
export function parseSince(since: string, now = Date.now() / 1000): number {
  const m = /^(\d+(?:\.\d+)?)\s*([smhdw])$/.exec(since.trim());
  if (m) {
    const unit = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[m[2] as "s" | "m" | "h" | "d" | "w"];
    return now - Number(m[1]) * unit;
  }
  const t = Date.parse(since);
  if (Number.isNaN(t)) throw new RmlxError("invalid_argument", `--since: '${since}' is neither a duration (24h, 7d) nor a date`);
  return t / 1000;
}

function percentile(db: Database, column: string, model: string, since: number, p: number): number | null {
  const row = db
    .query(
      `SELECT ${column} AS v FROM requests
       WHERE model = ? AND started_at >= ? AND ${column} IS NOT NULL
       ORDER BY ${column}
       LIMIT 1 OFFSET (SELECT CAST((count(*) - 1) * ? AS INTEGER) FROM requests
                       WHERE model = ? AND started_at >= ? AND ${column} IS NOT NULL)`,
    )
    .get(model, since, p, model, since) as { v: number } | null;
  return row?.v ?? null;
}

export function summary(db: Database, since: number): ModelSummary[] {
  const disk = hasColumn(db, "requests", "cached_disk_tokens") ? "sum(cached_disk_tokens)" : "0";
  const rows = db
    .query(
      `SELECT model, count(*) AS requests, sum(status >= 400 AND status != ${CLIENT_CLOSED_STATUS}) AS errors,
              sum(prompt_tokens) AS prompt, sum(generated_tokens) AS generated, sum(cached_tokens) AS cached,
              ${disk} AS disk
       FROM requests WHERE started_at >= ? GROUP BY model ORDER BY model`,
    )
    .all(since) as { model: string; requests: number; errors: number; prompt: number; generated: number; cached: number; disk: number }[];
  return rows.map((r) => ({
    model: r.model,
    requests: r.requests,
    errors: r.errors,
    promptTokens: r.prompt,
    generatedTokens: r.generated,
    cachedTokens: r.cached,
    ttftP50: percentile(db, "ttft_ms", r.model, since, 0.5),
    ttftP95: percentile(db, "ttft_ms", r.model, since, 0.95),
    tpsP50: percentile(db, "decode_tps", r.model, since, 0.5),
    tpsP95: percentile(db, "decode_tps", r.model, since, 0.95),
    cacheHitRate: r.prompt > 0 ? r.cached / r.prompt : null,
    cachedDiskTokens: r.disk,
    diskHitRate: r.prompt > 0 ? r.disk / r.prompt : null,
  }));
}

/** Decode tokens/s per hour bucket, oldest first: the trend behind the summary's sparkline. */
export function tpsTrend(db: Database, model: string, since: number, buckets = 24): number[] {
  const now = Date.now() / 1000;
  const width = Math.max((now - since) / buckets, 1);
  const rows = db
    .query(
      `SELECT CAST((started_at - ?) / ? AS INTEGER) AS b, avg(decode_tps) AS v FROM requests
       WHERE model = ? AND started_at >= ? AND decode_tps IS NOT NULL GROUP BY b`,
    )
    .all(since, width, model, since) as { b: number; v: number }[];
  const out = new Array<number>(buckets).fill(Number.NaN);
  for (const r of rows) if (r.b >= 0 && r.b < buckets) out[r.b] = r.v;
  return out;
}

export interface RequestRecord {
  started_at: number;
  model: string;
  api: string;
  status: number;
  prompt_tokens: number;
  cached_tokens: number;
  generated_tokens: number;
  ttft_ms: number | null;
  decode_tps: number | null;
  finish_reason: string | null;
}

export function requests(db: Database, since: number, limit: number, model?: string): RequestRecord[] {
  return db
    .query(
      `SELECT started_at, model, api, status, prompt_tokens, cached_tokens, generated_tokens, ttft_ms, decode_tps,
              finish_reason
       FROM requests WHERE started_at >= ? AND (? IS NULL OR model = ?) ORDER BY started_at DESC LIMIT ?`,
    )
    .all(since, model ?? null, model ?? null, limit) as RequestRecord[];
}

export interface BenchFigure {
  name: string;
  shape: string;
  figure: number;
  unit: string;
  peer_name: string | null;
  peer_figure: number | null;
  higher_is_better: number;
  created_at: number;
  version: string | null;
}

/** The newest figure of every (name, shape). */
export function latestBench(db: Database): BenchFigure[] {
  return db
    .query(
      `SELECT b.name, b.shape, b.figure, b.unit, b.peer_name, b.peer_figure, b.higher_is_better, b.created_at,
              r.version
       FROM benchmarks b LEFT JOIN runs r ON r.id = b.run_id
       WHERE b.id IN (SELECT max(id) FROM benchmarks GROUP BY name, shape)
       ORDER BY b.name, b.shape`,
    )
    .all() as BenchFigure[];
}

/**
 * Benchmark figures as of a reference: a run id ("run:12" or "12") or an rmlx version ("v0.1.0" / "0.1.0"),
 * keyed by "name|shape" (the newest figure per key within that run or version).
 */
export function benchAt(db: Database, ref: string): Map<string, BenchFigure> {
  const runId = /^(?:run:)?(\d+)$/.exec(ref);
  const where = runId ? "b.run_id = ?" : "r.version = ?";
  const arg = runId ? Number(runId[1]) : ref.replace(/^v/, "");
  const rows = db
    .query(
      `SELECT b.name, b.shape, b.figure, b.unit, b.peer_name, b.peer_figure, b.higher_is_better, b.created_at,
              r.version
       FROM benchmarks b LEFT JOIN runs r ON r.id = b.run_id WHERE ${where} ORDER BY b.id`,
    )
    .all(arg) as BenchFigure[];
  if (rows.length === 0) throw new RmlxError("not_found", `no benchmark figures for '${ref}' (give a run id or a version)`);
  const out = new Map<string, BenchFigure>();
  for (const r of rows) out.set(`${r.name}|${r.shape}`, r);
  return out;
}

export interface Regression {
  key: string;
  baseline: number;
  current: number;
  unit: string;
  /** Percent worse than the baseline (positive = worse). */
  worsePct: number;
}

/** Figures of the latest benchmarks that are worse than the baseline's by more than thresholdPct. */
export function regressions(baseline: Map<string, BenchFigure>, current: BenchFigure[], thresholdPct: number): Regression[] {
  const out: Regression[] = [];
  for (const c of current) {
    const key = `${c.name}|${c.shape}`;
    const b = baseline.get(key);
    if (!b || b.figure === 0) continue;
    const change = ((c.figure - b.figure) / Math.abs(b.figure)) * 100;
    const worsePct = c.higher_is_better ? -change : change;
    if (worsePct > thresholdPct) out.push({ key, baseline: b.figure, current: c.figure, unit: c.unit, worsePct });
  }
  return out;
}
