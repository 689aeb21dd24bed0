// Starts a real `rmlx serve` (the TypeScript entry, run by bun) on a random loopback port for a test file.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";

const ROOT = join(import.meta.dir, "..", "..");
export const FAKE_WORKER = join(import.meta.dir, "fake_worker.ts");

export interface Served {
  url: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  stderr: () => string;
  stop: () => Promise<number>;
}

/** A folder of empty model directories (a config.json each), for the fake engine. */
export function fakeModels(...names: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), "rmlx-serve-"));
  for (const n of names) {
    mkdirSync(join(dir, n));
    writeFileSync(join(dir, n, "config.json"), "{}");
  }
  return dir;
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export const BINARY = join(ROOT, "dist", "rmlx");

/**
 * Starts the TypeScript entry with bun, or the compiled binary when `binary` is set, and returns once the server
 * says it is ready (/health 200), or with `listening`, as soon as it listens (a single model may still load).
 */
export async function serve(args: string[], env: Record<string, string> = {}, binary = false, listening = false): Promise<Served> {
  const cmd = binary ? [BINARY] : [process.execPath, join(ROOT, "src/cli/main.ts")];
  // Tests never write to the user's metrics database unless they name one.
  const metrics = args.includes("--db") ? [] : ["--no-metrics"];
  const proc = Bun.spawn([...cmd, "serve", "--port", "0", ...metrics, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  let err = "";
  const reader = proc.stderr.getReader();
  const dec = new TextDecoder();
  let url: string | undefined;
  const deadline = Date.now() + 60_000;
  while (!url && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    err += dec.decode(value);
    url = (listening ? /(?:listening|ready: serving .*) on (http:\/\/\S+)/ : /ready: serving .* on (http:\/\/\S+)/).exec(err)?.[1];
  }
  if (!url) {
    proc.kill();
    throw new Error(`server did not start: ${err}`);
  }
  void (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      err += dec.decode(value);
    }
  })();
  return {
    url,
    proc,
    stderr: () => err,
    stop: async () => {
      proc.kill("SIGTERM");
      return await proc.exited;
    },
  };
}

/** Serves one model folder (with `args`) and waits until /health says it has loaded. */
export async function serveModel(dir: string, args: string[]): Promise<Served> {
  const srv = await serve(["--model", dir, ...args]);
  if (!(await waitFor(async () => (await fetch(`${srv.url}/health`)).status === 200, 30_000))) {
    await srv.stop();
    throw new Error(`${dir} did not load within 30 s: ${srv.stderr()}`);
  }
  return srv;
}

/** Reads a Prometheus gauge or counter without labels. */
export async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : Number.NaN;
}

export async function waitFor(cond: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return true;
    await Bun.sleep(10);
  }
  return cond();
}
