// `rmlx chat` through the compiled binary with piped input: two replies around a /reset, then /exit.
import { expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";

const BIN = join(import.meta.dir, "../../dist/rmlx");
const MODEL = join(import.meta.dir, "../fixtures/models/qwen3");

test.skipIf(!existsSync(join(MODEL, "config.json")))("chat: replies, /reset, /exit", () => {
  const p = Bun.spawnSync([BIN, "chat", "--model", MODEL, "--max-tokens", "4"], {
    stdin: new TextEncoder().encode("hello\n/reset\nwhat is the sea?\n/exit\nnever read\n"),
    stdout: "pipe",
    stderr: "pipe",
  });
  const out = p.stdout.toString();
  const err = p.stderr.toString();
  expect(p.exitCode).toBe(0);
  expect(out).toContain("(history cleared)");
  // one speed line per reply, none for the line after /exit
  expect(err.match(/generation: \d+ tokens/g)?.length).toBe(2);
});

test("chat: a missing model is one line and exit 2", () => {
  const p = Bun.spawnSync([BIN, "chat", "--model", "/nonexistent-model-dir"], { stdout: "pipe", stderr: "pipe" });
  expect(p.exitCode).toBe(2);
  expect(p.stderr.toString()).toMatch(/^rmlx: [^\n]+\n$/);
});
