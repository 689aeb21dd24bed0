// tool_choice required / named on a Gemma 3 model (pythonic tool calls): a tiny random gemma3_text with Gemma 3's
// real tokenizer and chat template, so the forced call goes through the full vocabulary and the server's parser.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { copyFileSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import { makeTinyModel } from "../models/tiny_model.ts";
import { anthropicForcedCall, FORCED_CHOICES, forcedCall, WEATHER_TOOL } from "./forced_calls.ts";
import { metric, serveModel, type Served } from "./harness.ts";

const TOKENIZER_DIR = join(import.meta.dir, "..", "..", "node_modules", "@lenml", "tokenizer-gemma3", "models");

let dir: string;
let name: string;
let srv: Served;

beforeAll(async () => {
  dir = makeTinyModel({ modelType: "gemma3_text", vocab: 262144, extra: { max_position_embeddings: 2048, eos_token_id: [1, 106] } }, 3);
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(TOKENIZER_DIR, f), join(dir, f));
  name = basename(dir);
  srv = await serveModel(dir, ["--kv-memory", "128MiB", "--prefill-chunk", "512"]);
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const TOOLS = [WEATHER_TOOL, { type: "function" as const, function: { name: "get_time", parameters: { type: "object", properties: {} } } }];

describe("forced pythonic tool calls through the server", () => {

  test("tool_choice required and a named tool give one parsed call, even from a random model", async () => {
    const openai = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: "x", maxRetries: 0 });
    for (const tool_choice of FORCED_CHOICES) {
      const { call, args } = await forcedCall(openai, name, TOOLS, tool_choice, 40);
      expect(args).toEqual(call.function.name === "get_weather" ? { city: expect.stringMatching(/^(Paris|Rome)$/) } : {});
    }
    await anthropicForcedCall(srv.url, name, { type: "any" }, 40);
  }, 60_000);

  // The engine reports its pools after it has stepped, so this runs after the requests above.
  test("/metrics reports the sliding-window layers' pools next to the full-attention ones", async () => {
    expect(await metric(srv.url, "rmlx_kv_blocks_total")).toBeGreaterThan(0);
    expect(await metric(srv.url, "rmlx_kv_window_blocks_total")).toBeGreaterThan(0);
    expect(await metric(srv.url, "rmlx_kv_bytes_total")).toBeGreaterThan(0);
    expect(await metric(srv.url, "rmlx_kv_bytes_used")).toBeGreaterThanOrEqual(0);
  });
});
