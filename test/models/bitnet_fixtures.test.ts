// Ternary models against transformers' float32 references (test/fixtures/models/bitnet, made by
// scripts/make_bitnet_fixtures.py): BitNet b1.58 as float weights, packed for AutoBitLinear and for BitLinear, with
// per-linear RMSNorms, as master weights quantized online, as an MLX snapshot; and a Qwen3 in MLX affine 2-bit g128
// with f16 scales (Ternary Bonsai's format).
//
// BitNet's linears round x * 127/max|x| to int8, half to even, as transformers does. With bf16-valued embeddings
// and norm weights, RMSNorm outputs put some of those products exactly on k + 0.5 (the eight-bit mantissas cancel),
// and which way such a tie goes on the reference GPU depends on the last bit of its rsqrt; one int8 step then moves
// that token's keys and values, and every later token through attention. So each prompt is compared exactly (1e-4
// of the logit scale) up to the first token whose quantized activations hold a tie in our own computation, and
// loosely after it; greedy tokens are compared where the margin is clear and no tie came before. The kernels
// themselves are checked bit for bit on every ISA in test/native/ternary.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Backend, Tensor, TernaryWeight } from "../../src/backend/backend.ts";
import { getBackend } from "../../src/backend/index.ts";
import { setGemvMode } from "../../src/backend/native/lib.ts";
import { forwardBatch, logitsRow } from "../../src/engine/forward_batch.ts";
import { KvCache, Sequence } from "../../src/engine/kv/kv_cache.ts";
import { RmlxError } from "../../src/errors.ts";
import { openModelDir } from "../../src/io/model_dir.ts";
import { SafetensorsFile } from "../../src/io/safetensors.ts";
import { ternarise } from "../../src/models/bitnet.ts";
import type { Model } from "../../src/models/model.ts";
import { loadModel } from "../../src/models/registry.ts";
import { decodeFloats } from "../../src/quant/dtype.ts";
import { tempDir } from "../io/helpers.ts";
import { fixtureReference, relError } from "./reference.ts";

const ROOT = join(import.meta.dir, "../fixtures/models/bitnet");
const INDEX = join(ROOT, "INDEX.json");
/** Before any tie: f32 math on exactly read weights (x16: the 2-bit products' fixed point, as fixtures.test.ts). */
const MODES = [
  { gemv: "f32", relTol: 1e-4, clearMargin: 1e-3 },
  { gemv: "x16", relTol: 1e-3, clearMargin: 2e-2 },
] as const;
/** After a tie: one int8 step of one token's activations, carried through attention (measured up to 4e-2). */
const AFTER_TIE_TOL = 8e-2;

interface Fixture {
  name: string;
  features: string[];
  reference_of?: string;
}

const fixtures: Fixture[] = existsSync(INDEX) ? (JSON.parse(readFileSync(INDEX, "utf8")) as { fixtures: Fixture[] }).fixtures : [];

function argmax(row: Float32Array): number {
  let b = 0;
  for (let j = 1; j < row.length; j++) if (row[j]! > row[b]!) b = j;
  return b;
}

/** Rows of x [T, K] where some x * s (s = 127 / max|x|, as the kernel rounds it) lies on or within 1e-5 of k + 0.5. */
function tieRows(x: Float32Array, K: number): number[] {
  const fr = Math.fround;
  const rows: number[] = [];
  for (let r = 0; r < x.length / K; r++) {
    let amax = 0;
    for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(x[r * K + k]!));
    const s = fr(127 / Math.max(amax, fr(1e-5)));
    for (let k = 0; k < K; k++) {
      const v = fr(x[r * K + k]! * s);
      if (Math.abs(v - Math.floor(v) - 0.5) < 1e-5) {
        rows.push(r);
        break;
      }
    }
  }
  return rows;
}

