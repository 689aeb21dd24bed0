// --draft-kind mtp: the MTP head of tiny random Qwen3.5 models as the drafter. Greedy output equals plain decoding
// token for token, alone and in a batch with sequences that do not speculate (prefix cache on and off), dense and
// MoE; sampled output keeps the target's distribution; the head's forward matches a float64 reference computed
// here from the formula (families.md 2.8) at every proposal of a run with kept and rejected proposals, which also
// checks that the head's KV holds exactly the entries of the target's kept tokens after each cut back.
import { afterAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { draftSettings } from "../../src/cli/draft_option.ts";
import { loadMtpDraft, type MtpDraft, speculatorFor } from "../../src/engine/draft_model.ts";
import { forwardBatch } from "../../src/engine/forward_batch.ts";
import { cacheForTokens, generate } from "../../src/engine/generate.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { MtpDrafter } from "../../src/engine/mtp_drafter.ts";
import { Scheduler } from "../../src/engine/scheduler.ts";
import { loadSession, sessionModel, type Session } from "../../src/engine/session.ts";
import { type Drafter, Speculator } from "../../src/engine/speculative.ts";
import { DEFAULT_SAMPLING, type EngineEvent, type GenerateRequest, type SamplingParams } from "../../src/engine/types.ts";
import { makeTinyHybrid, type TinyHybridSpec } from "../models/tiny_model.ts";
import { expectTargetDistribution, targetJointDistribution } from "./distribution.ts";

const FIXTURES = join(import.meta.dir, "../fixtures/models");
const TOKENIZER = join(FIXTURES, "hybrid/qwen3_5_dense");
const GREEDY: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0 };
const PROMPTS = [
  [5, 17, 33, 2, 90, 11],
  [300, 12, 7, 7, 41, 129, 64, 3, 250, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29],
];

