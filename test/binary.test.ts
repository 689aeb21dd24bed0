// The compiled binary must work on its own: copied alone into an empty directory, with a fresh HOME and cache,
// it still answers --version, --help and info (which loads the embedded native library to report the ISA).
import { describe, expect, test } from "bun:test";
import { copyFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import pkg from "../package.json" with { type: "json" };
import { llamaConfig, llamaParamCount, llamaTensors, tempDir, writeModelDir } from "./io/helpers.ts";

const BUILT = join(import.meta.dir, "..", "dist", "rmlx");

describe("dist/rmlx alone in an empty directory", () => {
  const work = tempDir("rmlx-bin-");
  const home = tempDir("rmlx-home-");
  const cache = join(home, "cache");
  const bin = join(work, "rmlx");
  copyFileSync(BUILT, bin);

  function run(...args: string[]) {
    const p = Bun.spawnSync([bin, ...args], {
      cwd: work,
      env: { PATH: "/usr/bin:/bin", HOME: home, XDG_CACHE_HOME: cache },
      stdout: "pipe",
      stderr: "pipe",
    });
    return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
  }

  test("--version", () => {
    const r = run("--version");
    expect(r.code).toBe(0);
    expect(r.out.trim()).toBe(pkg.version);
  });

  test("--help", () => {
    const r = run("--help");
    expect(r.code).toBe(0);
    for (const c of ["serve", "info", "convert", "metrics", "generate", "bench"]) expect(r.out).toContain(c);
  });

  test("info --json on a tiny model, with the native library extracted to the cache", () => {
    const model = writeModelDir(tempDir(), llamaConfig(), llamaTensors(), { extra: { "tokenizer.json": "{}" } });
    const r = run("info", "--model", model, "--json");
    expect(r.err).toBe("");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j).toMatchObject({ model_type: "llama", parameters: llamaParamCount(), layers: 2, runnable: true });
    expect(j.backend).toMatch(/^native \(cpu [a-z0-9_]+, (x16|f32) decode products\)$/);
    expect(readdirSync(join(cache, "rmlx")).some((f) => /^librmlx-[0-9a-f]+\.so$/.test(f))).toBe(true);
    expect(readdirSync(work)).toEqual(["rmlx"]);
  });

  test("bad input exits 2 with one line", () => {
    const r = run("info", "--model", join(work, "missing"));
    expect(r.code).toBe(2);
    expect(r.err.trim().split("\n")).toEqual([`rmlx: ${join(work, "missing")}: no such directory`]);
  });
});
