// A request body as Claude Code sends it (recorded from `claude -p "What is the package ripgrep?"` against
// `rmlx serve --log-level trace`, version 2.1.197; device and session ids, paths, OS version and date scrubbed),
// replayed against a real server on the built-in model. Its ~37,600 tokens (24 tools, a long system prompt, system
// entries among the messages, adaptive thinking, context_management, output_config, metadata) are far more than
// the built-in model's 1,024: the server cuts the prompt to fit and answers end_turn, which Claude Code takes as a
// finished reply. With --prompt-overflow error the same body is a 400 naming the context.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import recorded from "../fixtures/clients/claude_code_messages.json";
import { serve, waitFor, type Served } from "./harness.ts";

const post = (url: string, body: object) =>
  fetch(`${url}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-api-key": "x", "anthropic-version": "2023-06-01" },
    body: JSON.stringify(body),
  });

/** The data of each SSE event, in order. */
function events(sse: string): { type: string; [k: string]: any }[] {
  return sse
    .split("\n")
    .filter((l) => l.startsWith("data: "))
    .map((l) => JSON.parse(l.slice(6)));
}

describe("Claude Code's request, replayed", () => {
  let s: Served;
  beforeAll(async () => {
    s = await serve(["--kv-memory", "64MiB"]);
  }, 60_000);
  afterAll(async () => {
    await s?.stop();
  });

  test("as recorded (streamed): a well-formed event stream ending in end_turn, the prompt cut to fit with a warning", async () => {
    expect(recorded.stream).toBe(true);
    expect(recorded.tools.length).toBe(24);
    const r = await post(s.url, recorded);
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toContain("text/event-stream");
    const evs = events(await r.text());
    const types = evs.map((e) => e.type);
    expect(types[0]).toBe("message_start");
    expect(types.at(-1)).toBe("message_stop");
    expect(types).toContain("content_block_start");
    expect(types).toContain("content_block_stop");
    const start = evs[0]!.message;
    expect(start.role).toBe("assistant");
    expect(start.model).toBe("rmlx-default");
    const delta = evs.find((e) => e.type === "message_delta")!;
    expect(delta.delta.stop_reason).toBe("end_turn");
    expect(delta.usage.output_tokens).toBeGreaterThan(0);
    const text = evs.filter((e) => e.type === "content_block_delta").map((e) => e.delta.text ?? "").join("");
    expect(text.trim().length).toBeGreaterThan(0);
    // The usage adds up to what the model saw, within its context.
    const u = start.usage;
    expect(u.input_tokens + u.cache_read_input_tokens).toBeLessThan(1024);
    expect(await waitFor(async () => /a prompt of \d{5} tokens was cut to \d+ to fit the context of 1024 tokens/.test(s.stderr()), 2000)).toBe(true);
  }, 60_000);

  test("not streamed: one message with text and end_turn", async () => {
    const r = await post(s.url, { ...recorded, stream: false });
    expect(r.status).toBe(200);
    const m = (await r.json()) as { type: string; content: { type: string; text: string }[]; stop_reason: string };
    expect(m.type).toBe("message");
    expect(m.stop_reason).toBe("end_turn");
    expect(m.content.some((c) => c.type === "text" && c.text.trim().length > 0)).toBe(true);
  }, 60_000);

  test("Claude Code's probe of the server's root answers 200", async () => {
    expect((await fetch(s.url, { method: "HEAD" })).status).toBe(200);
    expect(await (await fetch(s.url)).json()).toMatchObject({ name: "rmlx", models: ["rmlx-default"] });
  });
});

test("with --prompt-overflow error the same body is a 400 naming the context", async () => {
  const s = await serve(["--kv-memory", "16MiB", "--prompt-overflow", "error"]);
  try {
    const r = await post(s.url, { ...recorded, stream: false });
    expect(r.status).toBe(400);
    const e = (await r.json()) as { type: string; error: { type: string; message: string } };
    expect(e.type).toBe("error");
    expect(e.error.type).toBe("invalid_request_error");
    expect(e.error.message).toMatch(/the prompt has \d+ tokens; this model's context is 1024 tokens/);
  } finally {
    await s.stop();
  }
}, 60_000);