const dirs: string[] = [];
function tiny(spec: TinyHybridSpec, seed = 1) {
  const m = makeTinyHybrid({ ...spec, tokenizerFrom: TOKENIZER }, seed);
  dirs.push(m.dir);
  return { ...m, session: loadSession(m.dir) };
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** One request alone: plainly, or with the MTP head proposing k tokens every step. */
function run(target: Session, prompt: number[], mtp: MtpDraft | null, k = 3, maxTokens = 32) {
  const cache = cacheForTokens(target.model, prompt.length + maxTokens + 8, "f32", 2);
  const speculator = mtp ? speculatorFor(mtp, k, cache.capacityTokens, 1, true) : undefined;
  try {
    return generate({ ...sessionModel(target, cache), speculator }, { prompt, maxTokens, sampling: GREEDY, stop: [], stopTokenIds: [], ignoreEos: true });
  } finally {
    speculator?.dispose();
    cache.dispose();
  }
}

type Req = Omit<GenerateRequest, "model" | "stop" | "stopTokenIds">;

/** Requests run together on one scheduler, then `later` ones once those are done; tokens and done events by request. */
function runBatch(target: Session, reqs: Req[], speculator?: Speculator, prefixCache = false, later: Req[] = []) {
  const cache = new KvCache(target.model.backend, target.model.layers, { blockSize: 16, numBlocks: 256, windowed: true, sizing: { sequences: 8, stepTokens: 512 }, stateSlots: 128 });
  const out = new Map<string, number[]>();
  const done = new Map<string, Extract<EngineEvent, { type: "done" }>>();
  try {
    const sched = new Scheduler({ ...sessionModel(target, cache), speculator }, { maxRunning: 8, maxWaiting: 128, prefillChunk: 512, prefixCache }, (ev) => {
      if (ev.type === "delta") out.set(ev.id, [...(out.get(ev.id) ?? []), ...ev.tokenIds]);
      if (ev.type === "done") done.set(ev.id, ev);
      if (ev.type === "error") throw new Error(ev.message);
    });
    for (const batch of [reqs, later]) {
      for (const r of batch) sched.submit({ ...r, model: "", stop: [], stopTokenIds: [] });
      while (sched.step());
    }
    if (!sched.prefix) expect(cache.allocator.numUsed).toBe(0);
    return { out, done };
  } finally {
    cache.dispose();
  }
}

describe("--draft-kind mtp, greedy", () => {
  for (const spec of [{ mtp: { kind: "random" } }, { moe: true, mtp: { kind: "random" } }, { trunkMix: 0, mtp: { kind: "copy", mix: 0.3 } }] satisfies TinyHybridSpec[]) {
    const name = `${spec.moe ? "MoE" : "dense"}, ${spec.mtp.kind === "copy" ? "a head that often agrees" : "a random head"}`;
    test(`${name}: equal to plain decoding alone (k 1 and 4)`, () => {
      const { session } = tiny(spec);
      const mtp = loadMtpDraft(session);
      for (const prompt of PROMPTS) {
        const plain = run(session, prompt, null).tokenIds;
        for (const k of [1, 4]) {
          const r = run(session, prompt, mtp, k);
          expect(r.tokenIds).toEqual(plain);
          expect(r.speculative!.draftTokens).toBeGreaterThan(0);
          if (spec.mtp.kind === "copy") expect(r.speculative!.acceptedTokens).toBeGreaterThan(0);
        }
      }
    }, 60_000);

    test(`${name}: in one batch with sequences that do not speculate, per-sequence draft lengths, prefix cache on and off`, () => {
      const { session } = tiny(spec);
      const mtp = loadMtpDraft(session);
      const [a, b] = PROMPTS;
      const reqs = [
        { id: "a", prompt: a!, maxTokens: 32, sampling: GREEDY, ignoreEos: true },
        // Logprobs run plain steps: this one never speculates, in the same steps as the others.
        { id: "b", prompt: b!, maxTokens: 32, sampling: { ...GREEDY, logprobs: true }, ignoreEos: true },
        // Few tokens left: its drafts are shorter than k.
        { id: "c", prompt: [...b!, 5, 6], maxTokens: 3, sampling: GREEDY, ignoreEos: true },
      ];
      // Comes after b is done and shares its first block: with the prefix cache the target skips that block, and
      // the head starts its KV after it.
      const later = [{ id: "d", prompt: [...b!, 7], maxTokens: 32, sampling: GREEDY, ignoreEos: true }];
      const plain = runBatch(session, reqs, undefined, false, later).out;
      for (const prefix of [false, true]) {
        const speculator = speculatorFor(mtp, 4, 256 * 16, 8, true);
        const { out, done } = runBatch(session, reqs, speculator, prefix, later);
        speculator.dispose();
        for (const r of [...reqs, ...later]) expect(out.get(r.id)).toEqual(plain.get(r.id)!);
        expect(done.get("b")!.speculative!.draftTokens).toBe(0);
        expect(done.get("a")!.speculative!.draftTokens).toBeGreaterThan(0);
        expect(done.get("d")!.speculative!.draftTokens).toBeGreaterThan(0);
        if (prefix) expect(done.get("d")!.usage.cachedTokens).toBeGreaterThan(0);
      }
    }, 60_000);
  }

  test("a model without a complete MTP head, or of a family without one, is refused with one line", () => {
    expect(() => loadMtpDraft(loadSession(join(FIXTURES, "hybrid/qwen3_5_dense")))).toThrow(/^--draft-kind mtp: .*qwen3_5_dense: the checkpoint has no MTP head \(no mtp\.\* weights\)$/);
    expect(() => loadMtpDraft(loadSession(join(FIXTURES, "hybrid/qwen3_5_vl")))).toThrow(/^--draft-kind mtp: the MTP head is incomplete: .*missing tensor mtp\.layers\.0\.post_attention_layernorm\.weight$/);
    expect(() => loadMtpDraft(loadSession(join(FIXTURES, "qwen3")))).toThrow(/^--draft-kind mtp: .*qwen3: model type qwen3 has no MTP head$/);
    const { session } = tiny({ mtp: { kind: "random" }, drop: ["mtp.fc.weight"] });
    expect(() => loadMtpDraft(session)).toThrow(/the MTP head is incomplete: .*missing tensor mtp\.fc\.weight$/);
  });

  test("--draft-kind: model or mtp; mtp takes no --draft-model, model needs one", () => {
    expect(draftSettings({ draftKind: "mtp", draftTokens: "2" })).toEqual({ kind: "mtp", tokens: 2, fixed: false });
    expect(draftSettings({ draftModel: "/m" })).toEqual({ kind: "model", dir: "/m", tokens: 4, fixed: false });
    expect(draftSettings({})).toBeUndefined();
    expect(() => draftSettings({ draftKind: "mtp", draftModel: "/m" })).toThrow("--draft-kind mtp drafts with the model's own MTP head: leave out --draft-model");
    expect(() => draftSettings({ draftKind: "model" })).toThrow("--draft-kind model needs --draft-model");
    expect(() => draftSettings({ draftKind: "eagle" })).toThrow("--draft-kind must be model or mtp (got 'eagle')");
  });
});

// ---- float64 reference of the head (dense MLP), from the formula ----

type F64 = Float64Array;

function rms(x: F64, w: Float32Array, eps = 1e-6): F64 {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return Float64Array.from(x, (v, i) => v * r * (1 + w[i]!));
}

/** w [out, in] (row-major) times x [in]. */
function lin(w: Float32Array, x: F64): F64 {
  const n = x.length;
  const out = new Float64Array(w.length / n);
  for (let o = 0; o < out.length; o++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += w[o * n + i]! * x[i]!;
    out[o] = s;
  }
  return out;
}

const silu = (v: number) => v / (1 + Math.exp(-v));
const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));

