// Speculative decoding against plain decoding of the same target: greedy output token for token, alone and in a
// continuous batch (with sequences that do not speculate in the same steps, and the prefix cache on), on every
// attention-only model fixture and the built-in model, with drafts that agree fully (the model itself), partly
// (a lower-bit copy) and rarely (another random model). Hybrid targets and drafts are refused with one line.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { builtinModelDir } from "../../src/builtin/index.ts";
import { convert } from "../../src/convert/convert.ts";
import { loadDraft, speculatorFor, type DraftModel } from "../../src/engine/draft_model.ts";
import { cacheForTokens, generate } from "../../src/engine/generate.ts";
import { KvCache } from "../../src/engine/kv/kv_cache.ts";
import { Scheduler } from "../../src/engine/scheduler.ts";
import { encodePrompt, loadSession, sessionModel, type Session } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING, type EngineEvent, type GenerateRequest, type SamplingParams } from "../../src/engine/types.ts";
import { type Drafter, Speculator } from "../../src/engine/speculative.ts";
import { expectTargetDistribution, targetJointDistribution } from "./distribution.ts";

const ROOT = join(import.meta.dir, "../fixtures/models");
const names = (index: string) => (JSON.parse(readFileSync(index, "utf8")) as { fixtures: { name: string }[] }).fixtures.map((f) => f.name);
const HYBRIDS = names(join(ROOT, "hybrid/INDEX.json")).map((n) => `hybrid/${n}`);
const FIXTURES = [...names(join(ROOT, "INDEX.json")), ...HYBRIDS];
const PROMPTS = (name: string) =>
  (JSON.parse(readFileSync(join(ROOT, name, "reference.json"), "utf8")) as { prompts: { ids: number[] }[] }).prompts.map((p) => p.ids);
const GREEDY: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0 };
const GEN = 24;

