// Serving benchmark: a random-weight Qwen3 model directory (real Qwen3 tokenizer) served by `rmlx serve` on a
// loopback port, driven over HTTP with streamed completions (server-sent events), as clients would:
//   - 1, 4 and 16 concurrent clients, each generating a fixed number of tokens (ignore_eos): aggregate decode
//     tokens/s (the clients' decode rates summed), overall tokens/s (all tokens over the wall time, prefill
//     included), TTFT p50/p95 per level, and the 16-vs-1 ratio of aggregate decode;
//   - prefix cache: TTFT of a prompt with a long shared prefix seen for the first time (cold), against the same
//     prefix with a different question (a RAM hit), and again with a third question after the server has been
//     restarted (a hit on the prefix cache's SSD tier, --kv-ssd, which the server writes at shutdown);
//   - JSON-schema constrained decoding: the server's decode step time with and without response_format
//     json_schema (its per-request timings, read back from the metrics database it writes), and the mask alone,
//     replayed in this process over the tokens of a typical answer to the same schema.
// Figures go to the metrics database (`rmlx metrics` reads them) unless --no-record.
//
//   bun run bench serve [--shape small|0.6b|tiny] [--bits 4|8|0] [--tokens 32] [--levels 1,4,16] [--rounds 3] [--prompt 32]
//                       [--prefix 2000] [--json-tokens 48] [--json-pairs 3] [--kv-quant CODEC] [--source] [--no-record]
//                       [--smoke]
// --kv-quant is handed to the server (else the server's default, an f32 cache; `bench generate` times an f16 one,
// llama-server's default);
// --source runs the server from src/ through bun instead of dist/rmlx; --smoke is a seconds-long run of every
// part on a tiny shape (what the test suite runs).
import { Database } from "bun:sqlite";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { ConstraintVocab, JsonConstraint } from "../../src/engine/json_constraint.ts";
import { defaultDbPath, MetricsStore, type BenchmarkRow } from "../../src/metrics/store.ts";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { QWEN3_0_6B, TOKENIZER_DIR, writeRandomQwen3, type Qwen3Shape } from "./model/random_qwen3.ts";

const ROOT = join(import.meta.dir, "../..");

const SHAPES: Record<string, Qwen3Shape> = {
  "0.6b": QWEN3_0_6B,
  small: { hiddenSize: 512, layers: 8, heads: 8, kvHeads: 4, headDim: 64, intermediateSize: 1536 },
  tiny: { hiddenSize: 128, layers: 2, heads: 2, kvHeads: 1, headDim: 64, intermediateSize: 384 },
};

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(`--${name}`);
const smoke = flag("smoke");
function opt(name: string, dflt: string, smokeValue?: string): string {
  const i = argv.indexOf(`--${name}`);
  if (i >= 0 && argv[i + 1] !== undefined) return argv[i + 1]!;
  return smoke && smokeValue !== undefined ? smokeValue : dflt;
}
function int(name: string, dflt: number, smokeValue?: number): number {
  const v = Number(opt(name, String(dflt), smokeValue === undefined ? undefined : String(smokeValue)));
  if (!Number.isInteger(v) || v < 0) throw new Error(`--${name} must be a non-negative integer`);
  return v;
}

const shapeName = opt("shape", "small", "tiny");
const shape = SHAPES[shapeName];
if (!shape) throw new Error(`--shape: one of ${Object.keys(SHAPES).join(", ")}`);
const bits = int("bits", 4) as 0 | 4 | 8;
if (![0, 4, 8].includes(bits)) throw new Error("--bits: 4, 8 or 0 (bf16)");
const genTokens = Math.max(2, int("tokens", 32, 16));
const levels = opt("levels", "1,4,16", "1").split(",").map(Number);
if (levels.some((c) => !Number.isInteger(c) || c < 1)) throw new Error("--levels: client counts such as 1,4,16");
const promptLen = Math.max(1, int("prompt", 32, 8));
const rounds = Math.max(1, int("rounds", 3, 1));
const prefixLen = int("prefix", 2000, 64);
const jsonTokens = Math.max(2, int("json-tokens", 48, 4));
const jsonPairs = Math.max(1, int("json-pairs", 3, 1));
const record = !flag("no-record");
const kvQuant = argv.includes("--kv-quant") ? opt("kv-quant", "") : undefined;
if (kvQuant === "") throw new Error("--kv-quant: a codec such as f16 or q8");

