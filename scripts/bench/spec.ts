// Speculative decoding against plain decoding, in the same run, greedy, EOS ignored:
//  - builtin: the built-in model with a lower-bit copy of itself as draft (made here with the converter), on a
//    few of the chat questions it was trained on;
//  - qwen3-0.6b: a random-weight model of Qwen3-0.6B's shape (4-bit) with a small random-weight draft of the same
//    vocabulary. Random weights rarely agree, so the adaptive policy should switch speculation off (about 1.0x).
// Each case runs plain decoding, the adaptive policy (what --draft-model does) and a fixed K (every step
// proposes K), alternating over the repetitions, each mode on one speculator for all its runs as a server keeps one
// for all its requests (the first run of a mode is the one a fresh server's first request sees); figures are medians and bests (the least disturbed run, on a
// shared machine) of decode tokens per second, speedups are ratios to plain decoding of the same run, acceptance
// is kept draft tokens over proposed ones.
//
//   bun run bench spec [--gen 96] [--reps 3] [--k 4] [--draft-bits 4] [--cases builtin,qwen3-0.6b]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { builtinModelDir } from "../../src/builtin/index.ts";
import { convert } from "../../src/convert/convert.ts";
import { loadDraft, speculatorFor, type DraftModel } from "../../src/engine/draft_model.ts";
import type { Speculator } from "../../src/engine/speculative.ts";
import { cacheForTokens, generate } from "../../src/engine/generate.ts";
import { encodePrompt, loadSession, sessionModel, type Session } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING } from "../../src/engine/types.ts";
import { defaultDbPath, MetricsStore, type BenchmarkRow } from "../../src/metrics/store.ts";
import { QWEN3_0_6B, writeRandomQwen3 } from "./model/random_qwen3.ts";

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : dflt;
}

const GEN = Number(arg("gen", "96"));
const REPS = Number(arg("reps", "3"));
const K = Number(arg("k", "4"));
const DRAFT_BITS = Number(arg("draft-bits", "4"));
const CASES = arg("cases", "builtin,qwen3-0.6b").split(",");

type Mode = "plain" | "adaptive" | "fixed";
const MODES: Mode[] = ["plain", "adaptive", "fixed"];

interface Run {
  tps: number;
  /** The speculator's measured draft step and extra verified token, over its plain step. */
  draftCost: number;
  extraCost: number;
  draftTokens: number;
  acceptedTokens: number;
  tokens: number[];
}

