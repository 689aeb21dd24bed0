// `rmlx chat` through the compiled binary with piped input: the banner and the commands, a history that outgrows
// the context, and Ctrl-C (SIGINT) stopping a reply rather than the program.
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fitHistory } from "../../src/cli/chat.ts";
import type { ChatMessage } from "../../src/engine/types.ts";

const BIN = join(import.meta.dir, "../../dist/rmlx");
const MODEL = join(import.meta.dir, "../fixtures/models/qwen3");
const haveModel = existsSync(join(MODEL, "config.json"));

function chat(args: string[], input: string) {
  const p = Bun.spawnSync([BIN, "chat", ...args], { stdin: new TextEncoder().encode(input), stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

describe("rmlx chat", () => {
  test.skipIf(!haveModel)("replies, /reset, /exit", () => {
    const r = chat(["--model", MODEL, "--max-tokens", "4"], "hello\n/reset\nwhat is the sea?\n/exit\nnever read\n");
    expect(r.code).toBe(0);
    expect(r.out).toContain("(history cleared)");
    // one speed line per reply, none for the line after /exit
    expect(r.err.match(/generation: \d+ tokens/g)?.length).toBe(2);
  });

  test("the built-in model by default: a banner naming it and /help, then the commands", () => {
    const r = chat([], "/help\n/system Answer in one line.\n/system\n/bogus\nWho are you?\n/quit\n");
    expect(r.code).toBe(0);
    const lines = r.out.split("\n");
    expect(lines[0]).toBe("rmlx chat: rmlx-default (the built-in model), context 1024 tokens. Type a message, or /help.");
    for (const c of ["/help", "/reset", "/system TEXT", "/exit"]) expect(r.out).toContain(`  ${c}`);
    expect(r.out).toContain("Ctrl-C during a reply stops the reply.");
    expect(r.out).toContain("(system message set)\n>> (system message removed)\n>> (unknown command /bogus; /help lists them)\n");
    expect(r.out).toContain("I am the small built-in model of rmlx.");
  });

  test("a history longer than the context loses its oldest turns with a notice, and the chat goes on", () => {
    const questions = ["What is the package ripgrep?", "What does the command ls do?", "What is curl?", "Which section is vim in?"];
    const r = chat(["--ctx-size", "100", "--max-tokens", "40"], questions.join("\n") + "\n");
    expect(r.code).toBe(0);
    expect(r.out).toContain("(dropped the oldest turn to fit the context of 100 tokens)");
    expect(r.err.match(/generation: \d+ tokens/g)?.length).toBe(4);
    expect(r.out).toContain("vim is in the editors section.");
  });

  test("a message too long for the context alone is refused, not fatal", () => {
    const r = chat(["--ctx-size", "40", "--max-tokens", "8"], `${"word ".repeat(60)}\nWhich section is vim in?\n`);
    expect(r.code).toBe(0);
    expect(r.out).toContain("(that message does not fit the context of 40 tokens with room for a reply; shorten it or raise --ctx-size)");
    expect(r.err.match(/generation: \d+ tokens/g)?.length).toBe(1);
  });

  test("llama.cpp's -n and --system-prompt spell --max-tokens and --system", () => {
    const ours = chat(["--max-tokens", "6", "--system", "Answer in one line."], "What is curl?\n");
    const theirs = chat(["-n", "6", "--system-prompt", "Answer in one line."], "What is curl?\n");
    expect(theirs.code).toBe(0);
    expect(theirs.out).toBe(ours.out);
    expect(theirs.err.match(/generation: 6 tokens/g)?.length).toBe(1);
  });

  test("a missing model is one line and exit 2", () => {
    const p = Bun.spawnSync([BIN, "chat", "-m", "/nonexistent-model-dir"], { stdout: "pipe", stderr: "pipe" });
    expect(p.exitCode).toBe(2);
    expect(p.stderr.toString()).toMatch(/^rmlx: [^\n]+\n$/);
  });
});

describe("Ctrl-C", () => {
  // The fixture model with a longer context, so that a reply runs long enough to be interrupted.
  const dir = mkdtempSync(join(tmpdir(), "rmlx-chat-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  if (haveModel) {
    for (const f of readdirSync(MODEL)) if (!f.startsWith("reference")) copyFileSync(join(MODEL, f), join(dir, f));
    const config = JSON.parse(readFileSync(join(MODEL, "config.json"), "utf8"));
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, max_position_embeddings: 1 << 16 }));
  }

  async function readUntil(reader: { read(): Promise<{ value?: Uint8Array; done: boolean }> }, seen: { text: string }, what: RegExp): Promise<void> {
    const dec = new TextDecoder();
    while (!what.test(seen.text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`output ended before ${what}: ${seen.text}`);
      seen.text += dec.decode(value);
    }
  }

  test.skipIf(!haveModel)("stops the reply, not the program; twice at the prompt quits", async () => {
    const p = Bun.spawn([BIN, "chat", "-m", dir, "--max-tokens", "60000", "--temp", "0"], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    const reader = p.stdout.getReader();
    const seen = { text: "" };
    try {
      p.stdin.write("hello\n");
      await p.stdin.flush();
      // The reply has begun: text after the prompt.
      await readUntil(reader, seen, />> .{20}/s);
      p.kill("SIGINT");
      await readUntil(reader, seen, /\n\(stopped\)\n/);
      // Still alive: the next message gets a reply too.
      p.stdin.write("again\n");
      await p.stdin.flush();
      const before = seen.text.length;
      await readUntil(reader, seen, /\(stopped\)\n>> /);
      await Bun.sleep(300);
      p.kill("SIGINT");
      await readUntil(reader, seen, /\(stopped\)\n[^]*\(stopped\)\n/);
      expect(seen.text.length).toBeGreaterThan(before);
      // At the prompt: the first Ctrl-C says how to quit, the second quits.
      await readUntil(reader, seen, /\(stopped\)\n[^]*\(stopped\)\n>> $/);
      p.kill("SIGINT");
      await readUntil(reader, seen, /\(Ctrl-C again or \/exit to quit\)\n>> $/);
      p.kill("SIGINT");
      expect(await p.exited).toBe(0);
    } finally {
      p.kill();
    }
    const err = await new Response(p.stderr).text();
    expect(err.match(/generation: \d+ tokens/g)?.length).toBe(2);
    expect(err).not.toContain("rmlx:");
  }, 60_000);
});

test("fitHistory drops whole turns from the oldest, keeping the system message and the newest question", () => {
  const h: ChatMessage[] = [
    { role: "system", content: "s" },
    { role: "user", content: "u1" },
    { role: "assistant", content: "a1" },
    { role: "user", content: "u2" },
    { role: "assistant", content: "a2" },
    { role: "user", content: "u3" },
  ];
  const tokens = (m: ChatMessage[]) => m.length * 10;
  expect(fitHistory(h, tokens, 44, 5)).toBe(2);
  expect(h.map((m) => m.content)).toEqual(["s", "u3"]);
  expect(fitHistory([{ role: "user", content: "x" }], tokens, 12, 5)).toBeNull();
  const fits: ChatMessage[] = [{ role: "user", content: "x" }];
  expect(fitHistory(fits, tokens, 100, 5)).toBe(0);
});