/** Deterministic token ids below Qwen3's first special token, so prompts never contain control tokens. */
const FIRST_SPECIAL = 151643;
let rngState = 0x9e3779b9;
function randomIds(n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    rngState ^= rngState << 13;
    rngState ^= rngState >>> 17;
    rngState ^= rngState << 5;
    out.push((rngState >>> 0) % FIRST_SPECIAL);
  }
  return out;
}

function quantile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.ceil(p * s.length) - 1)]!;
}
const median = (xs: number[]) => quantile(xs, 0.5);

interface Server {
  url: string;
  /** CPU seconds the server has used so far, all threads (Linux; NaN elsewhere). */
  cpuSeconds: () => number;
  stop: () => Promise<void>;
}

/** utime + stime of a process from /proc/<pid>/stat, in seconds (USER_HZ is 100 on Linux). */
function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
}

async function startServer(modelDir: string, db: string, ssd: string): Promise<Server> {
  const binary = join(ROOT, "dist/rmlx");
  const cmd = flag("source") || !existsSync(binary) ? [process.execPath, join(ROOT, "src/cli/main.ts")] : [binary];
  const proc = Bun.spawn([...cmd, "serve", "--model", modelDir, "--host", "127.0.0.1", "--port", "0", "--db", db, "--kv-ssd", ssd, ...(kvQuant ? ["--kv-quant", kvQuant] : [])], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
  });
  const reader = proc.stderr.getReader();
  const dec = new TextDecoder();
  let log = "";
  let url: string | undefined;
  while (!url) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`rmlx serve exited before listening:\n${log}`);
    log += dec.decode(value);
    url = /on (http:\/\/\S+)/.exec(log)?.[1];
  }
  // Keep draining stderr so the server never blocks on a full pipe.
  void (async () => {
    for (;;) if ((await reader.read()).done) return;
  })();
  return {
    url,
    cpuSeconds: () => processCpuSeconds(proc.pid),
    stop: async () => {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}

/** Waits until the server uses under a tenth of a core over a quarter second (at most a minute). */
async function settled(server: Server): Promise<void> {
  const until = performance.now() + 60_000;
  let last = server.cpuSeconds();
  while (performance.now() < until) {
    await Bun.sleep(250);
    const now = server.cpuSeconds();
    if (!(now - last > 0.025)) return;
    last = now;
  }
}

interface Streamed {
  sentMs: number;
  firstMs: number;
  lastMs: number;
  tokens: number;
  promptTokens: number;
  cachedTokens: number;
  /** Of cachedTokens, those read back from the SSD tier (from /metrics; 0 unless the caller fills it in). */
  diskTokens: number;
}

/** The prefix-cache tokens the server has read back from its SSD tier so far (/metrics). */
async function diskCachedTokens(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(/^rmlx_prompt_tokens_cached_total\{tier="disk"\} (\S+)$/m.exec(text)?.[1] ?? Number.NaN);
}

/** The server's KV budget from /metrics: blocks (of 16 tokens, its default) and bytes a token in the codec it keeps. */
async function kvBudget(url: string): Promise<string> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const read = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? Number.NaN);
  const blocks = read("rmlx_kv_blocks_total"), bytes = read("rmlx_kv_bytes_total");
  return `${blocks} blocks, ${fmt(bytes / (blocks * 16))} bytes a token`;
}