/** Rotate-half RoPE over the first `dims` of a head at position p. */
function rope(x: F64, p: number, dims: number, theta: number): F64 {
  const y = Float64Array.from(x);
  const half = dims / 2;
  for (let j = 0; j < half; j++) {
    const a = p * Math.pow(theta, (-2 * j) / dims);
    const c = Math.cos(a);
    const s = Math.sin(a);
    y[j] = x[j]! * c - x[j + half]! * s;
    y[j + half] = x[j + half]! * c + x[j]! * s;
  }
  return y;
}

/**
 * The head over entries (token at i + 1, hidden state at i), entry n at RoPE position n + 1 attending to entries
 * 0..n: each entry's logits and post-norm output. Entries are remembered: a call that starts with the entries of
 * the last one (the same token and the same hidden-state object) computes only those after them.
 */
class MtpReference {
  private entries: { token: number; h: F64 }[] = [];
  private done: { k: F64[]; v: F64[]; logits: F64; hidden: F64 }[] = [];

  constructor(private readonly t: Record<string, Float32Array>) {}

  last(entries: { token: number; h: F64 }[]): { logits: F64; hidden: F64 } {
    let same = 0;
    while (same < entries.length && same < this.entries.length && entries[same]!.token === this.entries[same]!.token && entries[same]!.h === this.entries[same]!.h) same++;
    this.entries = [...entries];
    this.done.length = same;
    for (let n = same; n < entries.length; n++) this.done.push(this.entry(entries[n]!, n));
    return this.done.at(-1)!;
  }

  private entry({ token, h }: { token: number; h: F64 }, n: number) {
    const H = 32;
    const heads = 4;
    const kvHeads = 2;
    const hd = 16;
    const get = (name: string) => this.t[name]!;
    const e = rms(Float64Array.from(get("model.embed_tokens.weight").subarray(token * H, (token + 1) * H)), get("mtp.pre_fc_norm_embedding.weight"));
    const hh = rms(h, get("mtp.pre_fc_norm_hidden.weight"));
    const cat = new Float64Array(2 * H);
    cat.set(e);
    cat.set(hh, H);
    const x = lin(get("mtp.fc.weight"), cat);
    const a = "mtp.layers.0.self_attn";
    const xn = rms(x, get("mtp.layers.0.input_layernorm.weight"));
    const qg = lin(get(`${a}.q_proj.weight`), xn);
    const kAll = lin(get(`${a}.k_proj.weight`), xn);
    const vAll = lin(get(`${a}.v_proj.weight`), xn);
    const pos = n + 1;
    const k = Array.from({ length: kvHeads }, (_, g) => rope(rms(kAll.subarray(g * hd, (g + 1) * hd), get(`${a}.k_norm.weight`)), pos, 4, 10000));
    const v = Array.from({ length: kvHeads }, (_, g) => vAll.slice(g * hd, (g + 1) * hd));
    const ks = [...this.done.slice(0, n).map((d) => d.k), k];
    const vs = [...this.done.slice(0, n).map((d) => d.v), v];
    const att = new Float64Array(heads * hd);
    for (let hIdx = 0; hIdx < heads; hIdx++) {
      const q = rope(rms(qg.subarray(hIdx * 2 * hd, hIdx * 2 * hd + hd), get(`${a}.q_norm.weight`)), pos, 4, 10000);
      const g = Math.floor(hIdx / (heads / kvHeads));
      const scores = ks.map((kk) => kk[g]!.reduce((acc, val, i) => acc + val * q[i]!, 0) / Math.sqrt(hd));
      const m = Math.max(...scores);
      const w = scores.map((sc) => Math.exp(sc - m));
      const z = w.reduce((p, c) => p + c, 0);
      for (let d = 0; d < hd; d++) {
        let acc = 0;
        for (let j = 0; j < w.length; j++) acc += (w[j]! / z) * vs[j]![g]![d]!;
        att[hIdx * hd + d] = acc * sigmoid(qg[hIdx * 2 * hd + hd + d]!);
      }
    }
    const o = lin(get(`${a}.o_proj.weight`), att);
    const y = Float64Array.from(x, (val, i) => val + o[i]!);
    const yn = rms(y, get("mtp.layers.0.post_attention_layernorm.weight"));
    const gate = lin(get("mtp.layers.0.mlp.gate_proj.weight"), yn);
    const up = lin(get("mtp.layers.0.mlp.up_proj.weight"), yn);
    const down = lin(get("mtp.layers.0.mlp.down_proj.weight"), Float64Array.from(gate, (gv, i) => silu(gv) * up[i]!));
    const hidden = rms(Float64Array.from(y, (val, i) => val + down[i]!), get("mtp.norm.weight"));
    return { k, v, logits: lin(get("lm_head.weight"), hidden), hidden };
  }
}

