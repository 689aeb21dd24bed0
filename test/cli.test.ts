import { describe, expect, test } from "bun:test";
import { join } from "node:path";

const BIN = join(import.meta.dir, "..", "dist", "rmlx");

function run(...args: string[]) {
  const p = Bun.spawnSync([BIN, ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

describe("rmlx binary", () => {
  test("--version prints the package version", () => {
    const r = run("--version");
    expect(r.code).toBe(0);
    expect(r.out.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  test("--help lists every subcommand", () => {
    const r = run("--help");
    expect(r.code).toBe(0);
    for (const c of ["serve", "info", "convert", "metrics", "generate", "chat", "bench"]) expect(r.out).toContain(c);
  });

  test("an unknown command exits 2", () => {
    expect(run("frobnicate").code).toBe(2);
  });
});