/** One streamed /v1/completions request; times are performance.now() of the send and of token chunks' arrival. */
async function streamCompletion(url: string, model: string, prompt: number[], maxTokens: number): Promise<Streamed> {
  const sentMs = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model,
      prompt,
      max_tokens: maxTokens,
      temperature: 0,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok || !res.body) throw new Error(`/v1/completions answered ${res.status}: ${await res.text()}`);
  const out: Streamed = { sentMs, firstMs: 0, lastMs: 0, tokens: 0, promptTokens: 0, cachedTokens: 0, diskTokens: 0 };
  const dec = new TextDecoder();
  let buf = "";
  for await (const bytes of res.body) {
    const now = performance.now();
    buf += dec.decode(bytes, { stream: true });
    let end: number;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, end);
      buf = buf.slice(end + 2);
      const data = event.split("\n").find((l) => l.startsWith("data: "))?.slice(6);
      if (!data || data === "[DONE]") continue;
      const msg = JSON.parse(data);
      if (msg.error) throw new Error(`stream error: ${JSON.stringify(msg.error)}`);
      if (msg.usage) {
        out.tokens = msg.usage.completion_tokens;
        out.promptTokens = msg.usage.prompt_tokens;
        out.cachedTokens = msg.usage.prompt_tokens_details?.cached_tokens ?? 0;
      }
      if (msg.choices?.[0] && msg.choices[0].finish_reason == null) {
        if (out.firstMs === 0) out.firstMs = now;
        out.lastMs = now;
      }
    }
  }
  if (out.firstMs === 0 || out.tokens === 0) throw new Error("the stream carried no tokens");
  return out;
}

async function chat(url: string, model: string, maxTokens: number, responseFormat?: unknown): Promise<string> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model,
      messages: [{ role: "user", content: "List people with their name, age and city." }],
      max_tokens: maxTokens,
      temperature: 0,
      ignore_eos: true,
      ...(responseFormat ? { response_format: responseFormat } : {}),
    }),
  });
  if (!res.ok) throw new Error(`/v1/chat/completions answered ${res.status}: ${await res.text()}`);
  const body = (await res.json()) as { choices: { message: { content: string | null } }[] };
  return body.choices[0]!.message.content ?? "";
}

/** A schema whose answers cannot end within the token budget (minItems), mixing keys, strings and integers. */
const SCHEMA = {
  type: "object",
  properties: {
    people: {
      type: "array",
      minItems: 10000,
      items: {
        type: "object",
        properties: { name: { type: "string" }, age: { type: "integer" }, city: { type: "string" } },
        required: ["name", "age", "city"],
        additionalProperties: false,
      },
    },
  },
  required: ["people"],
  additionalProperties: false,
};

/** A well-formed start of an answer to SCHEMA, as a trained model would write it (random weights write noise). */
const TYPICAL_ANSWER = JSON.stringify(
  {
    people: [
      { name: "Ada Lovelace", age: 36, city: "London" },
      { name: "Alan Turing", age: 41, city: "Wilmslow" },
      { name: "Grace Hopper", age: 85, city: "Arlington" },
      { name: "Edsger Dijkstra", age: 72, city: "Nuenen" },
    ],
  },
  null,
  1,
).slice(0, -4);

/** The mask alone, replayed over `text`'s tokens: per-step apply() times in ms. */
function maskReplay(tok: Tokenizer, vocab: ConstraintVocab, text: string): number[] {
  const c = new JsonConstraint(SCHEMA, vocab);
  const logits = new Float32Array(tok.vocabSize);
  const times: number[] = [];
  for (const id of tok.encode(text, { addSpecialTokens: false })) {
    logits.fill(0);
    const t0 = performance.now();
    c.apply(logits);
    times.push(performance.now() - t0);
    if (logits[id] === -Infinity || !c.accept(id)) throw new Error(`the mask refused ${JSON.stringify(tok.decode([id]))} of a valid answer`);
  }
  return times;
}

const rows: BenchmarkRow[] = [];
const fmt = (v: number, d = 1) => v.toFixed(d);
const signed = (v: number) => `${v >= 0 ? "+" : ""}${fmt(v)}`;

const tmp = mkdtempSync(join(tmpdir(), "rmlx-bench-serve-"));
const modelName = "qwen3-bench";
const modelDir = join(tmp, modelName);
const serverDb = join(tmp, "server.db");
const ssdDir = join(tmp, "kv-ssd");
const shapeText =
  `qwen3 ${shapeName} (h${shape.hiddenSize} l${shape.layers}) ${bits ? `q${bits}` : "bf16"}` + (kvQuant ? ` kv ${kvQuant}` : "");
