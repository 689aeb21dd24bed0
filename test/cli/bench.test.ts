import { afterAll, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const BIN = join(import.meta.dir, "..", "..", "dist", "rmlx");
const dir = mkdtempSync(join(tmpdir(), "rmlx-bench-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("rmlx bench", () => {
  test("--json reports prompt and generation speed of the built-in model and records them", () => {
    const db = join(dir, "m.db");
    const p = Bun.spawnSync([BIN, "bench", "-p", "32", "-g", "8", "--reps", "1", "--json", "--db", db], { stdout: "pipe", stderr: "pipe" });
    expect(p.stderr.toString()).toBe("");
    expect(p.exitCode).toBe(0);
    const r = JSON.parse(p.stdout.toString());
    expect(r.prompt_tokens).toBe(32);
    expect(r.generated_tokens).toBe(8);
    expect(r.prompt_tps).toBeGreaterThan(0);
    expect(r.generation_tps).toBeGreaterThan(0);
    const rows = new Database(db, { readonly: true }).query("SELECT name, shape, unit FROM benchmarks ORDER BY name").all();
    expect(rows).toEqual([
      { name: "rmlx bench generation qwen3", shape: "p32 g8 kv f32", unit: "tok/s" },
      { name: "rmlx bench prompt qwen3", shape: "p32 g8 kv f32", unit: "tok/s" },
    ]);
  });

  test("an f16 KV cache runs and says so", () => {
    const p = Bun.spawnSync([BIN, "bench", "-p", "16", "-g", "4", "--reps", "1", "--json", "--no-metrics", "--kv-dtype", "f16"], { stdout: "pipe" });
    expect(p.exitCode).toBe(0);
    expect(JSON.parse(p.stdout.toString()).kv_dtype).toBe("f16");
  });

  test("bad input: one line, exit 2", () => {
    for (const args of [["-p", "0"], ["-g", "1.5"], ["-p", "100000"], ["--model", join(dir, "none")], ["--kv-dtype", "f8"]]) {
      const p = Bun.spawnSync([BIN, "bench", "--no-metrics", ...args], { stdout: "pipe", stderr: "pipe" });
      expect(p.exitCode).toBe(2);
      expect(p.stderr.toString().trim().split("\n").length).toBe(1);
    }
  });
});
