// Building blocks the decoder families share: attention over the paged cache, gated MLPs, mixtures of experts,
// embeddings, row selection, and the loading of the modules most families name alike (attention, MLP, pre-norm
// block, expert stacks). Each family file composes these in the order its reference implementation does.
import { isQuantized, type AttentionOptions, type Backend, type Tensor, type Weight } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { ModelConfig } from "../io/config.ts";
import type { ForwardStep } from "./model.ts";
import { checkPositions, ropeSetup, type RopeSetup } from "./rope.ts";
import type { ModelWeights } from "./weights.ts";

export interface AttentionWeights {
  q: Weight;
  k: Weight;
  v: Weight;
  o: Weight;
  qBias?: Tensor;
  kBias?: Tensor;
  vBias?: Tensor;
  oBias?: Tensor;
  /** Per-head RMSNorm of q and k before rope (qwen3, gemma3). */
  qNorm?: Tensor;
  kNorm?: Tensor;
}

/** Everything about one layer's attention but its weights: sizes, score scale, window, rope and the q/k norms' form. */
export interface AttentionParams {
  heads: number;
  kvHeads: number;
  headDim: number;
  scale: number;
  /** Sliding window (0 = full). */
  window: number;
  rope: RopeSetup;
  normEps: number;
  /** q/k norms use (1 + w) (gemma). */
  normOnePlus: boolean;
  /** tanh soft-cap of the attention scores (0 = none). */
  softcap?: number;
}

/** Self-attention of one layer: projections, optional q/k norms, rope, cache write, paged attention, output. */
export function attention(
  be: Backend,
  x: Tensor,
  w: AttentionWeights,
  s: AttentionParams,
  step: ForwardStep,
  layer: number,
): Tensor {
  const T = x.shape[0]!;
  let q = be.reshape(be.linear(x, w.q, w.qBias), [T, s.heads, s.headDim]);
  let k = be.reshape(be.linear(x, w.k, w.kBias), [T, s.kvHeads, s.headDim]);
  const v = be.reshape(be.linear(x, w.v, w.vBias), [T, s.kvHeads, s.headDim]);
  if (w.qNorm) q = be.rmsNorm(q, w.qNorm, s.normEps, s.normOnePlus);
  if (w.kNorm) k = be.rmsNorm(k, w.kNorm, s.normEps, s.normOnePlus);
  return be.linear(attend(be, q, k, v, s, step, layer), w.o, w.oBias);
}

/**
 * The middle of self-attention: rope on q [T, heads, headDim] and k [T, kvHeads, headDim], their cache write with
 * v, and paged attention; returns the heads' outputs [T, heads * headDim] before the output projection.
 */
export function attend(be: Backend, q: Tensor, k: Tensor, v: Tensor, s: AttentionParams, step: ForwardStep, layer: number): Tensor {
  const T = q.shape[0]!;
  const positions = step.batch.positions;
  checkPositions(s.rope, positions);
  const qr = be.rope(q, positions, s.rope.opts);
  const kr = be.rope(k, positions, s.rope.opts);
  const pool = step.pools[layer]!;
  // Sliding layers of a windowed cache keep only their window, in blocks of their own.
  const view = s.window > 0 && step.windowed ? step.windowed : step;
  be.kvWrite(pool, kr, v, view.slots);
  const opts: AttentionOptions = { scale: s.scale };
  if (s.window > 0) opts.window = s.window;
  if (s.softcap) opts.softcap = s.softcap;
  const a = be.pagedAttention(qr, pool, view.batch, opts);
  return be.reshape(a, [T, s.heads * s.headDim]);
}

export interface MlpWeights {
  gate: Weight;
  up: Weight;
  down: Weight;
  gateBias?: Tensor;
  upBias?: Tensor;
  downBias?: Tensor;
}

/** down(act(gate(x)) * up(x)), act = silu (SwiGLU) or tanh-GELU (GeGLU). */
export function gatedMlp(be: Backend, x: Tensor, w: MlpWeights, act: "silu" | "gelu_tanh"): Tensor {
  const g = be.linear(x, w.gate, w.gateBias);
  const u = be.linear(x, w.up, w.upBias);
  const h = act === "silu" ? be.swiglu(g, u) : be.geglu(g, u);
  return be.linear(h, w.down, w.downBias);
}

