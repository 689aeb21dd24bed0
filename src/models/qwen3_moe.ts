// Qwen3-MoE: Qwen3's attention (q/k norms before rope); the feed-forward of most layers is a softmax-routed mixture
// of SwiGLU experts (top-k, renormalised when norm_topk_prob). A layer stays dense when listed in mlp_only_layers
// or off the decoder_sparse_step stride. Experts are read stacked ([E, out, in]: MLX's switch_mlp, or transformers'
// one-by-one experts.{e}.* stacked by sanitize) or as transformers-5's fused experts.gate_up_proj / down_proj.
import { isQuantized, type Backend, type Tensor, type Weight } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import { ConfigReader, type ModelConfig } from "../io/config.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { stackedExpert, textModelName, type Family, type SanitizeContext, type Sanitizer } from "./family.ts";
import {
  attention,
  embed,
  expertStacks,
  gatedMlp,
  gqaParams,
  mixExperts,
  mlpWeights,
  preNormWeights,
  runLayer,
  selectRows,
  stackEnds,
  stepTokens,
  type AttentionParams,
  type ExpertStacks,
  type MlpWeights,
  type PreNormWeights,
  type StackEnds,
} from "./layers.ts";
import type { ForwardStep, LayerCacheSpec, Model } from "./model.ts";
import type { ModelWeights } from "./weights.ts";

export interface Qwen3MoeArgs {
  numExperts: number;
  numExpertsPerTok: number;
  moeIntermediateSize: number;
  normTopkProb: boolean;
  decoderSparseStep: number;
  mlpOnlyLayers: number[];
}

export function qwen3MoeArgs(c: ModelConfig, source: string): Qwen3MoeArgs {
  const r: ConfigReader = new ConfigReader(c.raw, {}, source);
  if (!c.numExperts || !c.numExpertsPerTok) r.bad("qwen3_moe needs num_experts and num_experts_per_tok");
  const mlpOnly = r.get("mlp_only_layers") ?? [];
  if (!Array.isArray(mlpOnly) || !mlpOnly.every((x) => Number.isInteger(x) && x >= 0 && x < c.numLayers))
    r.bad("mlp_only_layers is not a list of layer indices");
  return {
    numExperts: c.numExperts,
    numExpertsPerTok: c.numExpertsPerTok,
    moeIntermediateSize: r.optInt("moe_intermediate_size") ?? c.intermediateSize,
    normTopkProb: r.optBool("norm_topk_prob") ?? false,
    decoderSparseStep: r.optInt("decoder_sparse_step") ?? 1,
    mlpOnlyLayers: mlpOnly as number[],
  };
}

export interface MoeWeights extends ExpertStacks {
  router: Weight;
}

interface Block extends PreNormWeights {
  mlp: { dense: MlpWeights } | { moe: MoeWeights };
}

export function moeWeights(w: ModelWeights, p: string, args: Qwen3MoeArgs): MoeWeights {
  const router = w.linear(`${p}.gate`);
  const m: MoeWeights = { router, ...expertStacks(w, p, `${p}.switch_mlp`, args.numExperts) };
  // Each expert's projections must be the sizes config.json gives, or the kernels would read them wrongly.
  const H = w.md.config.hiddenSize;
  const I = args.moeIntermediateSize;
  const E = args.numExperts;
  const fused = m.gateUp !== undefined;
  const check = (name: string, s: Weight | undefined, out: number, inp: number) => {
    if (!s) return;
    const t = isQuantized(s) ? s.w : s;
    const logicalIn = isQuantized(s) ? (t.shape[2]! * 32) / s.bits : t.shape[2];
    if (t.shape.length !== 3 || t.shape[1] !== out || logicalIn !== inp) {
      const shape = isQuantized(s) ? `[${t.shape[0]}, ${t.shape[1]}, ${logicalIn}] (unpacked)` : `[${t.shape.join(", ")}]`;
      throw new RmlxError("bad_model", `${w.md.dir}: ${p}.${name} is ${shape}, expected [${E}, ${out}, ${inp}] (moe_intermediate_size ${I}, hidden_size ${H})`);
    }
  };
  const stack = fused ? "experts" : "switch_mlp";
  check(`${stack}.gate_up_proj`, m.gateUp, 2 * I, H);
  check(`${stack}.gate_proj`, m.gate, I, H);
  check(`${stack}.up_proj`, m.up, I, H);
  check(`${stack}.down_proj`, m.down, H, I);
  return m;
}