/** The backend with its ternary products watched: the rows of each step that hold a rounding tie. */
function watched(be: Backend): { backend: Backend; ties: Set<number> } {
  const ties = new Set<number>();
  const backend = new Proxy(be, {
    get(target, prop) {
      if (prop === "ternaryLinear")
        return (x: Tensor, w: TernaryWeight) => {
          const K = x.shape[x.shape.length - 1]!;
          for (const r of tieRows(target.toFloat32(x), K)) ties.add(r);
          return target.ternaryLinear(x, w);
        };
      const v = Reflect.get(target, prop) as unknown;
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { backend, ties };
}

const cacheFor = (m: Model) => new KvCache(m.backend, m.layers, { numBlocks: 64, blockSize: 16 });

test("ternary fixtures exist", () => expect(fixtures.length).toBeGreaterThanOrEqual(7));

const cases = MODES.flatMap((m) => fixtures.map((fx) => ({ ...fx, ...m })));

describe.each(cases)("ternary fixture $name ($gemv products)", (fx) => {
  const dir = join(ROOT, fx.name);
  const ref = fixtureReference(join(ROOT, fx.reference_of ?? fx.name));
  const w = watched(getBackend());
  let model: Model;
  beforeAll(() => setGemvMode(fx.gemv));
  afterAll(() => setGemvMode("x16"));

  test("loads", () => {
    model = loadModel(w.backend, openModelDir(dir));
    expect(model.vocabSize).toBe(448);
  });

  test("teacher-forced logits match the reference up to the first rounding tie, and closely after it", () => {
    for (const p of ref.prompts) {
      const want = ref.logits(p.logits_key);
      const V = want.shape[1]!;
      w.ties.clear();
      const r = forwardBatch(model, cacheFor(model), [{ seq: new Sequence(), tokens: Int32Array.from(p.ids) }], "all");
      const firstTie = Math.min(p.ids.length, ...w.ties);
      expect(relError(r.logits.subarray(0, firstTie * V), want.data.subarray(0, firstTie * V), V)).toBeLessThan(fx.relTol);
      expect(relError(r.logits, want.data, V)).toBeLessThan(AFTER_TIE_TOL);
      if (!fx.features.includes("packed_ternary") && !fx.features.includes("master_weights")) expect(firstTie).toBe(p.ids.length);
    }
  });

  test("greedy tokens match where the margin is clear and no tie came before", () => {
    for (const p of ref.prompts) {
      const cache = cacheFor(model);
      const seq = new Sequence();
      w.ties.clear();
      let r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.from(p.ids) }]);
      for (let step = 0; step < p.greedy.length && w.ties.size === 0; step++) {
        if (p.greedy_margins[step]! > fx.clearMargin) expect({ step, token: argmax(logitsRow(r, 0)) }).toEqual({ step, token: p.greedy[step]! });
        r = forwardBatch(model, cache, [{ seq, tokens: Int32Array.of(p.greedy[step]!) }]);
      }
      cache.release(seq);
    }
  });
});

describe("BitNet's ternary arithmetic", () => {
  test("online quantization of the master weights gives transformers' packed codes", () => {
    const master = SafetensorsFile.open(join(ROOT, "bitnet_online/model.safetensors"));
    const packed = SafetensorsFile.open(join(ROOT, "bitnet_autobitlinear/model.safetensors"));
    for (const name of ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]) {
      const m = master.tensors.get(name)!;
      const t = ternarise(decodeFloats(m.dtype as "F32", new Uint8Array(m.bytes)), m.shape[0]!, m.shape[1]!);
      expect(Buffer.from(t.packed).equals(Buffer.from(new Uint8Array(packed.tensors.get(name)!.bytes)))).toBe(true);
      const scale = packed.tensors.get(name.replace(/weight$/, "weight_scale"))!;
      const stored = decodeFloats("BF16", new Uint8Array(scale.bytes))[0]!;
      expect(Math.abs(t.scale - stored) / stored).toBeLessThan(2 ** -8);
    }
  });
});

describe("bad ternary checkpoints", () => {
  function broken(edit: (cfg: Record<string, unknown>) => void): string {
    const dir = join(tempDir(), "m");
    cpSync(join(ROOT, "bitnet_autobitlinear"), dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
    edit(cfg);
    writeFileSync(join(dir, "config.json"), JSON.stringify(cfg));
    return dir;
  }
  const loadErr = (dir: string): RmlxError => {
    try {
      loadModel(getBackend(), openModelDir(dir));
    } catch (e) {
      return e as RmlxError;
    }
    throw new Error("loaded");
  };

  test("a packed tensor whose shape does not match the config names the tensor", () => {
    const err = loadErr(broken((c) => (c.intermediate_size = 256)));
    expect(err).toBeInstanceOf(RmlxError);
    expect(err.message).toContain("model.layers.0.mlp.gate_proj.weight is U8 [32, 64]");
    expect(err.message).toContain("[256, 64] packs to uint8 [64, 64]");
  });

  test("an unknown linear_class or quantization_mode is named", () => {
    const cls = loadErr(broken((c) => ((c.quantization_config as Record<string, unknown>).linear_class = "tritlinear")));
    expect(cls.message).toContain("linear_class 'tritlinear'");
    const mode = loadErr(broken((c) => ((c.quantization_config as Record<string, unknown>).quantization_mode = "lazy")));
    expect(mode.message).toContain("quantization_mode 'lazy'");
  });
});