function expectClose(got: Float32Array, want: F64): void {
  let worst = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
    scale = Math.max(scale, Math.abs(want[i]!));
  }
  expect(got.length).toBe(want.length);
  expect(worst).toBeLessThan(1e-4 * Math.max(1, scale));
}

/** A drafter that records every forward (its items and logits) of the one it wraps. */
function recording(inner: Drafter) {
  const calls: { tokens: number[]; last: number | null; logits: Float32Array }[][] = [];
  const d: Drafter = {
    contextLength: inner.contextLength,
    wantsHidden: inner.wantsHidden,
    prepare: (key, tokens, k) => inner.prepare(key, tokens, k),
    forward(items) {
      const logits = inner.forward(items);
      const vocab = logits.length / items.length;
      calls.push(items.map((it, r) => ({ tokens: [...it.tokens], last: it.last, logits: logits.slice(r * vocab, (r + 1) * vocab) })));
      return logits;
    },
    settle: (key, valid) => inner.settle(key, valid),
    observe: (key, start, hidden, rows, tokens) => inner.observe!(key, start, hidden, rows, tokens),
    release: (key) => inner.release(key),
    dispose: () => inner.dispose(),
  };
  return { d, calls };
}

describe("--draft-kind mtp, the head's forward", () => {
  // A trunk whose layers add nothing: its post-norm hidden state at i is norm(embed(token i)), known exactly
  // here; the head copies the trunk's prediction from the token at t + 1, perturbed by its own layer. The long
  // prompt's hidden states are run as they come (more than the head keeps waiting), in chunks.
  const LONG = Array.from({ length: 1100 }, (_, i) => (i * 37 + 11) % 400);
  for (const [what, prompts, maxTokens] of [["short prompts", PROMPTS, 40], ["a prompt of 1,100 tokens", [LONG], 24]] as const)
  test(`${what}: every proposal's logits match a float64 reference of the head over the kept tokens' entries, through kept and rejected proposals`, () => {
    const { session, tensors } = tiny({ trunkMix: 0, mtp: { kind: "copy", mix: 0.3 }, contextLength: 2048 });
    const mtp = loadMtpDraft(session);
    const hiddens = new Map<number, F64>();
    const hiddenOf = (token: number) => {
      let h = hiddens.get(token);
      if (!h) hiddens.set(token, (h = rms(Float64Array.from(tensors["model.embed_tokens.weight"]!.subarray(token * 32, (token + 1) * 32)), tensors["model.norm.weight"]!)));
      return h;
    };
    const ref = new MtpReference(tensors);
    for (const prompt of prompts) {
      const cache = cacheForTokens(session.model, prompt.length + 48, "f32", 2);
      const headCache = new KvCache(session.model.backend, mtp.head.layers, { blockSize: 16, numBlocks: 96 });
      const { d, calls } = recording(new MtpDrafter(mtp.target, mtp.head, headCache));
      const speculator = new Speculator(d, 3, mtp.costGuess, true);
      const r = generate({ ...sessionModel(session, cache), speculator }, { prompt: [...prompt], maxTokens, sampling: GREEDY, stop: [], stopTokenIds: [], ignoreEos: true });
      speculator.dispose();
      cache.dispose();
      expect(r.tokenIds).toEqual(run(session, [...prompt], null, 3, maxTokens).tokenIds);
      const spec = r.speculative!;
      // Kept proposals, and on the short prompts rejected ones too: the head's KV was cut back.
      expect(spec.acceptedTokens).toBeGreaterThan(0);
      if (prompts === PROMPTS) expect(spec.acceptedTokens).toBeLessThan(spec.draftTokens);
      expect(calls.length).toBeGreaterThan(maxTokens / 4);
      // A round: its first forward (entries of every kept token), then one per chained proposal.
      let round: { token: number; h: F64 }[] = [];
      let prev: { logits: F64; hidden: F64 } | null = null;
      for (const [call] of calls) {
        if (call!.last === null) {
          const toks = call!.tokens;
          round = toks.slice(0, -1).map((_, i) => ({ token: toks[i + 1]!, h: hiddenOf(toks[i]!) }));
        } else {
          round.push({ token: call!.last, h: prev!.hidden });
        }
        prev = ref.last(round);
        expectClose(call!.logits, prev.logits);
      }
    }
  }, 60_000);

  test("the trunk's hidden states are those after the final norm: their product with the head gives its logits", () => {
    const { session, tensors } = tiny({ mtp: { kind: "random" } }, 3);
    const model = session.model;
    const prompt = PROMPTS[1]!;
    const cache = cacheForTokens(model, prompt.length + 1);
    const seq = new Sequence();
    cache.reserve(seq, prompt.length);
    const built = cache.buildStep([{ seq, tokens: Int32Array.from(prompt) }]);
    const rows = Int32Array.from(prompt, (_, i) => i);
    const be = model.backend;
    const { logits, hidden } = be.scope(() => {
      const f = model.forwardHidden!(cache.forwardStep(built, rows), rows);
      return { logits: be.toFloat32(f.logits), hidden: be.toFloat32(f.hidden) };
    });
    cache.release(seq);
    const plain = forwardBatch(model, cache, [{ seq: new Sequence(), tokens: Int32Array.from(prompt) }], "all").logits;
    expect(Array.from(logits)).toEqual(Array.from(plain));
    for (let i = 0; i < prompt.length; i++) expectClose(logits.subarray(i * 448, (i + 1) * 448), lin(tensors["lm_head.weight"]!, Float64Array.from(hidden.subarray(i * 32, (i + 1) * 32))));
    cache.dispose();
  });
});