const tmp = mkdtempSync(join(tmpdir(), "rmlx-spec-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const sessions = new Map<string, Session>();
function session(dir: string): Session {
  let s = sessions.get(dir);
  if (!s) sessions.set(dir, (s = loadSession(dir)));
  return s;
}

/** One greedy request run alone: plainly, or with `draft` proposing k tokens every step. */
function run(target: Session, prompt: number[], draft?: DraftModel, k = 3, maxTokens = GEN, sampling = GREEDY) {
  const cache = cacheForTokens(target.model, prompt.length + maxTokens + 8, "f32", 2);
  const speculator = draft ? speculatorFor(draft, k, cache.capacityTokens, 1, true) : undefined;
  try {
    const model = { ...sessionModel(target, cache), speculator };
    return generate(model, { prompt, maxTokens, sampling, stop: [], stopTokenIds: [], ignoreEos: true });
  } finally {
    speculator?.dispose();
    cache.dispose();
  }
}

/** Requests run together on one scheduler (batch of all of them); their tokens by request. */
function runBatch(target: Session, reqs: Omit<GenerateRequest, "model" | "stop" | "stopTokenIds">[], draft?: DraftModel, k = 3, prefixCache = false) {
  const cache = new KvCache(target.model.backend, target.model.layers, { blockSize: 16, numBlocks: 256, windowed: true, sizing: { sequences: 8, stepTokens: 512 }, stateSlots: 128 });
  const speculator = draft ? speculatorFor(draft, k, cache.capacityTokens, 8, true) : undefined;
  const out = new Map<string, number[]>();
  const done = new Map<string, Extract<EngineEvent, { type: "done" }>>();
  try {
    const sched = new Scheduler({ ...sessionModel(target, cache), speculator }, { maxRunning: 8, maxWaiting: 64, prefillChunk: 512, prefixCache }, (ev) => {
      if (ev.type === "delta") out.set(ev.id, [...(out.get(ev.id) ?? []), ...ev.tokenIds]);
      if (ev.type === "done") done.set(ev.id, ev);
      if (ev.type === "error") throw new Error(ev.message);
    });
    for (const r of reqs) sched.submit({ ...r, model: "", stop: [], stopTokenIds: [] });
    while (sched.step());
    expect(cache.allocator.numUsed).toBe(sched.prefix ? cache.allocator.numUsed : 0);
    return { out, done };
  } finally {
    speculator?.dispose();
    cache.dispose();
  }
}

describe("speculative decoding, greedy", () => {
  let builtinQ3: string;
  beforeAll(async () => {
    builtinQ3 = join(tmp, "builtin_q3");
    await convert({ model: builtinModelDir(), out: builtinQ3, force: true, quantize: true, mode: "affine", bits: 3, groupSize: 64, dequantize: false });
   }, 60_000);

  for (const name of FIXTURES) {
    test(`${name}: equal to plain decoding alone, with itself, a 3-bit qwen3 and a llama as draft`, () => {
      const target = session(join(ROOT, name));
      // A hybrid cannot be a draft: its state cannot be cut back.
      for (const draftName of [...(HYBRIDS.includes(name) ? [] : [name]), "qwen3_q3", "llama_gqa"]) {
        const draft = loadDraft(target, join(ROOT, draftName));
        for (const prompt of PROMPTS(name)) {
          const plain = run(target, prompt).tokenIds;
          for (const k of [1, 4]) {
            const r = run(target, prompt, draft, k);
            expect(r.tokenIds).toEqual(plain);
            expect(r.speculative!.draftTokens).toBeGreaterThan(0);
            if (draftName === name) expect(r.speculative!.acceptedTokens).toBe(r.speculative!.draftTokens);
          }
        }
      }
    }, 60_000);
  }

  test("the built-in model with a 3-bit copy of itself: equal, and many proposals kept", () => {
    const target = session(builtinModelDir());
    const draft = loadDraft(target, builtinQ3);
    const prompts = ["What is the package ripgrep?", "What does the command ls do?", "What does git depend on?"];
    for (const text of prompts) {
      const prompt = encodePrompt(target, { messages: [{ role: "user", content: text }] }).ids;
      const plain = run(target, prompt, undefined, 0, 48);
      const r = run(target, prompt, draft, 4, 48);
      expect(r.tokenIds).toEqual(plain.tokenIds);
      expect(r.speculative!.acceptedTokens / r.speculative!.draftTokens).toBeGreaterThan(0.25);
    }
  }, 60_000);

  for (const name of ["qwen3", "gemma3", "gemma4_kv", "hybrid/qwen3_5_dense", "hybrid/qwen3_next"]) {
    test(`${name}: in one batch with sequences that do not speculate, per-sequence draft lengths, prefix cache on`, () => {
      const target = session(join(ROOT, name));
      const draft = loadDraft(target, join(ROOT, "qwen3_q3"));
      const [a, b] = PROMPTS(name);
      const reqs = [
        { id: "a", prompt: a!, maxTokens: GEN, sampling: GREEDY, ignoreEos: true },
        // Logprobs run plain steps: this one never speculates, in the same steps as the others.
        { id: "b", prompt: b!, maxTokens: GEN, sampling: { ...GREEDY, logprobs: true }, ignoreEos: true },
        // Few tokens left: its drafts are shorter than k.
        { id: "c", prompt: [...a!, 5, 6], maxTokens: 3, sampling: GREEDY, ignoreEos: true },
        // Shares a's prompt: with the prefix cache it starts from a's blocks.
        { id: "d", prompt: [...a!, 7], maxTokens: GEN, sampling: GREEDY, ignoreEos: true },
      ];
      const plain = runBatch(target, reqs).out;
      for (const prefix of [false, true]) {
        const { out, done } = runBatch(target, reqs, draft, 4, prefix);
        for (const r of reqs) expect(out.get(r.id)).toEqual(plain.get(r.id)!);
        expect(done.get("b")!.speculative!.draftTokens).toBe(0);
        expect(done.get("a")!.speculative!.draftTokens).toBeGreaterThan(0);
      }
    }, 60_000);
  }

  test("a draft with recurrent state, or of another tokenizer, is refused with one line", () => {
    const hybrid = join(ROOT, "hybrid/qwen3_5_dense");
    expect(() => loadDraft(session(join(ROOT, "qwen3")), hybrid)).toThrow(/linear-attention layers/);
    expect(() => loadDraft(session(builtinModelDir()), join(ROOT, "qwen3"))).toThrow(/its tokenizer is not the target's \(403 tokens against the target's 4096\)/);
  });
});

describe("speculative decoding, sampled", () => {
  // A random-weight fixture at temperature 1 and top_k 3: every one of the 27 sequences of three tokens is likely.
  // Drafts: a 3-bit copy (close to the target) and an unrelated random model (far from it: many rejections,
  // so many draws from the residual).
  const T = 1;
  const K = 3;
  const N = 2000;
  for (const draftName of ["qwen3_q3", "llama_gqa"]) test(`with ${draftName} as draft, the first three tokens of ${N} seeded requests follow the target's own distribution (chi-square, p > 0.001)`, () => {
    const target = session(join(ROOT, "qwen3"));
    const draft = loadDraft(target, join(ROOT, draftName));
    const prompt = PROMPTS("qwen3")[1]!;

    // The exact joint distribution of (t1, t2, t3) under the target alone.
    const expected = targetJointDistribution(target.model, prompt, K, T);

    // maxTokens 4: t1 comes from the prompt's step, then one round proposes two tokens, so t2 and t3 are both
    // verified proposals or residual draws.
    const sampling = { ...DEFAULT_SAMPLING, temperature: T, topK: K };
    const observed = new Map<string, number>();
    for (let start = 0; start < N; start += 64) {
      const reqs = Array.from({ length: Math.min(64, N - start) }, (_, i) => ({
        id: String(start + i),
        prompt,
        maxTokens: 4,
        sampling: { ...sampling, seed: start + i + 1 },
        ignoreEos: true,
      }));
      const { out, done } = runBatch(target, reqs, draft, 3);
      for (const r of reqs) {
        expect(done.get(r.id)!.speculative!.draftTokens).toBeGreaterThan(0);
        const key = out.get(r.id)!.slice(0, 3).join(",");
        observed.set(key, (observed.get(key) ?? 0) + 1);
      }
    }
    expectTargetDistribution(expected, observed, N);
  }, 120_000);
});

describe("adaptive policy across sequences", () => {
  // A drafter that is never run here: the policy's decisions are driven through plan / settle / release.
  const idle: Drafter = {
    contextLength: 4096,
    wantsHidden: false,
    prepare: () => true,
    forward: () => new Float32Array(0),
    settle: () => {},
    release: () => {},
    dispose: () => {},
  };
  const plan = (sp: Speculator, key: object, generated: number) => sp.plan(key, GREEDY, 40 + generated, generated, 100, 1);

  test("after a sequence whose draft was never right, the next waits before its first proposal; an accepted token clears that", () => {
    const sp = new Speculator(idle, 4, 0.05);
    sp.observeStep(10, 0);
    const a = {};
    expect(plan(sp, a, 1)).toBe(1); // untried draft: one token
    sp.settle(a, 41, 1, 0);
    sp.release(a);
    const b = {};
    expect(plan(sp, b, 1)).toBe(0);
    expect(plan(sp, b, 7)).toBe(0);
    expect(plan(sp, b, 8)).toBe(1);
    sp.settle(b, 50, 1, 0);
    sp.release(b);
    const c = {};
    expect(plan(sp, c, 15)).toBe(0); // the wait doubled
    expect(plan(sp, c, 16)).toBe(1);
    sp.settle(c, 58, 1, 1); // right once
    sp.release(c);
    expect(plan(sp, {}, 1)).toBeGreaterThan(0);
  });

  test("a sequence that ends without proposing leaves the wait as it was", () => {
    const sp = new Speculator(idle, 4, 0.05);
    sp.observeStep(10, 0);
    const a = {};
    plan(sp, a, 1);
    sp.release(a); // proposed nothing (its drafts were not settled)
    expect(plan(sp, {}, 1)).toBe(1);
  });
});
