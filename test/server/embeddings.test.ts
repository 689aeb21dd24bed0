// /v1/embeddings through `rmlx serve`, with the official openai client: embedding models served beside a chat
// model, answers checked against sentence-transformers' own embeddings (test/fixtures/embeddings), and the
// request's forms and errors.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { serve, type Served } from "./harness.ts";

const FIXTURES = join(import.meta.dir, "../fixtures");
const EMB = join(FIXTURES, "embeddings");

interface Case {
  prompt_name: string | null;
  texts: string[];
  input_ids: number[][];
  embeddings: number[][];
}
const reference = (name: string) => JSON.parse(readFileSync(join(EMB, name, "reference.json"), "utf8")) as { cases: Case[]; dimension: number };

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! * a[i]!;
    bb += b[i]! * b[i]!;
  }
  return ab / Math.sqrt(aa * bb);
}

function expectCosine(got: ArrayLike<number>, want: ArrayLike<number>): void {
  const c = cosine(got, want);
  if (!(c >= 0.9999)) throw new Error(`cosine ${c}`);
}

let srv: Served;
let openai: OpenAI;
const post = (path: string, body: unknown) => fetch(`${srv.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

beforeAll(async () => {
  const models = ["qwen3_last", "roberta_cls", "gemma3_dense"].flatMap((n) => ["--model", join(EMB, n)]);
  srv = await serve([...models, "--model", join(FIXTURES, "models", "qwen3"), "--alias", "q", "--alias", "r", "--alias", "g", "--alias", "chat", "--kv-memory", "64MiB"]);
  openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
}, 60_000);

afterAll(async () => {
  await srv?.stop();
});

describe("/v1/embeddings", () => {
  const q = reference("qwen3_last").cases[0]!;

  test("float: every input in one request, cosine >= 0.9999 against sentence-transformers; usage counts the tokens", async () => {
    const r = await openai.embeddings.create({ model: "q", input: q.texts });
    expect(r.object).toBe("list");
    expect(r.model).toBe("q");
    expect(r.data.map((d) => d.index)).toEqual(q.texts.map((_, i) => i));
    r.data.forEach((d, i) => expectCosine(d.embedding, q.embeddings[i]!));
    const tokens = q.input_ids.reduce((a, ids) => a + ids.length, 0);
    expect(r.usage).toEqual({ prompt_tokens: tokens, total_tokens: tokens });
  });

  test("base64 holds the same float32 values; a batch equals its inputs one by one", async () => {
    const f = await openai.embeddings.create({ model: "q", input: q.texts, encoding_format: "float" });
    const raw = await post("/v1/embeddings", { model: "q", input: q.texts, encoding_format: "base64" });
    const b = (await raw.json()) as { data: { embedding: string }[] };
    b.data.forEach((d, i) => {
      const bytes = Buffer.from(d.embedding, "base64");
      const v = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
      expect(Array.from(v)).toEqual(f.data[i]!.embedding);
    });
    // the openai client asks for base64 by default and decodes it
    const viaClient = await openai.embeddings.create({ model: "q", input: q.texts });
    expect(viaClient.data.map((d) => d.embedding)).toEqual(f.data.map((d) => d.embedding));
    for (let i = 0; i < q.texts.length; i++) {
      const one = await openai.embeddings.create({ model: "q", input: q.texts[i]!, encoding_format: "float" });
      expect(cosine(one.data[0]!.embedding, f.data[i]!.embedding)).toBeGreaterThan(0.999999);
    }
  });

  test("token ids: one list or several give what the texts give", async () => {
    const many = await openai.embeddings.create({ model: "q", input: q.input_ids, encoding_format: "float" });
    many.data.forEach((d, i) => expectCosine(d.embedding, q.embeddings[i]!));
    const one = await openai.embeddings.create({ model: "q", input: q.input_ids[1]!, encoding_format: "float" });
    expectCosine(one.data[0]!.embedding, q.embeddings[1]!);
  });

  test("prompt_name puts the model's prompt before each text", async () => {
    const c = reference("qwen3_last").cases.find((x) => x.prompt_name === "query")!;
    const r = await post("/v1/embeddings", { model: "q", input: c.texts, prompt_name: "query", encoding_format: "float" });
    const body = (await r.json()) as { data: { embedding: number[] }[] };
    body.data.forEach((d, i) => expectCosine(d.embedding, c.embeddings[i]!));
    const g = reference("gemma3_dense").cases.find((x) => x.prompt_name === "document")!;
    const rg = (await (await post("/v1/embeddings", { model: "g", input: g.texts, prompt_name: "document", encoding_format: "float" })).json()) as typeof body;
    rg.data.forEach((d, i) => expectCosine(d.embedding, g.embeddings[i]!));
  });

  test("dimensions: the first N values renormalised (Matryoshka), for normalised models only", async () => {
    const r = await openai.embeddings.create({ model: "q", input: q.texts, dimensions: 8, encoding_format: "float" });
    r.data.forEach((d, i) => {
      expect(d.embedding.length).toBe(8);
      expectCosine(d.embedding, q.embeddings[i]!.slice(0, 8));
      expect(Math.hypot(...d.embedding)).toBeCloseTo(1, 5);
    });
    const over = await post("/v1/embeddings", { model: "q", input: "x", dimensions: 33 });
    expect(over.status).toBe(400);
    expect(((await over.json()) as { error: { message: string } }).error.message).toContain("dimensions 33 is more than model 'q' gives (32)");
    const cls = await post("/v1/embeddings", { model: "r", input: "x", dimensions: 16 });
    expect(cls.status).toBe(400);
    expect(((await cls.json()) as { error: { message: string } }).error.message).toContain("not normalised");
    const rc = reference("roberta_cls").cases[0]!;
    const same = await openai.embeddings.create({ model: "r", input: rc.texts, dimensions: 32, encoding_format: "float" });
    same.data.forEach((d, i) => expectCosine(d.embedding, rc.embeddings[i]!));
  });

  test("an input over the model's limit is a 400 unless the request says truncate", async () => {
    const long = "the robot and the sea ".repeat(60);
    const refused = await post("/v1/embeddings", { model: "q", input: long });
    expect(refused.status).toBe(400);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(/input 0 has \d+ tokens, more than this model's limit of 128; .*"truncate": true/);
    const cut = await post("/v1/embeddings", { model: "q", input: [long, "rain"], truncate: true, encoding_format: "float" });
    expect(cut.status).toBe(200);
    const body = (await cut.json()) as { usage: { prompt_tokens: number } };
    expect(body.usage.prompt_tokens).toBe(128 + q.input_ids[2]!.length);
  });

  test("bad input gets a clear 400", async () => {
    const cases: [unknown, RegExp][] = [
      [{ model: "q", input: "" }, /input/],
      [{ model: "q", input: [] }, /input/],
      [{ model: "q", input: ["a", ""] }, /input/],
      [{ model: "q", input: [1.5, 2] }, /input/],
      [{ model: "q", input: [[1, 2], []] }, /input/],
      [{ model: "q", input: [100000] }, /token 100000 is outside the vocabulary/],
      [{ model: "q", input: "x", prompt_name: "nope" }, /prompt_name 'nope' is not a prompt of model 'q' \(document, query\)/],
      [{ model: "q", input: "x", encoding_format: "int8" }, /encoding_format/],
    ];
    for (const [body, msg] of cases) {
      const r = await post("/v1/embeddings", body);
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(msg);
    }
  });

  test("chat and embedding models side by side: each refuses the other's endpoint with a 400 saying why", async () => {
    const chat = await post("/v1/embeddings", { model: "chat", input: "hello" });
    expect(chat.status).toBe(400);
    const e = ((await chat.json()) as { error: { message: string; param: string } }).error;
    expect(e.message).toContain("model 'chat' does not produce embeddings: it is a causal language model");
    expect(e.param).toBe("model");
    const gen = await post("/v1/chat/completions", { model: "q", messages: [{ role: "user", content: "hi" }] });
    expect(gen.status).toBe(400);
    expect(((await gen.json()) as { error: { message: string } }).error.message).toContain("model 'q' is an embedding model: it answers /v1/embeddings");
    const ok = await post("/v1/completions", { model: "chat", prompt: "The", max_tokens: 2 });
    expect(ok.status).toBe(200);
  });
});
