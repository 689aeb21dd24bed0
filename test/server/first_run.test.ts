// A first run against the real engine: `rmlx serve` with no --model serves the built-in model, and the README's
// curl example (no temperature, no max_tokens) gets the README's answer, since the model's generation_config.json
// asks for greedy decoding; --chat-template and --ctx-size reach the engine.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import reference from "../fixtures/default_model_reference.json";
import { serve, type Served } from "./harness.ts";

// Small KV pools: these tests need a few hundred tokens, and a smaller pool starts sooner.
const KV = ["--kv-memory", "16MiB"];

const post = (url: string, path: string, body: object) =>
  fetch(`${url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

describe("the built-in model with the server's defaults", () => {
  let s: Served;
  beforeAll(async () => {
    s = await serve(KV);
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
  });

  test("the README's curl example gets the README's answer", async () => {
    const ref = reference.answers.find((a) => a.question === "What is the package ripgrep?")!;
    expect(ref.text).toBe("ripgrep is a Debian package in the utils section: recursively searches directories for a regex pattern.");
    // Twice: greedy, so the same answer each time.
    for (let i = 0; i < 2; i++) {
      const r = await post(s.url, "/v1/chat/completions", { model: "rmlx-default", messages: [{ role: "user", content: ref.question }] });
      expect(r.status).toBe(200);
      const body = (await r.json()) as { choices: { message: { content: string }; finish_reason: string }[] };
      expect(body.choices[0]!.message.content).toBe(ref.text);
      expect(body.choices[0]!.finish_reason).toBe("stop");
    }
  });

  test("Anthropic's Messages API too, with no temperature", async () => {
    const ref = reference.answers.find((a) => a.question === "What does the command ls do?")!;
    const r = await post(s.url, "/v1/messages", { model: "claude-sonnet-4-5", max_tokens: 64, messages: [{ role: "user", content: ref.question }] });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { content: { text: string }[] }).content[0]!.text).toBe(ref.text);
  });
});

describe("--chat-template and --ctx-size on the real engine", () => {
  let s: Served;
  const dir = mkdtempSync(join(tmpdir(), "rmlx-template-"));
  const template = join(dir, "plain.jinja");
  beforeAll(async () => {
    writeFileSync(template, "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}");
    // --prompt-overflow error: the built-in model would otherwise cut a long prompt to fit.
    s = await serve([...KV, "--chat-template", template, "--ctx-size", "200", "--prompt-overflow", "error"]);
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("the template file renders the prompt instead of the model's own", async () => {
    const tok = await post(s.url, "/tokenize", { messages: [{ role: "user", content: "hi" }] });
    const { tokens, max_model_len } = (await tok.json()) as { tokens: number[]; max_model_len: number };
    expect(max_model_len).toBe(200);
    const text = await post(s.url, "/detokenize", { tokens });
    expect(((await text.json()) as { prompt: string }).prompt).toBe("[user] hi\n[assistant]");
  });

  test("--ctx-size: the context the models route reports, and a longer prompt is refused", async () => {
    const models = (await (await fetch(`${s.url}/v1/models`)).json()) as { data: { max_model_len: number }[] };
    expect(models.data[0]!.max_model_len).toBe(200);
    const r = await post(s.url, "/v1/completions", { prompt: "word ".repeat(300), max_tokens: 1 });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(/context is 200 tokens/);
  });
});