function runOnce(target: Session, prompt: number[], speculator: Speculator | undefined): Run {
  const cache = cacheForTokens(target.model, prompt.length + GEN + 8);
  try {
    const model = { ...sessionModel(target, cache), speculator };
    const r = generate(model, { prompt, maxTokens: GEN, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], stopTokenIds: [], ignoreEos: true });
    const s = r.speculative ?? { draftTokens: 0, acceptedTokens: 0 };
    const c = speculator?.costs;
    return { tps: r.decodeTps, ...s, tokens: r.tokenIds, draftCost: c ? c.draftMs / c.plainMs : NaN, extraCost: c ? c.extraMs / c.plainMs : NaN };
  } finally {
    cache.dispose();
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Plain, adaptive and fixed-K runs of every prompt, alternating; one row per mode. */
function measure(name: string, target: Session, draft: DraftModel, prompts: number[][]) {
  const tps = new Map<Mode, number[]>(MODES.map((m) => [m, []]));
  const counts = new Map<Mode, { d: number; a: number }>(MODES.map((m) => [m, { d: 0, a: 0 }]));
  const costs: { draft: number[]; extra: number[] } = { draft: [], extra: [] };
  // One speculator a mode for all the runs, as a server keeps one for all its requests (the adaptive policy
  // learns across them); the warm-up runs on a speculator of its own.
  const probe = cacheForTokens(target.model, Math.max(...prompts.map((p) => p.length)) + GEN + 8);
  const capacity = probe.capacityTokens;
  probe.dispose();
  const specs = new Map<Mode, Speculator | undefined>(MODES.map((m) => [m, m === "plain" ? undefined : speculatorFor(draft, K, capacity, 1, m === "fixed")]));
  const warm = speculatorFor(draft, K, capacity, 1, true);
  try {
    for (const prompt of prompts) runOnce(target, prompt, warm); // warm-up: pages, caches
    for (let rep = 0; rep < REPS; rep++) {
      for (const prompt of prompts) {
        let plainTokens: number[] | undefined;
        for (const mode of MODES) {
          const r = runOnce(target, prompt, specs.get(mode));
          tps.get(mode)!.push(r.tps);
          const c = counts.get(mode)!;
          c.d += r.draftTokens;
          c.a += r.acceptedTokens;
          if (mode === "fixed") {
            costs.draft.push(r.draftCost);
            costs.extra.push(r.extraCost);
          }
          if (mode === "plain") plainTokens = r.tokens;
          else if (r.tokens.join() !== plainTokens!.join()) throw new Error(`${name} ${mode}: output differs from plain decoding`);
        }
      }
    }
  } finally {
    warm.dispose();
    for (const sp of specs.values()) sp?.dispose();
  }
  const plain = median(tps.get("plain")!);
  const plainBest = Math.max(...tps.get("plain")!);
  return MODES.map((mode) => {
    const t = median(tps.get(mode)!);
    const best = Math.max(...tps.get(mode)!);
    const c = counts.get(mode)!;
    const acceptance = c.d > 0 ? c.a / c.d : NaN;
    return { mode, tps: t, speedup: t / plain, best, bestSpeedup: best / plainBest, acceptance, proposed: c.d, draftCost: median(costs.draft), extraCost: median(costs.extra) };
  });
}

const tmp = mkdtempSync(join(tmpdir(), "rmlx-bench-spec-"));
const rows: BenchmarkRow[] = [];
try {
  console.log(`gen ${GEN} tokens, ${REPS} reps, K ${K}; decode tok/s medians; speedup against plain in the same run`);
  console.log("case                         mode      tok/s  speedup  best tok/s  speedup  acceptance  proposed");
  const report = (name: string, res: ReturnType<typeof measure>) => {
    for (const r of res) {
      const acc = Number.isNaN(r.acceptance) ? "-" : r.acceptance.toFixed(2);
      const best = `${r.best.toFixed(1).padStart(10)}  ${r.bestSpeedup.toFixed(2).padStart(6)}x`;
      console.log(`${name.padEnd(28)} ${r.mode.padEnd(8)} ${r.tps.toFixed(1).padStart(6)}  ${r.speedup.toFixed(2).padStart(6)}x  ${best}  ${acc.padStart(10)}  ${String(r.proposed).padStart(8)}`);
      if (r.mode !== "plain") rows.push({ name: "spec_speedup", shape: `${name} ${r.mode} k${K}`, figure: r.speedup, unit: "x" });
    }
    const r = res[0]!;
    console.log(`${"".padEnd(28)} costs measured with fixed K, in plain steps: a draft step ${r.draftCost.toFixed(2)}, an extra verified token ${r.extraCost.toFixed(2)}`);
  };
  if (CASES.includes("builtin")) {
    const dir = join(tmp, `builtin_q${DRAFT_BITS}`);
    await convert({ model: builtinModelDir(), out: dir, force: true, quantize: true, mode: "affine", bits: DRAFT_BITS, groupSize: 64, dequantize: false });
    const target = loadSession(builtinModelDir());
    const draft = loadDraft(target, dir);
    const questions = ["What is the package ripgrep?", "What does the command ls do?", "What does git depend on?", "What is the package nginx?"];
    const prompts = questions.map((q) => encodePrompt(target, { messages: [{ role: "user", content: q }] }).ids);
    report(`builtin + ${DRAFT_BITS}-bit copy`, measure("builtin", target, draft, prompts));
  }
  if (CASES.includes("qwen3-0.6b")) {
    const targetDir = join(tmp, "qwen3-0.6b");
    const draftDir = join(tmp, "qwen3-small");
    writeRandomQwen3(targetDir, QWEN3_0_6B, 4);
    writeRandomQwen3(draftDir, { hiddenSize: 256, layers: 4, heads: 4, kvHeads: 2, headDim: 64, intermediateSize: 768 }, 4, 0x1234567);
    const target = loadSession(targetDir);
    const draft = loadDraft(target, draftDir);
    const prompt = Array.from({ length: 32 }, (_, i) => (i * 7919 + 13) % 150000);
    report("qwen3-0.6b q4 + small q4", measure("qwen3-0.6b", target, draft, [prompt]));
  }
  const store = MetricsStore.open(defaultDbPath());
  store.startRun({ kind: "bench", model: "spec" });
  store.recordBenchmarks(rows);
  store.close();
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