/** q/k/v/o_proj of a self_attn module, with the biases the checkpoint stores (qwen2's q/k/v, llama's attention_bias). */
export function attentionWeights(w: ModelWeights, p: string): AttentionWeights {
  const a: AttentionWeights = {
    q: w.linear(`${p}.q_proj`),
    k: w.linear(`${p}.k_proj`),
    v: w.linear(`${p}.v_proj`),
    o: w.linear(`${p}.o_proj`),
  };
  const biases = { qBias: "q_proj", kBias: "k_proj", vBias: "v_proj", oBias: "o_proj" } as const;
  for (const [k, mod] of Object.entries(biases)) {
    const b = w.optTensor(`${p}.${mod}.bias`);
    if (b) a[k as keyof typeof biases] = b;
  }
  return a;
}

/** gate/up/down_proj of an MLP module, with the biases the checkpoint stores (llama's mlp_bias). */
export function mlpWeights(w: ModelWeights, p: string): MlpWeights {
  const m: MlpWeights = { gate: w.linear(`${p}.gate_proj`), up: w.linear(`${p}.up_proj`), down: w.linear(`${p}.down_proj`) };
  const gb = w.optTensor(`${p}.gate_proj.bias`);
  const ub = w.optTensor(`${p}.up_proj.bias`);
  const db = w.optTensor(`${p}.down_proj.bias`);
  if (gb) m.gateBias = gb;
  if (ub) m.upBias = ub;
  if (db) m.downBias = db;
  return m;
}

/** Per-head RMSNorm weights of a self_attn module's q and k (qwen3, gemma3). */
export function qkNorms(w: ModelWeights, p: string): { qNorm: Tensor; kNorm: Tensor } {
  return { qNorm: w.tensor(`${p}.q_norm.weight`), kNorm: w.tensor(`${p}.k_norm.weight`) };
}

/** A pre-norm decoder block's norms and attention (the Llama layout): one norm before attention, one before the feed-forward. */
export interface PreNormWeights {
  inputNorm: Tensor;
  postNorm: Tensor;
  attn: AttentionWeights;
}

/** input_layernorm, post_attention_layernorm and self_attn of layer module p; qkNorm: with q/k norms (qwen3). */
export function preNormWeights(w: ModelWeights, p: string, qkNorm: boolean): PreNormWeights {
  const inputNorm = w.tensor(`${p}.input_layernorm.weight`);
  const postNorm = w.tensor(`${p}.post_attention_layernorm.weight`);
  const attn = attentionWeights(w, `${p}.self_attn`);
  return { inputNorm, postNorm, attn: qkNorm ? { ...attn, ...qkNorms(w, `${p}.self_attn`) } : attn };
}

/** A mixture's expert stacks [E, out, in]: separate gate and up stacks, or one fused [E, 2I, D] stack (gate rows first). */
export interface ExpertStacks {
  gate?: Weight;
  up?: Weight;
  gateUp?: Weight;
  down: Weight;
}

/**
 * transformers' fused `${p}.experts.gate_up_proj` / `down_proj` when stored, else mlx-lm's `${switchPath}.{gate,up,down}_proj`;
 * each must hold numExperts experts (the gathers index them by the router's choice: a short stack would be read past its end).
 */
export function expertStacks(w: ModelWeights, p: string, switchPath: string, numExperts: number): ExpertStacks {
  const m: ExpertStacks = w.has(`${p}.experts.gate_up_proj`)
    ? { gateUp: w.tensor(`${p}.experts.gate_up_proj`), down: w.tensor(`${p}.experts.down_proj`) }
    : {
        gate: w.linear(`${switchPath}.gate_proj`),
        up: w.linear(`${switchPath}.up_proj`),
        down: w.linear(`${switchPath}.down_proj`),
      };
  for (const s of [m.gate, m.up, m.gateUp, m.down]) {
    const rows = s && (isQuantized(s) ? s.w : s).shape[0];
    if (rows !== undefined && rows !== numExperts)
      throw new RmlxError("bad_model", `${w.md.dir}: ${p} stores ${rows} experts where config.json has ${numExperts}`);
  }
  return m;
}

