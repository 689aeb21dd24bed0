// The metrics database schema, as ordered migrations. PRAGMA user_version records how many have run, so an
// older file is brought forward in place and a newer one is left alone.
export const MIGRATIONS: readonly string[] = [
  `CREATE TABLE runs (
     id INTEGER PRIMARY KEY,
     started_at REAL NOT NULL,
     version TEXT NOT NULL,
     kind TEXT NOT NULL,
     backend TEXT,
     device TEXT,
     model TEXT,
     quantization TEXT
   );
   CREATE TABLE requests (
     id INTEGER PRIMARY KEY,
     run_id INTEGER REFERENCES runs(id),
     request_id TEXT,
     model TEXT NOT NULL,
     api TEXT NOT NULL,
     started_at REAL NOT NULL,
     ended_at REAL NOT NULL,
     prompt_tokens INTEGER NOT NULL DEFAULT 0,
     cached_tokens INTEGER NOT NULL DEFAULT 0,
     generated_tokens INTEGER NOT NULL DEFAULT 0,
     ttft_ms REAL,
     decode_tps REAL,
     prompt_tps REAL,
     finish_reason TEXT,
     status INTEGER NOT NULL
   );
   CREATE INDEX requests_started ON requests(started_at);
   CREATE INDEX requests_model ON requests(model, started_at);
   CREATE TABLE benchmarks (
     id INTEGER PRIMARY KEY,
     run_id INTEGER REFERENCES runs(id),
     created_at REAL NOT NULL,
     name TEXT NOT NULL,
     shape TEXT NOT NULL DEFAULT '',
     figure REAL NOT NULL,
     unit TEXT NOT NULL,
     peer_name TEXT,
     peer_figure REAL,
     higher_is_better INTEGER NOT NULL DEFAULT 1
   );
   CREATE INDEX benchmarks_name ON benchmarks(name, shape, created_at);`,
  // Prompt tokens read back from the prefix cache's SSD tier (a part of cached_tokens); older rows have 0.
  `ALTER TABLE requests ADD COLUMN cached_disk_tokens INTEGER NOT NULL DEFAULT 0;`,
  // Speculative decoding: tokens a draft model proposed for the request and how many the model kept (NULL
  // without a draft model, and in rows written before this migration).
  `ALTER TABLE requests ADD COLUMN draft_tokens INTEGER;
   ALTER TABLE requests ADD COLUMN accepted_tokens INTEGER;`,
];
