// The metrics store on bun:sqlite. Writers never block the caller: rows are queued and inserted in one
// transaction per flush. A database that cannot be opened or written (corrupt, locked, read-only) turns the
// store off with one warning; serving goes on without metrics.
import { Database } from "bun:sqlite";
import { mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { VERSION } from "../version.ts";
import { MIGRATIONS } from "./schema.ts";

export interface RunInfo {
  kind: "serve" | "bench" | "generate" | "convert";
  backend?: string;
  device?: string;
  model?: string;
  quantization?: string;
}

/** The status of a request whose client went away before it finished (nginx's 499, "client closed request"). */
export const CLIENT_CLOSED_STATUS = 499;

export interface RequestRow {
  requestId?: string;
  model: string;
  api: string;
  startedAt: number;
  endedAt: number;
  promptTokens: number;
  /** Prompt tokens from the prefix cache, RAM and SSD tier together. */
  cachedTokens: number;
  /** Of cachedTokens, those read back from the SSD tier. */
  cachedDiskTokens?: number;
  generatedTokens: number;
  ttftMs?: number;
  decodeTps?: number;
  promptTps?: number;
  finishReason?: string;
  status: number;
  /** With a draft model: tokens it proposed and how many were kept. */
  draftTokens?: number;
  acceptedTokens?: number;
}

export interface BenchmarkRow {
  name: string;
  shape?: string;
  figure: number;
  unit: string;
  peerName?: string;
  peerFigure?: number;
  higherIsBetter?: boolean;
}

/** Where the database lives: --db, then RMLX_DB, then ~/.rmlx/metrics.db. */
export function defaultDbPath(flag?: string): string {
  return flag || process.env.RMLX_DB || join(homedir(), ".rmlx", "metrics.db");
}

const FLUSH_MS = 500;
const FLUSH_ROWS = 256;

export class MetricsStore {
  private db: Database | null = null;
  private runId: number | null = null;
  private queue: RequestRow[] = [];
  private timer: ReturnType<typeof setTimeout> | null = null;
  private warned = false;

  private constructor(
    readonly path: string,
    private readonly warn: (msg: string) => void,
  ) {}

  /** Opens (creating and migrating) the database; on any failure returns a disabled store after one warning. */
  static open(
    path: string,
    opts: { readonly?: boolean; warn?: (msg: string) => void; busyTimeoutMs?: number } = {},
  ): MetricsStore {
    const store = new MetricsStore(path, opts.warn ?? ((m) => process.stderr.write(`rmlx: warning: ${m}\n`)));
    try {
      if (!opts.readonly) mkdirSync(dirname(path), { recursive: true });
      const db = opts.readonly ? new Database(path, { readonly: true }) : new Database(path, { create: true });
      db.exec(`PRAGMA busy_timeout = ${Math.max(0, Math.floor(opts.busyTimeoutMs ?? 5000))}`);
      if (!opts.readonly) {
        db.exec("PRAGMA journal_mode = WAL");
        migrate(db);
      }
      // Touch the schema so a corrupt file is found now, not on the first insert.
      db.query("SELECT count(*) FROM runs").get();
      store.db = db;
    } catch (err) {
      store.disable(err);
    }
    return store;
  }

  /** A store that records nothing (--no-metrics). */
  static disabled(): MetricsStore {
    return new MetricsStore("", () => {});
  }

  get enabled(): boolean {
    return this.db !== null;
  }

  /** The database handle for queries (readers), or null when disabled. */
  get handle(): Database | null {
    return this.db;
  }

  startRun(info: RunInfo): number | null {
    const id = this.guard(() => {
      const row = this.db!.query(
        `INSERT INTO runs (started_at, version, kind, backend, device, model, quantization)
         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id`,
      ).get(Date.now() / 1000, VERSION, info.kind, info.backend ?? null, info.device ?? null, info.model ?? null, info.quantization ?? null) as { id: number };
      return row.id;
    });
    this.runId = id ?? null;
    return this.runId;
  }

  /** Queues one request row; written within FLUSH_MS, off the caller's path. */
  recordRequest(row: RequestRow): void {
    if (!this.db) return;
    this.queue.push(row);
    if (this.queue.length >= FLUSH_ROWS) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), FLUSH_MS);
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (!this.db || this.queue.length === 0) return;
    const rows = this.queue;
    this.queue = [];
    this.guard(() => {
      const insert = this.db!.query(
        `INSERT INTO requests (run_id, request_id, model, api, started_at, ended_at, prompt_tokens, cached_tokens,
           cached_disk_tokens, generated_tokens, ttft_ms, decode_tps, prompt_tps, finish_reason, status, draft_tokens,
           accepted_tokens)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      );
      this.db!.transaction(() => {
        for (const r of rows) {
          insert.run(
            this.runId, r.requestId ?? null, r.model, r.api, r.startedAt / 1000, r.endedAt / 1000, r.promptTokens,
            r.cachedTokens, r.cachedDiskTokens ?? 0, r.generatedTokens, r.ttftMs ?? null, r.decodeTps ?? null, r.promptTps ?? null,
            r.finishReason ?? null, r.status, r.draftTokens ?? null, r.acceptedTokens ?? null,
          );
        }
      })();
    });
  }

  recordBenchmarks(rows: BenchmarkRow[]): void {
    this.guard(() => {
      const insert = this.db!.query(
        `INSERT INTO benchmarks (run_id, created_at, name, shape, figure, unit, peer_name, peer_figure, higher_is_better)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      );
      const now = Date.now() / 1000;
      this.db!.transaction(() => {
        for (const b of rows) {
          insert.run(this.runId, now, b.name, b.shape ?? "", b.figure, b.unit, b.peerName ?? null, b.peerFigure ?? null, b.higherIsBetter === false ? 0 : 1);
        }
      })();
    });
  }

  close(): void {
    this.flush();
    this.db?.close();
    this.db = null;
  }

  private guard<T>(fn: () => T): T | undefined {
    if (!this.db) return undefined;
    try {
      return fn();
    } catch (err) {
      this.disable(err);
      return undefined;
    }
  }

  private disable(err: unknown): void {
    try {
      this.db?.close();
    } catch {
      // already unusable; nothing more to release
    }
    this.db = null;
    this.queue = [];
    if (!this.warned && this.path) {
      this.warned = true;
      const msg = err instanceof Error ? err.message : String(err);
      this.warn(`metrics database ${this.path} unusable (${msg}); metrics are off`);
    }
  }
}

function schemaVersion(db: Database): number {
  return (db.query("PRAGMA user_version").get() as { user_version: number }).user_version;
}

function migrate(db: Database): void {
  if (schemaVersion(db) >= MIGRATIONS.length) return;
  // IMMEDIATE takes the write lock before re-reading the version, so two processes opening a new file at once
  // run each migration exactly once.
  db.transaction(() => {
    for (let v = schemaVersion(db); v < MIGRATIONS.length; v++) db.exec(MIGRATIONS[v]!);
    db.exec(`PRAGMA user_version = ${MIGRATIONS.length}`);
  }).immediate();
}
