// The SSD tier's index: which block files a directory holds, their sizes and when each was last used, in SQLite
// (bun:sqlite, WAL: every model's tier in a process shares the file). Least recently used blocks go first when a
// new one would pass the budget, whichever model they belong to.
import { Database } from "bun:sqlite";

const MIGRATIONS: readonly string[] = [
  `CREATE TABLE blocks (
     ns TEXT NOT NULL,
     hash TEXT NOT NULL,
     bytes INTEGER NOT NULL,
     used INTEGER NOT NULL,
     PRIMARY KEY (ns, hash)
   ) WITHOUT ROWID;
   CREATE INDEX blocks_used ON blocks(used);`,
];

export interface IndexedBlock {
  ns: string;
  hash: string;
  bytes: number;
}

export class SsdIndex {
  private readonly db: Database;
  /** Last-use stamps: milliseconds, made strictly increasing within the process so that LRU order is exact. */
  private stamp = 0;

  constructor(path: string) {
    this.db = new Database(path, { create: true });
    this.db.exec("PRAGMA busy_timeout = 5000");
    this.db.exec("PRAGMA journal_mode = WAL");
    this.db.exec("PRAGMA synchronous = NORMAL");
    const version = () => (this.db.query("PRAGMA user_version").get() as { user_version: number }).user_version;
    if (version() < MIGRATIONS.length) {
      this.db.transaction(() => {
        for (let v = version(); v < MIGRATIONS.length; v++) this.db.exec(MIGRATIONS[v]!);
        this.db.exec(`PRAGMA user_version = ${MIGRATIONS.length}`);
      }).immediate();
    }
  }

  /**
   * A use stamp later than every one in the file: the clock, or one past the newest stamp where the clock has not
   * moved on. Every index open on the directory (one per model) orders its uses after the others' through the
   * file, not through a counter of its own (two of them within one millisecond made LRU order a coin toss).
   */
  private now(): number {
    const newest = (this.db.query("SELECT MAX(used) AS m FROM blocks").get() as { m: number | null }).m ?? 0;
    this.stamp = Math.max(this.stamp + 1, newest + 1, Date.now());
    return this.stamp;
  }

  /** The hashes held for one namespace. */
  hashes(ns: string): string[] {
    return (this.db.query("SELECT hash FROM blocks WHERE ns = ?").all(ns) as { hash: string }[]).map((r) => r.hash);
  }

  /** Bytes of every block of every namespace. */
  get totalBytes(): number {
    return (this.db.query("SELECT coalesce(sum(bytes), 0) AS n FROM blocks").get() as { n: number }).n;
  }

  count(ns?: string): number {
    const q = ns === undefined ? this.db.query("SELECT count(*) AS n FROM blocks").get() : this.db.query("SELECT count(*) AS n FROM blocks WHERE ns = ?").get(ns);
    return (q as { n: number }).n;
  }

  /**
   * Makes room for `bytes` more within `budget`: the least recently used blocks are taken out of the index and
   * returned for their files to be deleted. Null when the block would not fit even in an empty directory.
   */
  makeRoom(bytes: number, budget: number): IndexedBlock[] | null {
    if (bytes > budget) return null;
    const out: IndexedBlock[] = [];
    this.db.transaction(() => {
      let total = this.totalBytes;
      const oldest = this.db.query("SELECT ns, hash, bytes FROM blocks ORDER BY used LIMIT 64");
      const drop = this.db.query("DELETE FROM blocks WHERE ns = ? AND hash = ?");
      while (total + bytes > budget) {
        const rows = oldest.all() as IndexedBlock[];
        if (rows.length === 0) break;
        for (const r of rows) {
          if (total + bytes <= budget) break;
          drop.run(r.ns, r.hash);
          total -= r.bytes;
          out.push(r);
        }
      }
    }).immediate();
    return out;
  }

  put(ns: string, hash: string, bytes: number): void {
    this.db.query("INSERT OR REPLACE INTO blocks (ns, hash, bytes, used) VALUES (?, ?, ?, ?)").run(ns, hash, bytes, this.now());
  }

  /** Marks blocks as used now, the last of them most recently. */
  touch(ns: string, hashes: readonly string[]): void {
    if (hashes.length === 0) return;
    const q = this.db.query("UPDATE blocks SET used = ? WHERE ns = ? AND hash = ?");
    this.db.transaction(() => {
      for (const h of hashes) q.run(this.now(), ns, h);
    })();
  }

  remove(ns: string, hash: string): void {
    this.db.query("DELETE FROM blocks WHERE ns = ? AND hash = ?").run(ns, hash);
  }

  close(): void {
    this.db.close();
  }
}