/** The sparse feed-forward: route each token to its top-k experts and sum their SwiGLU outputs by weight. */
export function moe(be: Backend, x: Tensor, m: MoeWeights, args: Qwen3MoeArgs): Tensor {
  const k = args.numExpertsPerTok;
  const logits = be.linear(x, m.router);
  // Renormalised top-k probabilities are the softmax over the top-k logits.
  let weights: Tensor;
  let indices: Tensor;
  if (args.normTopkProb) {
    const top = be.topk(logits, k);
    weights = be.softmax(top.values, -1);
    indices = top.indices;
  } else {
    const top = be.topk(be.softmax(logits, -1), k);
    weights = top.values;
    indices = top.indices;
  }
  return mixExperts(be, x, m, indices, weights, args.moeIntermediateSize, "silu");
}

class Qwen3MoeModel implements Model {
  readonly config: ModelConfig;
  readonly layers: LayerCacheSpec[];
  readonly vocabSize: number;
  private readonly args: Qwen3MoeArgs;
  private readonly eps: number;
  private readonly ends: StackEnds;
  private readonly attn: AttentionParams;
  private readonly blocks: Block[] = [];

  constructor(
    readonly backend: Backend,
    md: ModelDir,
    w: ModelWeights,
  ) {
    const c = md.config;
    const args = qwen3MoeArgs(c, `${md.dir}/config.json`);
    this.config = c;
    this.args = args;
    this.eps = c.rmsNormEps;
    this.ends = stackEnds(w);
    this.vocabSize = c.vocabSize;
    this.attn = gqaParams(c, 0);
    for (let i = 0; i < c.numLayers; i++) {
      const p = `model.layers.${i}`;
      const sparse = !args.mlpOnlyLayers.includes(i) && (i + 1) % args.decoderSparseStep === 0;
      this.blocks.push({
        ...preNormWeights(w, p, true),
        mlp: sparse ? { moe: moeWeights(w, `${p}.mlp`, args) } : { dense: mlpWeights(w, `${p}.mlp`) },
      });
    }
    this.layers = this.blocks.map(() => ({ kvHeads: c.numKvHeads, headDim: c.headDim, window: 0 }));
  }

  forward(step: ForwardStep): Tensor {
    const be = this.backend;
    let h = embed(be, this.ends.embed, stepTokens(step));
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i]!;
      const x = h;
      h = runLayer(be, step, () => {
        const y = be.add(x, attention(be, be.rmsNorm(x, b.inputNorm, this.eps), b.attn, this.attn, step, i));
        const n = be.rmsNorm(y, b.postNorm, this.eps);
        return be.add(y, "moe" in b.mlp ? moe(be, n, b.mlp.moe, this.args) : gatedMlp(be, n, b.mlp.dense, "silu"));
      });
    }
    h = selectRows(be, h, step.logitRows);
    return be.linear(be.rmsNorm(h, this.ends.norm, this.eps), this.ends.head);
  }
}

/** mlx-lm's qwen3_moe sanitize: a tied head dropped, one-by-one experts stacked into switch_mlp. */
function sanitize({ tied }: SanitizeContext): Sanitizer {
  return {
    rename(name) {
      const n = textModelName(name, tied);
      return n === null ? null : stackedExpert(n);
    },
  };
}

export const qwen3Moe: Family = {
  modelTypes: ["qwen3_moe"],
  sanitize,
  quantOverride: (path) => (path.endsWith("mlp.gate") ? { bits: 8, groupSize: 64 } : null),
  load: (backend, md, w) => new Qwen3MoeModel(backend, md, w),
};
