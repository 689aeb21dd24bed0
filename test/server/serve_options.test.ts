// `rmlx serve` start-up and options against the stand-in engine (fake_worker.ts): the ready line, per-request log
// lines, one-line failures (a model that cannot load, a port in use), sampling defaults (request > server flag >
// generation_config.json > built-in), --max-tokens, --ctx-size and --kv-ssd's checks.
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { FAKE_WORKER, fakeModels, removeDir, serve, waitFor } from "./harness.ts";

const ENV = { RMLX_ENGINE_WORKER: FAKE_WORKER };
const MAIN = join(import.meta.dir, "..", "..", "src", "cli", "main.ts");

/** Runs `rmlx serve` to its exit (for start-up failures). */
async function serveFails(args: string[], env: Record<string, string> = {}) {
  const p = Bun.spawn([process.execPath, MAIN, "serve", "--no-metrics", ...args], {
    env: { ...process.env, ...ENV, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const timer = setTimeout(() => p.kill(), 20_000);
  const code = await p.exited;
  clearTimeout(timer);
  return { code, err: await new Response(p.stderr).text() };
}

const post = (url: string, path: string, body: object) =>
  fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

/** What the engine was asked for: the fake engine answers "[request]" with the request's fields. */
async function asked(url: string, body: object): Promise<{ sampling: Record<string, number>; maxTokens: number }> {
  const r = await post(url, "/v1/chat/completions", { model: "m", ...body, messages: [{ role: "user", content: "[request]" }] });
  expect(r.status).toBe(200);
  return JSON.parse(((await r.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content);
}

async function askedAnthropic(url: string, body: object): Promise<{ sampling: Record<string, number> }> {
  const r = await post(url, "/v1/messages", { model: "m", max_tokens: 500, ...body, messages: [{ role: "user", content: "[request]" }] });
  expect(r.status).toBe(200);
  return JSON.parse(((await r.json()) as { content: { text: string }[] }).content[0]!.text);
}

describe("start-up", () => {
  test("one ready line, with the URL and the model, once /health answers 200", async () => {
    const dir = fakeModels("slowload");
    const s = await serve(["--model", join(dir, "slowload")], ENV, false, true);
    try {
      expect((await fetch(`${s.url}/health`)).status).toBe(503);
      expect(s.stderr()).not.toContain("ready");
      expect(await waitFor(async () => s.stderr().includes("ready"), 5000)).toBe(true);
      expect((await fetch(`${s.url}/health`)).status).toBe(200);
      const ready = s.stderr().split("\n").filter((l) => l.includes("ready"));
      expect(ready).toHaveLength(1);
      expect(ready[0]).toMatch(new RegExp(`^rmlx: ready: serving slowload on ${s.url} after \\d+\\.\\d\\d s$`));
    } finally {
      await s.stop();
      removeDir(dir);
    }
  });

  test("with several models the ready line names them all and comes at once", async () => {
    const dir = fakeModels("a", "b");
    const s = await serve(["--model", dir], ENV);
    try {
      expect(s.stderr()).toContain(`rmlx: ready: serving a, b on ${s.url} (each loads on first use)`);
      expect((await fetch(`${s.url}/health`)).status).toBe(200);
    } finally {
      await s.stop();
      removeDir(dir);
    }
  });

  test("a single model that cannot load: one line naming it, exit 2", async () => {
    const dir = fakeModels("broken");
    try {
      const r = await serveFails(["--model", join(dir, "broken"), "--port", "0"]);
      expect(r.code).toBe(2);
      const lines = r.err.trim().split("\n");
      expect(lines.at(-1)).toMatch(/^rmlx: cannot load broken: cannot load .*broken$/);
      expect(lines.filter((l) => !l.startsWith("rmlx: loading"))).toHaveLength(1);
    } finally {
      removeDir(dir);
    }
  });

  test("a port in use is one clear line and exit 2", async () => {
    const dir = fakeModels("m");
    const s = await serve(["--model", join(dir, "m")], ENV);
    try {
      const port = new URL(s.url).port;
      const r = await serveFails(["--model", join(dir, "m"), "--port", port]);
      expect(r.code).toBe(2);
      expect(r.err).toBe(`rmlx: port ${port} is in use on 127.0.0.1 (another server? choose one with --port)\n`);
    } finally {
      await s.stop();
      removeDir(dir);
    }
  });

  test("-p is not a port: serve takes --port only", async () => {
    const r = await serveFails(["-p", "8080"]);
    expect(r.code).toBe(2);
    expect(r.err).toBe("rmlx: unknown option '-p' (see 'rmlx serve --help')\n");
  });
});

describe("logging", () => {
  test("-v: one line per request with method, path, status, model, tokens and timings", async () => {
    const dir = fakeModels("m");
    const s = await serve(["--model", join(dir, "m"), "-v"], ENV);
    try {
      const chat = await post(s.url, "/v1/chat/completions", { messages: [{ role: "user", content: "hello" }], temperature: 0 });
      expect(chat.status).toBe(200);
      const stream = await post(s.url, "/v1/messages", { model: "x", max_tokens: 5, stream: true, messages: [{ role: "user", content: "[slow]" }] });
      await stream.text();
      await fetch(`${s.url}/v1/models`);
      const missing = await post(s.url, "/v1/chat/completions", { messages: "no" });
      expect(missing.status).toBe(400);
      expect(await waitFor(async () => s.stderr().includes("POST /v1/chat/completions 400"), 2000)).toBe(true);
      const lines = s.stderr().split("\n");
      const prompt = "<|user|>hello\n<|assistant|>".length;
      // The fake worker may hand over all 11 tokens within the millisecond of the first: no decode time to divide
      // by, and the line leaves the rate out rather than print an infinite one.
      expect(lines).toContainEqual(
        expect.stringMatching(new RegExp(`^rmlx: POST /v1/chat/completions 200 m: ${prompt} prompt tokens, 11 generated, ttft \\d+ ms(, [\\d.]+ tok/s)?, stop; \\d+ ms$`)),
      );
      expect(lines).toContainEqual(expect.stringMatching(/^rmlx: POST \/v1\/messages 200 m: \d+ prompt tokens, 5 generated, ttft \d+ ms, [\d.]+ tok\/s, length; \d+ ms$/));
      expect(lines).toContainEqual(expect.stringMatching(/^rmlx: GET \/v1\/models 200: \d+ ms$/));
      expect(lines).toContainEqual(expect.stringMatching(/^rmlx: POST \/v1\/chat\/completions 400: \d+ ms$/));
    } finally {
      await s.stop();
      removeDir(dir);
    }
  });

  test("the default level logs no request; trace logs bodies too; a bad level is one line", async () => {
    const dir = fakeModels("m");
    const quiet = await serve(["--model", join(dir, "m")], ENV);
    const trace = await serve(["--model", join(dir, "m")], { ...ENV, RMLX_LOG_LEVEL: "trace" });
    try {
      for (const s of [quiet, trace]) await post(s.url, "/v1/completions", { prompt: "abc", max_tokens: 2 });
      await Bun.sleep(100);
      expect(quiet.stderr()).not.toContain("POST");
      expect(trace.stderr()).toContain('rmlx: POST /v1/completions body: {"prompt":"abc","max_tokens":2}\n');
      expect(trace.stderr()).toMatch(/rmlx: POST \/v1\/completions 200 m: 3 prompt tokens/);
    } finally {
      await quiet.stop();
      await trace.stop();
      removeDir(dir);
    }
    const bad = await serveFails(["--log-level", "loud"]);
    expect(bad.code).toBe(2);
    expect(bad.err).toBe("rmlx: --log-level must be one of error, warn, info, debug, trace (got 'loud')\n");
  });
});

describe("sampling defaults", () => {
  const BUILT_IN = { temperature: 1, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1 };

  test("request > server flag > generation_config.json > built-in default, on both APIs", async () => {
    const dir = fakeModels("m", "plain", "greedy");
    writeFileSync(join(dir, "m", "generation_config.json"), JSON.stringify({ do_sample: true, temperature: 0.6, top_p: 0.95, top_k: 20, repetition_penalty: 1.05 }));
    writeFileSync(join(dir, "greedy", "generation_config.json"), JSON.stringify({ do_sample: false, temperature: 0.6 }));
    const bare = await serve(["--model", join(dir, "plain")], ENV);
    const fromModel = await serve(["--model", join(dir, "m")], ENV);
    const greedy = await serve(["--model", join(dir, "greedy")], ENV);
    const flags = await serve(["--model", join(dir, "m"), "--temp", "0.3", "--min-p", "0.05"], { ...ENV, RMLX_TOP_K: "5" });
    try {
      expect((await asked(bare.url, {})).sampling).toMatchObject(BUILT_IN);
      expect((await askedAnthropic(bare.url, {})).sampling).toMatchObject(BUILT_IN);
      const model = { temperature: 0.6, topP: 0.95, topK: 20, minP: 0, repetitionPenalty: 1.05 };
      expect((await asked(fromModel.url, {})).sampling).toMatchObject(model);
      expect((await askedAnthropic(fromModel.url, {})).sampling).toMatchObject(model);
      expect((await asked(greedy.url, {})).sampling).toMatchObject({ temperature: 0, topP: 1 });
      const flagged = { temperature: 0.3, topP: 0.95, topK: 5, minP: 0.05, repetitionPenalty: 1.05 };
      expect((await asked(flags.url, {})).sampling).toMatchObject(flagged);
      expect((await askedAnthropic(flags.url, {})).sampling).toMatchObject(flagged);
      // The request's own values win over both.
      expect((await asked(flags.url, { temperature: 0.9, top_p: 0.5, top_k: 3, min_p: 0.2 })).sampling).toMatchObject({ temperature: 0.9, topP: 0.5, topK: 3, minP: 0.2 });
      expect((await askedAnthropic(flags.url, { temperature: 0.9, top_p: 0.5, top_k: 3 })).sampling).toMatchObject({ temperature: 0.9, topP: 0.5, topK: 3 });
    } finally {
      for (const s of [bare, fromModel, greedy, flags]) await s.stop();
      removeDir(dir);
    }
  });

  test("--max-tokens: the default of OpenAI requests that name none", async () => {
    const dir = fakeModels("m");
    const plain = await serve(["--model", join(dir, "m")], ENV);
    const capped = await serve(["--model", join(dir, "m"), "--max-tokens", "300"], ENV);
    try {
      expect((await asked(plain.url, {})).maxTokens).toBe(512);
      expect((await asked(capped.url, {})).maxTokens).toBe(300);
      expect((await asked(capped.url, { max_tokens: 400 })).maxTokens).toBe(400);
      const r = await post(capped.url, "/v1/completions", { prompt: "[request]" });
      expect(JSON.parse(((await r.json()) as { choices: { text: string }[] }).choices[0]!.text).maxTokens).toBe(300);
      // Without the flag, legacy completions keep OpenAI's 16.
      const short = await post(plain.url, "/v1/completions", { prompt: "[request]" });
      expect(((await short.json()) as { choices: { text: string }[] }).choices[0]!.text).toHaveLength(16);
    } finally {
      await plain.stop();
      await capped.stop();
      removeDir(dir);
    }
  });

  test("--ctx-size caps the context; bad values are one line", async () => {
    const dir = fakeModels("m");
    const s = await serve(["--model", join(dir, "m"), "--ctx-size", "64"], ENV);
    try {
      const models = (await (await fetch(`${s.url}/v1/models`)).json()) as { data: { max_model_len: number }[] };
      expect(models.data[0]!.max_model_len).toBe(64);
      const r = await post(s.url, "/v1/completions", { prompt: "x".repeat(100), max_tokens: 1 });
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { message: string } }).error.message).toContain("the context is 64");
    } finally {
      await s.stop();
      removeDir(dir);
    }
    for (const [flag, value, message] of [
      ["--ctx-size", "0", "rmlx: --ctx-size: '0' is not an integer >= 1"],
      ["--temp", "hot", "rmlx: --temp: 'hot' is not a number"],
      ["--top-p", "1.5", "rmlx: --top-p: 1.5 is out of range (between 0 and 1)"],
      ["--chat-template", "/nonexistent/template.jinja", "rmlx: --chat-template: cannot read /nonexistent/template.jinja: ENOENT"],
      ["--prompt-overflow", "cut", "rmlx: --prompt-overflow must be error or truncate (got 'cut')"],
    ]) {
      const bad = await serveFails([flag!, value!]);
      expect(bad.code).toBe(2);
      expect(bad.err).toBe(`${message}\n`);
    }
  });
});

describe("other servers' spellings", () => {
  test("vLLM's --max-model-len and --served-model-name, llama-server's -a, --parallel and --chat-template-file", async () => {
    const dir = fakeModels("m");
    for (const args of [
      ["--max-model-len", "64", "--served-model-name", "mine", "--max-num-seqs", "4"],
      ["--ctx-size", "64", "-a", "mine", "--parallel", "4"],
    ]) {
      const s = await serve(["--model", join(dir, "m"), ...args], ENV);
      try {
        const models = (await (await fetch(`${s.url}/v1/models`)).json()) as { data: { id: string; max_model_len: number }[] };
        expect(models.data.map((m) => [m.id, m.max_model_len])).toEqual([["mine", 64]]);
      } finally {
        await s.stop();
      }
    }
    removeDir(dir);
    const clash = await serveFails(["--max-num-seqs", "4", "--max-running", "5"]);
    expect(clash.code).toBe(2);
    expect(clash.err).toBe("rmlx: --max-num-seqs and --max-running disagree (see 'rmlx serve --help')\n");
    const file = await serveFails(["--chat-template-file", "/nonexistent/template.jinja"]);
    expect(file.code).toBe(2);
    expect(file.err).toBe("rmlx: --chat-template: cannot read /nonexistent/template.jinja: ENOENT\n");
  });
});

describe("--kv-ssd start-up", () => {
  test("--kv-ssd: a budget without a directory, a bad size, no prefix cache or an unusable directory are one line", async () => {
    const dir = fakeModels("m");
    try {
      const ssd = join(dir, "kv");
      for (const [args, message] of [
        [["--kv-ssd-budget", "1GiB"], "rmlx: --kv-ssd-budget needs --kv-ssd"],
        [["--kv-ssd", ssd, "--kv-ssd-budget", "lots"], "rmlx: --kv-ssd-budget: 'lots' is not a size (e.g. 4GiB, 512MB)"],
        [["--kv-ssd", ssd, "--no-prefix-cache"], "rmlx: --kv-ssd needs the prefix cache (drop --no-prefix-cache)"],
        [["--kv-ssd", join(dir, "m", "config.json", "kv")], `rmlx: --kv-ssd ${join(dir, "m", "config.json", "kv")}: ENOTDIR`],
      ] as const) {
        const bad = await serveFails(["--model", join(dir, "m"), ...args]);
        expect(bad.code).toBe(2);
        expect(bad.err.split("\n").length).toBe(2);
        expect(bad.err).toStartWith(message);
      }
    } finally {
      removeDir(dir);
    }
  });
});