/**
 * The chosen experts' gated MLPs summed by weight: x [T, D], indices and weights [T, k], I the experts'
 * intermediate size.
 */
export function mixExperts(
  be: Backend,
  x: Tensor,
  m: ExpertStacks,
  indices: Tensor,
  weights: Tensor,
  I: number,
  act: "silu" | "gelu_tanh",
): Tensor {
  const T = x.shape[0]!;
  const k = indices.shape[1]!;
  let g: Tensor;
  let u: Tensor;
  if (m.gateUp) {
    const gu = be.gatherMatmul(x, m.gateUp, indices);
    g = be.slice(gu, 2, 0, I);
    u = be.slice(gu, 2, I, 2 * I);
  } else {
    g = be.gatherMatmul(x, m.gate!, indices);
    u = be.gatherMatmul(x, m.up!, indices);
  }
  const h = be.reshape(act === "silu" ? be.swiglu(g, u) : be.geglu(g, u), [T * k, I]);
  const d = be.gatherMatmul(h, m.down, indices);
  return be.sum(be.mul(d, be.reshape(weights, [T, k, 1])), 1);
}

/**
 * Steps with more tokens than this run each decoder layer in a scope of its own, so that a prefill chunk's
 * temporaries are freed layer by layer (a 2048-token chunk of a 0.6B model would otherwise hold gigabytes).
 * The cost is one evaluation per layer, which decode steps of a few sequences should not pay. At 64 (before), a
 * 32 or 64-token prompt of the 0.6B shape held 100-200 MiB of the step arena, and a server's first such prompt
 * paid 150-230 ms growing it (fresh huge pages zeroed on first write); at 16 the arena stays at 16 MiB for them
 * and batches of 17-32 sequences (per-layer evaluation now) decoded no slower (24 clients of `bench serve`).
 */
const LAYER_SCOPE_TOKENS = 16;

/** Runs one decoder layer, in its own scope when the step is long. */
export function runLayer(be: Backend, step: ForwardStep, layer: () => Tensor): Tensor {
  return step.tokens.length > LAYER_SCOPE_TOKENS ? be.scope(layer) : layer();
}

/** The rows of h [T, D] whose logits the step wants. */
export function selectRows(be: Backend, h: Tensor, rows: Int32Array): Tensor {
  const T = h.shape[0]!;
  const n = rows.length;
  let contiguous = n > 0;
  for (let i = 1; i < n && contiguous; i++) contiguous = rows[i] === rows[0]! + i;
  if (contiguous && n === T && rows[0] === 0) return h;
  if (contiguous) return be.slice(h, 0, rows[0]!, rows[0]! + n);
  return be.take(h, be.fromArray(rows, [n], "i32"));
}

/** Token embeddings for the step's ids. */
export function embed(be: Backend, table: Weight, tokens: Int32Array | Tensor): Tensor {
  return be.take(table, tokens instanceof Int32Array ? be.fromArray(tokens, [tokens.length], "i32") : tokens);
}

/** A decoder step's input ids: the device tensor of a pipelined step, or the host ids. */
export function stepTokens(step: ForwardStep): Int32Array | Tensor {
  return step.tokenIds ?? step.tokens;
}

/** The two ends of a decoder stack: the token embeddings, and the final norm before the output head. */
export interface StackEnds {
  embed: Weight;
  /** The embedding table itself when tied (sanitize drops a tied checkpoint's stored head) or when none is stored. */
  head: Weight;
  norm: Tensor;
}

export function stackEnds(w: ModelWeights): StackEnds {
  const table = w.linear("model.embed_tokens");
  return { embed: table, head: w.optLinear("lm_head") ?? table, norm: w.tensor("model.norm.weight") };
}

/** Attention of the Llama/Qwen layout: scores scaled by 1/sqrt(head_dim), the config's rope, plain-weight q/k norms. */
export function gqaParams(c: ModelConfig, window: number): AttentionParams {
  return {
    heads: c.numHeads,
    kvHeads: c.numKvHeads,
    headDim: c.headDim,
    scale: 1 / Math.sqrt(c.headDim),
    window,
    rope: ropeSetup(c.rope, c.headDim, c.contextLength),
    normEps: c.rmsNormEps,
    normOnePlus: false,
  };
}
