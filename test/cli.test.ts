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
      expect(r.err.trim().split("\n")).toEqual(["rmlx: unknown gemv mode 'int8' (--gemv / RMLX_GEMV: x8, x16 or f32)"]);
    }
  });

  test("an unknown --gemm mode is one line and exit 2, for serve and generate alike", () => {
    for (const cmd of [["serve", "--port", "0"], ["generate", "--prompt", "hi"]]) {
      const r = run(...cmd, "--gemm", "int8");
      expect(r.code).toBe(2);
      expect(r.err.trim().split("\n")).toEqual(["rmlx: unknown gemm mode 'int8' (--gemm / RMLX_GEMM: auto, f32, x16 or bf16)"]);
    }
  });

  const COMMANDS = ["serve", "info", "convert", "metrics", "generate", "chat", "bench"];

  test("an unknown flag or a missing option is one line naming the command's --help, exit 2", () => {
    const required: Record<string, string[]> = { convert: ["-m", "a", "--out", "b"], generate: ["-p", "hi"] };
    for (const c of COMMANDS) {
      const r = run(c, ...(required[c] ?? []), "--no-such-flag");
      expect(r.code).toBe(2);
      expect(r.err).toBe(`rmlx: unknown option '--no-such-flag' (see 'rmlx ${c} --help')\n`);
    }
    const missing = run("convert", "-m", "x");
    expect(missing.code).toBe(2);
    expect(missing.err).toBe("rmlx: required option '--out <dir>' not specified (see 'rmlx convert --help')\n");
    const nested = run("metrics", "regress");
    expect(nested.err).toBe("rmlx: required option '--baseline <ref>' not specified (see 'rmlx metrics regress --help')\n");
    expect(run("frobnicate").err).toBe("rmlx: unknown command 'frobnicate' (see 'rmlx --help')\n");
  });

  test("-m is --model everywhere, and no short flag means two things", () => {
    const meaning = new Map<string, Set<string>>();
    for (const c of [...COMMANDS, "metrics requests"]) {
      const help = run(...c.split(" "), "--help").out;
      for (const [, short, long] of help.matchAll(/^\s+(-\w), (--[\w-]+)/gm)) {
        if (!meaning.has(short!)) meaning.set(short!, new Set());
        meaning.get(short!)!.add(long!);
      }
      if (!["metrics"].includes(c)) expect(help).toMatch(/^\s+-m, --model /m);
    }
    for (const [short, longs] of meaning) expect([short, [...longs]]).toEqual([short, [[...longs][0]]]);
    // -p is a prompt (generate: its text, bench: its length); serve's port is --port alone.
    expect([...meaning.get("-p")!]).toEqual(["--prompt"]);
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