let server: Server | undefined;
try {
  const t0 = performance.now();
  const weightBytes = writeRandomQwen3(modelDir, shape, bits);
  console.log(
    `model: random-weight ${shapeText}, vocab 151936, ${(weightBytes / 2 ** 20).toFixed(0)} MiB of weights ` +
      `(written in ${fmt((performance.now() - t0) / 1000)} s); ${cpus().length} CPUs, load average ${loadavg().map((v) => v.toFixed(1)).join(" ")}`,
  );
  server = await startServer(modelDir, serverDb, ssdDir);
  // The first request loads the model; nothing measured waits for that, nor for the work a fresh server does
  // while idle (making its KV cache resident): the figures are a settled server's.
  await streamCompletion(server.url, modelName, randomIds(4), 2);
  await settled(server);
  console.log(`server KV cache: ${kvQuant ?? "the server's default codec"}, ${await kvBudget(server.url)}`);

  console.log(
    `\nconcurrency: ${promptLen}-token prompts (distinct), ${genTokens} tokens each, greedy, ignore_eos; ` +
      `${rounds} rounds (medians; TTFT percentiles over all requests)`,
  );
  // Server CPU time per generated token does not depend on what else the machine runs, unlike wall time.
  console.log(
    `${"clients".padEnd(8)}${"decode tok/s".padStart(14)}${"overall tok/s".padStart(15)}${"TTFT p50".padStart(11)}` +
      `${"TTFT p95".padStart(11)}${"wall s".padStart(9)}${"CPU ms/token".padStart(14)}`,
  );
  interface Round {
    decodeTps: number;
    overallTps: number;
    wallS: number;
    ttft: number[];
    cpuS: number;
    tokens: number;
  }
  const byLevel = new Map<number, Round[]>(levels.map((c) => [c, []]));
  // Rounds go over every level in turn, so that a change in the machine's load reaches all levels alike.
  for (let round = 0; round < rounds; round++) {
    for (const c of levels) {
      const prompts = Array.from({ length: c }, () => randomIds(promptLen));
      const cpu0 = server.cpuSeconds();
      const start = performance.now();
      const results = await Promise.all(prompts.map((p) => streamCompletion(server!.url, modelName, p, genTokens)));
      const end = Math.max(...results.map((r) => r.lastMs));
      const tokens = results.reduce((s, r) => s + r.tokens, 0);
      byLevel.get(c)!.push({
        // Each client's own decode rate (first token to last), summed: the batch's decode throughput. A window
        // over all clients would also count prefill steps of clients admitted later, while earlier ones wait.
        decodeTps: results.reduce((s, r) => s + ((r.tokens - 1) * 1000) / (r.lastMs - r.firstMs), 0),
        overallTps: (tokens * 1000) / (end - start),
        wallS: (end - start) / 1000,
        ttft: results.map((r) => r.firstMs - r.sentMs),
        cpuS: server.cpuSeconds() - cpu0,
        tokens,
      });
    }
  }
  const decodeByLevel = new Map<number, number>();
  for (const c of levels) {
    const rs = byLevel.get(c)!;
    const decodeTps = median(rs.map((r) => r.decodeTps));
    const ttft = rs.flatMap((r) => r.ttft);
    const cpuPerToken = (rs.reduce((s, r) => s + r.cpuS, 0) * 1000) / rs.reduce((s, r) => s + r.tokens, 0);
    decodeByLevel.set(c, decodeTps);
    console.log(
      `${String(c).padEnd(8)}${fmt(decodeTps, 2).padStart(14)}${fmt(median(rs.map((r) => r.overallTps)), 2).padStart(15)}` +
        `${`${fmt(median(ttft), 0)} ms`.padStart(11)}${`${fmt(quantile(ttft, 0.95), 0)} ms`.padStart(11)}` +
        `${fmt(median(rs.map((r) => r.wallS))).padStart(9)}${fmt(cpuPerToken).padStart(14)}`,
    );
    const sh = `${shapeText}, ${c} clients, ${genTokens} tokens`;
    rows.push(
      { name: "serve aggregate decode", shape: sh, figure: decodeTps, unit: "tok/s" },
      { name: "serve TTFT p50", shape: sh, figure: median(ttft), unit: "ms", higherIsBetter: false },
      { name: "serve TTFT p95", shape: sh, figure: quantile(ttft, 0.95), unit: "ms", higherIsBetter: false },
    );
    if (Number.isFinite(cpuPerToken)) rows.push({ name: "serve CPU per token", shape: sh, figure: cpuPerToken, unit: "ms", higherIsBetter: false });
  }
  const lo = Math.min(...levels);
  const hi = Math.max(...levels);
  if (hi > lo) {
    const ratio = decodeByLevel.get(hi)! / decodeByLevel.get(lo)!;
    console.log(`aggregate decode, ${hi} clients vs ${lo}: ${fmt(ratio, 2)}x`);
    rows.push({ name: `serve decode scaling ${hi} vs ${lo} clients`, shape: shapeText, figure: ratio, unit: "x" });
  }

  if (prefixLen > 0) {
    const prefix = randomIds(prefixLen);
    const cold = await streamCompletion(server.url, modelName, [...prefix, ...randomIds(16)], 1);
    const warm = await streamCompletion(server.url, modelName, [...prefix, ...randomIds(16)], 1);
    // A graceful stop writes the RAM prefix cache to the SSD tier; the new server has nothing in RAM.
    await server.stop();
    server = await startServer(modelDir, serverDb, ssdDir);
    await streamCompletion(server.url, modelName, randomIds(4), 2);
    await settled(server);
    const disk = await streamCompletion(server.url, modelName, [...prefix, ...randomIds(16)], 1);
    disk.diskTokens = await diskCachedTokens(server.url);
    const [coldMs, warmMs, diskMs] = [cold, warm, disk].map((r) => r.firstMs - r.sentMs) as [number, number, number];
    console.log(
      `\nprefix cache: ${prefixLen}-token shared prefix + 16-token question; TTFT cold ${fmt(coldMs, 0)} ms ` +
        `(${cold.cachedTokens} of ${cold.promptTokens} prompt tokens cached), RAM hit ${fmt(warmMs, 0)} ms ` +
        `(${warm.cachedTokens} cached): ${fmt(coldMs / warmMs, 1)}x; after a restart, SSD hit ${fmt(diskMs, 0)} ms ` +
        `(${disk.cachedTokens} cached, ${disk.diskTokens} from disk): ${fmt(coldMs / diskMs, 1)}x`,
    );
    if (disk.diskTokens !== disk.cachedTokens || disk.cachedTokens === 0) throw new Error("after the restart the prefix was not read back from the SSD tier");
    const sh = `${shapeText}, ${prefixLen}-token prefix`;
    rows.push(
      { name: "serve prefix TTFT cold", shape: sh, figure: coldMs, unit: "ms", higherIsBetter: false },
      { name: "serve prefix TTFT warm", shape: sh, figure: warmMs, unit: "ms", higherIsBetter: false },
      { name: "serve prefix TTFT gain", shape: sh, figure: coldMs / warmMs, unit: "x" },
      { name: "serve prefix TTFT ssd after restart", shape: sh, figure: diskMs, unit: "ms", higherIsBetter: false },
      { name: "serve prefix TTFT ssd gain", shape: sh, figure: coldMs / diskMs, unit: "x" },
    );
  }

  // Alternating plain and constrained requests, so that a change in the machine's load hits both alike. One
  // constrained request first builds the server's vocabulary index (once per tokenizer), outside the figures.
  const rf = { type: "json_schema", json_schema: { name: "people", schema: SCHEMA } };
  await chat(server.url, modelName, 2, rf);
  let jsonText = "";
  const cpu = { plain: 0, json: 0 };
  for (let i = 0; i < jsonPairs; i++) {
    let c0 = server.cpuSeconds();
    await chat(server.url, modelName, jsonTokens);
    cpu.plain += server.cpuSeconds() - c0;
    c0 = server.cpuSeconds();
    jsonText = await chat(server.url, modelName, jsonTokens, rf);
    cpu.json += server.cpuSeconds() - c0;
  }
  await server.stop();
  server = undefined;
  // Stopping the server flushed its per-request rows; the timed chat ones are plain, constrained, plain, ...
  const db = new Database(serverDb, { readonly: true });
  const chatRows = (
    db.query("SELECT generated_tokens AS n, decode_tps AS tps FROM requests WHERE api = 'chat' ORDER BY id").all() as {
      n: number;
      tps: number;
    }[]
  ).slice(1);
  db.close();
  if (chatRows.length !== 2 * jsonPairs) throw new Error(`expected ${2 * jsonPairs} timed chat rows in the server's database, found ${chatRows.length}`);
  const plainRows = chatRows.filter((_, i) => i % 2 === 0);
  const jsonRows = chatRows.filter((_, i) => i % 2 === 1);
  const plainMs = median(plainRows.map((r) => 1000 / r.tps));
  const jsonMs = median(jsonRows.map((r) => 1000 / r.tps));
  const cpuPlain = (cpu.plain * 1000) / plainRows.reduce((s, r) => s + r.n, 0);
  const cpuJson = (cpu.json * 1000) / jsonRows.reduce((s, r) => s + r.n, 0);
  const cpuOverhead = (100 * (cpuJson - cpuPlain)) / cpuPlain;

  const tok = Tokenizer.fromFiles(join(TOKENIZER_DIR, "tokenizer.json"), await Bun.file(join(TOKENIZER_DIR, "tokenizer_config.json")).json());
  const tp = performance.now();
  const vocab = new ConstraintVocab(tok.allTokenBytes(), tok.specialTokenIds, tok.eosTokenIds);
  const prepMs = performance.now() - tp;
  const mask = maskReplay(tok, vocab, TYPICAL_ANSWER);
  const maskMs = median(mask);
  const maskMean = mask.reduce((a, b) => a + b, 0) / mask.length;
  const overhead = (100 * (jsonMs - plainMs)) / plainMs;
  console.log(
    `\njson_schema decoding (${jsonTokens} tokens, generated ${jsonRows.map((r) => r.n).join("/")}; median of ${jsonPairs}): ` +
      `decode step ${fmt(plainMs)} ms plain, ${fmt(jsonMs)} ms constrained: ${signed(overhead)}%; ` +
      `server CPU per request token ${fmt(cpuPlain)} ms plain, ${fmt(cpuJson)} ms constrained: ${signed(cpuOverhead)}%`,
  );
  console.log(
    `mask alone over a typical answer's ${mask.length} tokens: median ${fmt(maskMs, 2)} ms, mean ${fmt(maskMean, 2)} ms, ` +
      `p95 ${fmt(quantile(mask, 0.95), 2)} ms (mean ${fmt((100 * maskMean) / plainMs)}% of a plain step); ` +
      `vocabulary preparation once per tokenizer ${fmt(prepMs, 0)} ms`,
  );
  console.log(`constrained answer: ${JSON.stringify(jsonText.slice(0, 120))}${jsonText.length > 120 ? "..." : ""}`);
  const sh = `${shapeText}, ${jsonTokens} tokens`;
  rows.push(
    { name: "serve decode step plain", shape: sh, figure: plainMs, unit: "ms", higherIsBetter: false },
    { name: "serve decode step json_schema", shape: sh, figure: jsonMs, unit: "ms", higherIsBetter: false },
    { name: "serve json_schema step overhead", shape: sh, figure: overhead, unit: "%", higherIsBetter: false },
    ...(Number.isFinite(cpuOverhead)
      ? [{ name: "serve json_schema CPU overhead", shape: sh, figure: cpuOverhead, unit: "%", higherIsBetter: false }]
      : []),
    { name: "json mask per step mean", shape: `qwen3 vocabulary, list-of-people schema, ${mask.length}-token answer`, figure: maskMean, unit: "ms", higherIsBetter: false },
    { name: "json mask mean / plain decode step", shape: sh, figure: (100 * maskMean) / plainMs, unit: "%", higherIsBetter: false },
  );

  if (record) {
    const store = MetricsStore.open(defaultDbPath());
    store.startRun({ kind: "bench", backend: "native", device: `${cpus()[0]?.model ?? "cpu"} x${cpus().length}`, model: shapeText });
    store.recordBenchmarks(rows);
    const recorded = store.enabled;
    store.close();
    if (recorded) console.log(`\n${rows.length} figures recorded in ${store.path}`);
  }
} finally {
  await server?.stop();
  rmSync(tmp, { recursive: true, force: true });
}
