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

  test("an unknown --gemv mode is one line and exit 2, for serve and generate alike", () => {
    for (const cmd of [["serve", "--port", "0"], ["generate", "--prompt", "hi"]]) {
      const r = run(...cmd, "--gemv", "int8");
      expect(r.code).toBe(2);
      expect(r.err.trim().split("\n")).toEqual(["rmlx: unknown gemv mode 'int8' (--gemv / RMLX_GEMV: x16 or f32)"]);
    }
  });

  test("serve: a KV codec a model's head_dim cannot take is one line and exit 2, before it listens", () => {
    const gemma = join(import.meta.dir, "fixtures/models/gemma3");
    const r = run("serve", "-m", gemma, "--port", "0", "--no-metrics", "--kv-quant", "q8");
    expect(r.code).toBe(2);
    expect(r.err.trim().split("\n")).toEqual([
      "rmlx: --kv-quant q8: model 'gemma3': KV codec q8 cannot store head_dim 16: head_dim 16 is not a multiple of the group size 64 (f32, f16 and bf16 take any head_dim)",
    ]);
    // A folder of models: the first one that cannot take the codec is named.
    const env = run("serve", "-m", join(import.meta.dir, "fixtures/models"), "--port", "0", "--no-metrics", "--kv-quant", "fp8");
    expect(env.code).toBe(2);
    expect(env.err).toMatch(/^rmlx: --kv-quant fp8: model '\w+': KV codec fp8 cannot store head_dim 16/);
  });
});
