// Qwen3-MoE: Qwen3 attention; the feed-forward of most layers is a softmax-routed mixture of SwiGLU experts
// (top-k, renormalised when norm_topk_prob). A layer stays dense when listed in mlp_only_layers or off the
// decoder_sparse_step stride. Experts load from MLX's stacked switch_mlp tensors, transformers' one-by-one
// experts.{e}.* tensors, or fused experts.gate_up_proj / experts.down_proj.
import type { Backend, Tensor, Weight } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { ModelDir } from "../io/model_dir.ts";
import type { Model } from "./model.ts";
import { Qwen3Model } from "./qwen3.ts";

interface MoeWeights {
  router: Weight;
  /** Either separate gate and up stacks, or one fused [E, 2I, D] stack (gate rows first). */
  gate?: Weight;
  up?: Weight;
  gateUp?: Weight;
  down: Weight;
  intermediate: number;
}

export class Qwen3MoeModel extends Qwen3Model {
  private readonly moe: (MoeWeights | null)[];
  private readonly topK: number;
  private readonly normTopk: boolean;

  constructor(backend: Backend, md: ModelDir) {
    super(backend, md);
    const c = this.config;
    if (!c.numExperts || !c.numExpertsPerTok) {
      throw new RmlxError("bad_model", `${md.dir}/config.json: qwen3_moe needs num_experts and num_experts_per_tok`);
    }
    this.topK = c.numExpertsPerTok;
    this.normTopk = c.normTopkProb ?? false;
    this.moe = [];
    for (let i = 0; i < c.numLayers; i++) {
      this.moe.push(this.isDenseLayer(i) ? null : this.moeWeights(`model.layers.${i}.mlp`));
    }
  }

  protected override isDenseLayer(i: number): boolean {
    const c = this.config;
    const step = c.decoderSparseStep ?? 1;
    const sparse = (c.numExperts ?? 0) > 0 && !(c.mlpOnlyLayers ?? []).includes(i) && (i + 1) % step === 0;
    return !sparse;
  }

  private moeWeights(p: string): MoeWeights {
    const w = this.w;
    const E = this.config.numExperts!;
    const I = this.config.moeIntermediateSize ?? this.config.intermediateSize;
    const router = w.linear(`${p}.gate`);
    if (w.has(`${p}.switch_mlp.gate_proj.weight`)) {
      return {
        router,
        gate: w.linear(`${p}.switch_mlp.gate_proj`),
        up: w.linear(`${p}.switch_mlp.up_proj`),
        down: w.linear(`${p}.switch_mlp.down_proj`),
        intermediate: I,
      };
    }
    if (w.has(`${p}.experts.gate_up_proj`)) {
      return {
        router,
        gateUp: w.tensor(`${p}.experts.gate_up_proj`),
        down: w.tensor(`${p}.experts.down_proj`),
        intermediate: I,
      };
    }
    const each = (name: string) => Array.from({ length: E }, (_, e) => `${p}.experts.${e}.${name}`);
    return {
      router,
      gate: w.stackExperts(each("gate_proj")),
      up: w.stackExperts(each("up_proj")),
      down: w.stackExperts(each("down_proj")),
      intermediate: I,
    };
  }

  protected override mlp(i: number, x: Tensor): Tensor {
    const m = this.moe[i];
    if (!m) return super.mlp(i, x);
    const be = this.backend;
    const T = x.shape[0]!;
    const k = this.topK;
    const logits = be.linear(x, m.router);
    // Renormalised top-k probabilities are the softmax over the top-k logits.
    let weights: Tensor;
    let indices: Tensor;
    if (this.normTopk) {
      const top = be.topk(logits, k);
      weights = be.softmax(top.values, -1);
      indices = top.indices;
    } else {
      const top = be.topk(be.softmax(logits, -1), k);
      weights = top.values;
      indices = top.indices;
    }
    let g: Tensor;
    let u: Tensor;
    if (m.gateUp) {
      const gu = be.gatherMatmul(x, m.gateUp, indices);
      g = be.slice(gu, 2, 0, m.intermediate);
      u = be.slice(gu, 2, m.intermediate, 2 * m.intermediate);
    } else {
      g = be.gatherMatmul(x, m.gate!, indices);
      u = be.gatherMatmul(x, m.up!, indices);
    }
    const h = be.reshape(be.swiglu(g, u), [T * k, m.intermediate]);
    const d = be.gatherMatmul(h, m.down, indices);
    return be.sum(be.mul(d, be.reshape(weights, [T, k, 1])), 1);
  }
}

export function loadQwen3Moe(backend: Backend, md: ModelDir): Model {
  return new Qwen3MoeModel(backend, md);
}