describe("--draft-kind mtp, sampled", () => {
  const T = 1;
  const K = 3;
  const N = 2000;
  test(`the first three tokens of ${N} seeded requests follow the target's own distribution (chi-square, p > 0.001)`, () => {
    const { session } = tiny({ trunkMix: 0.5, mtp: { kind: "copy", mix: 0.3 } }, 5);
    const mtp = loadMtpDraft(session);
    const prompt = PROMPTS[0]!;
    const expected = targetJointDistribution(session.model, prompt, K, T);

    const sampling = { ...DEFAULT_SAMPLING, temperature: T, topK: K };
    const observed = new Map<string, number>();
    let kept = 0;
    for (let start = 0; start < N; start += 64) {
      const reqs = Array.from({ length: Math.min(64, N - start) }, (_, i) => ({
        id: String(start + i),
        prompt,
        maxTokens: 4,
        sampling: { ...sampling, seed: start + i + 1 },
        ignoreEos: true,
      }));
      const speculator = speculatorFor(mtp, 3, 256 * 16, 64, true);
      const { out, done } = runBatch(session, reqs, speculator);
      speculator.dispose();
      for (const r of reqs) {
        expect(done.get(r.id)!.speculative!.draftTokens).toBeGreaterThan(0);
        kept += done.get(r.id)!.speculative!.acceptedTokens;
        const key = out.get(r.id)!.slice(0, 3).join(",");
        observed.set(key, (observed.get(key) ?? 0) + 1);
      }
    }
    // Both kept proposals and draws from the residual.
    expect(kept).toBeGreaterThan(N / 20);
    expectTargetDistribution(expected, observed, N);
  }, 180_000);
});
