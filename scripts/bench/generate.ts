// Generation speed on random-weight models with the shapes of Qwen3-0.6B and Llama-3.2-1B, in bf16 and in
// MLX affine 4-bit g64; of bitnet-b1.58-2B-4T with its ternary linears (bf16 tied embeddings); of Qwen3-8B in
// MLX affine 2-bit g128 with f16 scales (Ternary Bonsai 8B's format); and of Gemma 4 E2B in 4-bit: prefill of a
// 512-token prompt, then 128 greedy decode steps, through the engine's own path (scheduler, sampler, KV cache:
// what `rmlx bench` and the server run), with an f16 KV cache (--kv-quant), after one untimed request of the same
// length (llama-bench's warm-up). Decode speed is also given as a fraction of the bandwidth bound: the weight
// bytes and the KV bytes one decode step reads, over the best triad bandwidth (rmlx_bench_triad) measured in the
// run so far, before each row; and the host's time per decode step (the step's time outside the native
// computation). Random weights cost the same as trained ones (the kernels do not look at the
// values), so the packed words, scales and biases are filled with random bits of a sane range directly.
//
// The hybrid row (qwen3.5-0.8b, Qwen3.5-0.8B's shapes: 18 Gated DeltaNet layers and 6 gated full-attention ones)
// runs at several context lengths (--contexts, default 512 and 8192): a prompt of that length, then the decode
// steps. Its bound counts what a decode step must move besides the weights: the recurrent state of the linear
// layers (f32, read and written) and the full-attention layers' KV up to that length. Decode speed barely depends
// on context for the linear layers, so the 512 / 8k ratio shows what the full-attention layers cost.
//
// The peer, in the same run: llama.cpp's llama-bench on random-weight GGUFs of the same shapes at the same bits
// per weight (Q4_0 and MLX affine 4-bit g64 both spend 4.5 bits per weight; bf16 against bf16); none for the hybrid or BitNet.
//
//   bun scripts/bench/generate.ts [--prompt 512] [--gen 128]
//        [--models qwen3-0.6b,llama-3.2-1b,qwen3.5-0.8b,bitnet-2b,qwen3-8b,gemma-4-e2b]
//        [--formats bf16,q4,q2,ternary,mxfp8] [--contexts 512,8192] [--kv-quant f16] [--no-peer]
import { ptr } from "bun:ffi";
import type { Backend } from "../../src/backend/backend.ts";
import { getBackend } from "../../src/backend/index.ts";
import { MlxBackend } from "../../src/backend/mlx/backend.ts";
import { native } from "../../src/backend/native/lib.ts";
import { cacheForTokens, generate } from "../../src/engine/generate.ts";
import { decodeStepMeter, hostTimer, type StepMeter } from "../../src/engine/host_time.ts";
import type { SchedulerModel } from "../../src/engine/scheduler.ts";
import { tokenModel } from "../../src/engine/session.ts";
import { DEFAULT_SAMPLING } from "../../src/engine/types.ts";
import { parseConfig } from "../../src/io/config.ts";
import type { ModelDir } from "../../src/io/model_dir.ts";
import type { QuantConfig } from "../../src/io/quant_config.ts";
import type { StDType, TensorEntry } from "../../src/io/safetensors.ts";
import type { WeightStore } from "../../src/io/weights.ts";
import { loadModel } from "../../src/models/registry.ts";
import { defaultDbPath, MetricsStore, type BenchmarkRow } from "../../src/metrics/store.ts";
import { peerGenerate, type PeerModel } from "./peer/llama_cpp.ts";

const SHAPES: Record<string, Record<string, unknown>> = {
  "qwen3-0.6b": {
    model_type: "qwen3",
    hidden_size: 1024,
    num_hidden_layers: 28,
    num_attention_heads: 16,
    num_key_value_heads: 8,
    head_dim: 128,
    intermediate_size: 3072,
    vocab_size: 151936,
    max_position_embeddings: 40960,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
  },
  "llama-3.2-1b": {
    model_type: "llama",
    hidden_size: 2048,
    num_hidden_layers: 16,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    head_dim: 64,
    intermediate_size: 8192,
    vocab_size: 128256,
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: { rope_type: "llama3", factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    tie_word_embeddings: true,
  },
  "qwen3.5-0.8b": {
    model_type: "qwen3_5_text",
    hidden_size: 1024,
    num_hidden_layers: 24,
    num_attention_heads: 8,
    num_key_value_heads: 2,
    head_dim: 256,
    intermediate_size: 3584,
    vocab_size: 248320,
    max_position_embeddings: 262144,
    rms_norm_eps: 1e-6,
    rope_parameters: { rope_type: "default", rope_theta: 10000000, partial_rotary_factor: 0.25 },
    partial_rotary_factor: 0.25,
    full_attention_interval: 4,
    linear_num_key_heads: 16,
    linear_key_head_dim: 128,
    linear_num_value_heads: 16,
    linear_value_head_dim: 128,
    linear_conv_kernel_dim: 4,
    tie_word_embeddings: true,
  },
  // Gemma 4 E2B: per-layer embeddings (a 262144 x 8960 table read one row per token), the last 20 layers reading
  // the K/V of layers 13 and 14 (with MLPs twice as wide), sliding layers of head_dim 256 and full layers of 512.
  "gemma-4-e2b": {
    model_type: "gemma4_text",
    hidden_size: 1536,
    num_hidden_layers: 35,
    num_attention_heads: 8,
    num_key_value_heads: 1,
    head_dim: 256,
    global_head_dim: 512,
    intermediate_size: 6144,
    use_double_wide_mlp: true,
    vocab_size: 262144,
    hidden_size_per_layer_input: 256,
    vocab_size_per_layer_input: 262144,
    num_kv_shared_layers: 20,
    sliding_window: 512,
    layer_types: Array.from({ length: 35 }, (_, i) => (i % 5 === 4 ? "full_attention" : "sliding_attention")),
    final_logit_softcapping: 30,
    hidden_activation: "gelu_pytorch_tanh",
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-6,
    rope_parameters: {
      full_attention: { rope_type: "proportional", rope_theta: 1000000, partial_rotary_factor: 0.25 },
      sliding_attention: { rope_type: "default", rope_theta: 10000 },
    },
    tie_word_embeddings: true,
  },
  // bitnet-b1.58-2B-4T's published shape: ternary linears packed as the checkpoint stores them, bf16 tied embeddings
  "bitnet-2b": {
    model_type: "bitnet",
    hidden_size: 2560,
    num_hidden_layers: 30,
    num_attention_heads: 20,
    num_key_value_heads: 5,
    head_dim: 128,
    intermediate_size: 6912,
    vocab_size: 128256,
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    tie_word_embeddings: true,
    quantization_config: { quant_method: "bitnet", linear_class: "autobitlinear", quantization_mode: "offline" },
  },
  // Qwen3-8B's shape (untied head), for Ternary Bonsai 8B's format: MLX affine 2-bit g128 with f16 scales
  "qwen3-8b": {
    model_type: "qwen3",
    hidden_size: 4096,
    num_hidden_layers: 36,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    head_dim: 128,
    intermediate_size: 12288,
    vocab_size: 151936,
    max_position_embeddings: 40960,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: false,
  },
};

type Format = "bf16" | "q4" | "q2" | "ternary" | "mxfp8";
/** The formats a shape runs in: BitNet's linears are ternary by design, the 8B shape is there for Bonsai's 2-bit. */
const FORMATS_OF: Record<string, readonly Format[]> = {
  "bitnet-2b": ["ternary"],
  "qwen3-8b": ["q2"],
  // too large in bf16 for a benchmark machine's memory (the E2B PLE table alone is 4.7 GB)
  "gemma-4-e2b": ["q4", "mxfp8"],
};
/** Affine formats: bits, group size, and the dtype of scales and biases. */
const AFFINE: Partial<Record<Format, { bits: number; group: number; sb: StDType }>> = {
  q4: { bits: 4, group: 64, sb: "BF16" },
  q2: { bits: 2, group: 128, sb: "F16" },
};

/** Shapes without a GGUF layout in the peer's random-model writer. */
const NO_PEER = new Set(["qwen3.5-0.8b", "gemma-4-e2b"]);

/** Shapes measured at several context lengths, with no peer. */
const HYBRIDS = new Set(["qwen3.5-0.8b"]);

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : dflt;
}

let seed = 0x2545f491;
function fillRandom(words: Uint32Array): void {
  let x = seed;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  seed = x >>> 0 || 1;
}

/** bf16 values of magnitude about 2^-12 .. 2^-5 with random signs and mantissas (two per word). */
function randomBf16(n: number, center = 0): Uint8Array {
  const words = new Uint32Array(Math.ceil(n / 2));
  fillRandom(words);
  const out = new Uint16Array(words.buffer, 0, n);
  for (let i = 0; i < n; i++) {
    const r = out[i]!;
    const exp = 115 + (r & 7);
    out[i] = (r & 0x8000) | (exp << 7) | ((r >>> 3) & 0x7f);
  }
  if (center !== 0) {
    // norm weights near `center` (1.0 = 0x3f80)
    for (let i = 0; i < n; i++) out[i] = 0x3f80 + (out[i]! & 0x1f);
  }
  return new Uint8Array(out.buffer, 0, n * 2);
}

function bf16ToF16(bytes: Uint8Array): Uint8Array {
  const h = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  const bits = new Uint32Array(h.length);
  for (let i = 0; i < h.length; i++) bits[i] = h[i]! << 16;
  return new Uint8Array(Float16Array.from(new Float32Array(bits.buffer)).buffer);
}

class MemStore {
  readonly tensors = new Map<string, TensorEntry>();
  totalBytes = 0;
  constructor(readonly dir: string) {}
  put(name: string, dtype: StDType, shape: number[], bytes: Uint8Array): void {
    this.tensors.set(name, { name, dtype, shape, bytes, file: "memory" });
    this.totalBytes += bytes.byteLength;
  }
  has(name: string): boolean {
    return this.tensors.has(name);
  }
  get(name: string): TensorEntry | undefined {
    return this.tensors.get(name);
  }
  require(name: string): TensorEntry {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`missing ${name}`);
    return t;
  }
  names(): string[] {
    return [...this.tensors.keys()];
  }
}

function buildModelDir(shape: string, format: Format): { md: ModelDir; decodeBytes: number } {
  const raw: Record<string, unknown> = { ...SHAPES[shape]!, architectures: ["Bench"] };
  const c = parseConfig(raw, `${shape}/config.json`);
  const store = new MemStore(`${shape}-${format}`);
  let decodeBytes = 0;
  const linear = (name: string, out: number, inp: number, countDecode = true) => {
    if (format === "bf16" || (format === "ternary" && name === "model.embed_tokens")) {
      store.put(`${name}.weight`, "BF16", [out, inp], randomBf16(out * inp));
      if (countDecode) decodeBytes += out * inp * 2;
      return;
    }
    if (format === "ternary") {
      // codes 0 or 1 in each 2-bit field: valid ternary codes (3 is none) from random bits
      const packed = new Uint8Array((out / 4) * inp);
      fillRandom(new Uint32Array(packed.buffer));
      for (let i = 0; i < packed.length; i++) packed[i] = packed[i]! & 0x55;
      store.put(`${name}.weight`, "U8", [out / 4, inp], packed);
      store.put(`${name}.weight_scale`, "BF16", [1], new Uint8Array(new Uint16Array([0x3c00]).buffer));
      if (countDecode) decodeBytes += packed.byteLength;
      return;
    }
    if (format === "mxfp8") {
      // E4M3 codes below the NaN pattern, E8M0 scales of 2^-15 .. 2^-8 per 32 values (how Gemma 4 snapshots ship)
      const codes = new Uint8Array(out * inp);
      fillRandom(new Uint32Array(codes.buffer));
      for (let i = 0; i < codes.length; i++) codes[i] = codes[i]! & 0xf7;
      const scales = new Uint8Array((out * inp) / 32);
      for (let i = 0; i < scales.length; i++) scales[i] = 112 + (codes[i]! & 7);
      store.put(`${name}.weight`, "U32", [out, inp / 4], codes);
      store.put(`${name}.scales`, "U8", [out, inp / 32], scales);
      if (countDecode) decodeBytes += codes.byteLength + scales.byteLength;
      return;
    }
    const { bits, group, sb } = AFFINE[format]!;
    const words = new Uint32Array((out * inp * bits) / 32);
    fillRandom(words);
    const groups = inp / group;
    // f16 scales hold the same random bf16 magnitudes, converted
    const side = () => (sb === "BF16" ? randomBf16(out * groups) : bf16ToF16(randomBf16(out * groups)));
    store.put(`${name}.weight`, "U32", [out, (inp * bits) / 32], new Uint8Array(words.buffer));
    store.put(`${name}.scales`, sb, [out, groups], side());
    store.put(`${name}.biases`, sb, [out, groups], side());
    if (countDecode) decodeBytes += words.byteLength + 4 * out * groups;
  };
  const norm = (name: string, n: number) => store.put(name, "BF16", [n], randomBf16(n, 1));
  const H = c.hiddenSize;
  // The head reads its whole table every decode step: the embeddings when tied (a lookup reads one row of them).
  linear("model.embed_tokens", c.vocabSize, H, c.tieWordEmbeddings);
  if (!c.tieWordEmbeddings) linear("lm_head", c.vocabSize, H);
  norm("model.norm.weight", H);
  const int = (k: string) => raw[k] as number;
  if (c.modelType === "gemma4_text") {
    buildGemma4(raw, c.numLayers, H, format === "mxfp8" ? 8.25 : 4.5, linear, norm, (bytes) => (decodeBytes += bytes), store);
  }
  for (let i = 0; c.modelType !== "gemma4_text" && i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    norm(`${p}.input_layernorm.weight`, H);
    norm(`${p}.post_attention_layernorm.weight`, H);
    if (c.modelType === "qwen3_5_text") {
      if (c.layerTypes?.[i] === "linear_attention") {
        // Gated DeltaNet in transformers' layout: conv1d [C, 1, K]; A_log f32; the rest like any Linear.
        const a = `${p}.linear_attn`;
        const hk = int("linear_num_key_heads"), dk = int("linear_key_head_dim");
        const hv = int("linear_num_value_heads"), dv = int("linear_value_head_dim"), k = int("linear_conv_kernel_dim");
        const convDim = 2 * hk * dk + hv * dv;
        linear(`${a}.in_proj_qkv`, convDim, H);
        linear(`${a}.in_proj_z`, hv * dv, H);
        linear(`${a}.in_proj_b`, hv, H);
        linear(`${a}.in_proj_a`, hv, H);
        linear(`${a}.out_proj`, H, hv * dv);
        store.put(`${a}.conv1d.weight`, "BF16", [convDim, 1, k], randomBf16(convDim * k));
        store.put(`${a}.A_log`, "F32", [hv], new Uint8Array(new Float32Array(hv).fill(-1).buffer));
        store.put(`${a}.dt_bias`, "BF16", [hv], randomBf16(hv));
        norm(`${a}.norm.weight`, dv);
        decodeBytes += convDim * k * 2;
      } else {
        // Gated attention: q_proj gives the query and its gate.
        const a = `${p}.self_attn`;
        linear(`${a}.q_proj`, 2 * c.numHeads * c.headDim, H);
        linear(`${a}.k_proj`, c.numKvHeads * c.headDim, H);
        linear(`${a}.v_proj`, c.numKvHeads * c.headDim, H);
        linear(`${a}.o_proj`, H, c.numHeads * c.headDim);
        norm(`${a}.q_norm.weight`, c.headDim);
        norm(`${a}.k_norm.weight`, c.headDim);
      }
      linear(`${p}.mlp.gate_proj`, c.intermediateSize, H);
      linear(`${p}.mlp.up_proj`, c.intermediateSize, H);
      linear(`${p}.mlp.down_proj`, H, c.intermediateSize);
      continue;
    }
    linear(`${p}.self_attn.q_proj`, c.numHeads * c.headDim, H);
    linear(`${p}.self_attn.k_proj`, c.numKvHeads * c.headDim, H);
    linear(`${p}.self_attn.v_proj`, c.numKvHeads * c.headDim, H);
    linear(`${p}.self_attn.o_proj`, H, c.numHeads * c.headDim);
    if (c.modelType === "qwen3") {
      norm(`${p}.self_attn.q_norm.weight`, c.headDim);
      norm(`${p}.self_attn.k_norm.weight`, c.headDim);
    }
    if (c.modelType === "bitnet") {
      norm(`${p}.self_attn.attn_sub_norm.weight`, H);
      norm(`${p}.mlp.ffn_sub_norm.weight`, c.intermediateSize);
    }
    linear(`${p}.mlp.gate_proj`, c.intermediateSize, H);
    linear(`${p}.mlp.up_proj`, c.intermediateSize, H);
    linear(`${p}.mlp.down_proj`, H, c.intermediateSize);
  }
  const affine = AFFINE[format];
  const quant: QuantConfig | null =
    affine
      ? { global: { mode: "affine", bits: affine.bits, groupSize: affine.group }, overrides: new Map() }
      : format === "ternary"
        ? { global: null, overrides: new Map(), legacyMethod: "bitnet" }
        : format === "mxfp8"
          ? { global: { mode: "mxfp8", bits: 8, groupSize: 32 }, overrides: new Map() }
          : null;
  const md: ModelDir = { dir: store.dir, config: c, quant, weights: store as unknown as WeightStore };
  return { md, decodeBytes };
}

/** Gemma 4's tensors beside the embedding and final norm (mlx-lm names); countDecode adds bytes a step reads. */
function buildGemma4(
  raw: Record<string, unknown>,
  L: number,
  H: number,
  bitsPerWeight: number,
  linear: (name: string, out: number, inp: number, countDecode?: boolean) => void,
  norm: (name: string, n: number) => void,
  countDecode: (bytes: number) => void,
  store: MemStore,
): void {
  const int = (k: string) => raw[k] as number;
  const P = int("hidden_size_per_layer_input");
  const shared = int("num_kv_shared_layers");
  // The PLE table is read one row per token: only that row counts (codes and their scales, biases).
  linear("model.embed_tokens_per_layer", int("vocab_size_per_layer_input"), L * P, false);
  countDecode((L * P * bitsPerWeight) / 8);
  linear("model.per_layer_model_projection", L * P, H);
  norm("model.per_layer_projection_norm.weight", P);
  const types = raw.layer_types as string[];
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}`;
    const full = types[i] === "full_attention";
    const hd = full ? int("global_head_dim") : int("head_dim");
    const ownKv = i < L - shared;
    for (const n of ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm", "post_per_layer_input_norm"]) {
      norm(`${p}.${n}.weight`, H);
    }
    linear(`${p}.self_attn.q_proj`, int("num_attention_heads") * hd, H);
    linear(`${p}.self_attn.o_proj`, H, int("num_attention_heads") * hd);
    norm(`${p}.self_attn.q_norm.weight`, hd);
    if (ownKv) {
      linear(`${p}.self_attn.k_proj`, int("num_key_value_heads") * hd, H);
      linear(`${p}.self_attn.v_proj`, int("num_key_value_heads") * hd, H);
      norm(`${p}.self_attn.k_norm.weight`, hd);
    }
    const I = int("intermediate_size") * (!ownKv && raw.use_double_wide_mlp ? 2 : 1);
    linear(`${p}.mlp.gate_proj`, I, H);
    linear(`${p}.mlp.up_proj`, I, H);
    linear(`${p}.mlp.down_proj`, H, I);
    linear(`${p}.per_layer_input_gate`, P, H);
    linear(`${p}.per_layer_projection`, H, P);
    store.put(`${p}.layer_scalar`, "BF16", [1], new Uint8Array(new Uint16Array([0x3f80]).buffer));
  }
}

function triadBandwidth(): number {
  const n = 32 * 1024 * 1024;
  const out = new Float64Array(1);
  const st = native().rmlx_bench_triad(n, 5, ptr(out));
  if (st !== 0) throw new Error("rmlx_bench_triad failed");
  return (3 * 4 * n) / out[0]!;
}

/** mlx-c calls per decode step, where the mlx backend counts them (RMLX_MLX_COUNT_CALLS=1). */
function mlxCallCounter(be: Backend, m: SchedulerModel): StepMeter {
  if (!(be instanceof MlxBackend) || process.env.RMLX_MLX_COUNT_CALLS !== "1") return { model: m, perStep: () => undefined };
  return decodeStepMeter(m, () => be.lib.calls());
}

interface Figures {
  prefillTps: number;
  decodeTps: number;
  boundFraction: number;
  hostMs: number;
}

function run(shape: string, format: Format, promptLen: number, gen: number, bw: number): Figures {
  const be = getBackend();
  const t0 = performance.now();
  const { md, decodeBytes } = buildModelDir(shape, format);
  const model = loadModel(be, md);
  const buildS = (performance.now() - t0) / 1000;
  const cache = cacheForTokens(model, promptLen + gen + 1, KV_CODEC);
  const prompt = Array.from({ length: promptLen }, (_, i) => (i * 7919 + 13) % model.vocabSize);
  // The engine's own path, as `rmlx bench` and the server run a request: the scheduler (chunked prefill, one
  // batched step per token), the sampler, the KV cache in the codec that counts. gen decode steps follow the
  // first token.
  const request = { prompt, maxTokens: gen + 1, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], stopTokenIds: [], ignoreEos: true };
  // One untimed request first, as llama-bench runs one before its timed runs: the first touch of the weights'
  // mapping, the step arena and the KV pool's pages is paid once by a server, not by every request. Its prompt
  // differs in every token, so nothing of it can be reused by the timed one.
  const warm = prompt.map((t) => (t + 1) % model.vocabSize);
  generate(tokenModel(model, cache), { ...request, prompt: warm, maxTokens: 2 });
  const host = hostTimer(model.backend, tokenModel(model, cache));
  const calls = mlxCallCounter(model.backend, host.model);
  const out = generate(calls.model, request);
  const decodeTps = out.decodeTps;
  // A decode step reads every weight once and the KV of the whole context (at the mean context of the decode
  // steps); hybrids also read and write their recurrent state.
  const hybrid = HYBRIDS.has(shape);
  const stateBytes = hybrid ? 2 * (cache.states?.bytesPerSlot ?? 0) : 0;
  const kvBytes = cache.bytesPerToken * (promptLen + gen / 2);
  const stepBytes = decodeBytes + stateBytes + kvBytes;
  const boundTps = bw / stepBytes;
  const extra = `${hybrid ? ` + state ${(stateBytes / 2 ** 20).toFixed(0)}` : ""} + KV ${(kvBytes / 2 ** 20).toFixed(0)} MiB`;
  console.log(
    [
      (hybrid ? `${shape} @${promptLen}` : shape).padEnd(13),
      format.padEnd(5),
      `prefill ${out.promptTps.toFixed(1).padStart(8)} tok/s`,
      `decode ${decodeTps.toFixed(2).padStart(7)} tok/s`,
      `weights/step ${(decodeBytes / 2 ** 20).toFixed(0).padStart(5)} MiB${extra}`,
      `bound ${boundTps.toFixed(1).padStart(6)} tok/s (triad ${(bw / 1e9).toFixed(1)} GB/s)`,
      `${((100 * decodeTps) / boundTps).toFixed(1).padStart(5)}% of bound`,
      `host ${(host.perStep() ?? NaN).toFixed(2)} ms/step`,
      ...(calls.perStep() !== undefined ? [`mlx-c calls ${calls.perStep()!.toFixed(0)}/step (${(calls.perStep()! / model.layers.length).toFixed(0)}/layer)`] : []),
      `(setup ${buildS.toFixed(1)} s)`,
    ].join("  "),
  );
  cache.dispose();
  return { prefillTps: out.promptTps, decodeTps, boundFraction: decodeTps / boundTps, hostMs: host.perStep() ?? NaN };
}

const promptLen = Number(arg("prompt", "512"));
/** The KV codec of the bound and of the runs: f16 by default, the cheapest lossless-enough choice peers make too. */
const KV_CODEC = arg("kv-quant", "f16");
const gen = Number(arg("gen", "128"));
const models = arg("models", Object.keys(SHAPES).join(",")).split(",");
const formats = arg("formats", "bf16,q4,q2,ternary,mxfp8").split(",") as Format[];
const be = getBackend();
// The bound's bandwidth is the best triad seen so far in the run, measured again before every row: on a machine
// shared with other work one measurement moves by up to 2x between minutes, and a low one inflates every later
// row's fraction of the bound.
let bw = triadBandwidth();
const bestTriad = () => (bw = Math.max(bw, triadBandwidth()));
console.log(`backend ${be.device}; triad bandwidth ${(bw / 1e9).toFixed(1)} GB/s; prompt ${promptLen}, generate ${gen}`);
const withPeer = !process.argv.includes("--no-peer");
const rows: BenchmarkRow[] = [];
const contexts = arg("contexts", "512,8192").split(",").map(Number);
for (const m of models) {
  if (!SHAPES[m]) throw new Error(`unknown model shape ${m} (${Object.keys(SHAPES).join(", ")})`);
  for (const f of formats.filter((f) => (FORMATS_OF[m] ?? ["bf16", "q4"]).includes(f))) {
    if (HYBRIDS.has(m)) {
      const at = contexts.map((ctx) => ({ ctx, figures: run(m, f, ctx, gen, bestTriad()) }));
      for (const { ctx, figures } of at) {
        const shape = `${m} ${f} p${ctx} g${gen}`;
        rows.push(
          { name: "generate prefill", shape, figure: figures.prefillTps, unit: "tok/s" },
          { name: "generate decode", shape, figure: figures.decodeTps, unit: "tok/s" },
          { name: "generate decode bound fraction", shape, figure: figures.boundFraction, unit: "fraction" },
        );
      }
      if (at.length > 1) {
        const first = at[0]!, last = at[at.length - 1]!;
        console.log(`${"".padEnd(13)}  decode @${last.ctx} / @${first.ctx}: ${(last.figures.decodeTps / first.figures.decodeTps).toFixed(2)}x`);
      }
      continue;
    }
    const ours = run(m, f, promptLen, gen, bestTriad());
    const peerType = f === "q4" ? "q4_0" : "bf16";
    // the peer's random GGUFs have no BitNet, Gemma 4 or hybrid layout, and no 2-bit type of MLX's layout
    const peer = withPeer && !NO_PEER.has(m) && (f === "bf16" || f === "q4") ? peerGenerate(m as PeerModel, peerType, { prompt: promptLen, gen }) : null;
    const shape = `${m} ${f} p${promptLen} g${gen}`;
    const peerName = `llama.cpp ${peerType}`;
    if (peer?.ok) {
      console.log(
        `${"".padEnd(13)}  peer  ${peerName}: prefill ${peer.promptTps.toFixed(1)} tok/s, decode ${peer.decodeTps.toFixed(2)} tok/s` +
          `  -> ours/peer: prefill ${(ours.prefillTps / peer.promptTps).toFixed(2)}x, decode ${(ours.decodeTps / peer.decodeTps).toFixed(2)}x`,
      );
    } else if (peer) {
      console.log(`${"".padEnd(13)}  peer  unavailable: ${peer.reason}`);
    }
    const p = peer?.ok ? peer : null;
    rows.push(
      { name: "generate prefill", shape, figure: ours.prefillTps, unit: "tok/s", peerName: p ? peerName : undefined, peerFigure: p?.promptTps },
      { name: "generate decode", shape, figure: ours.decodeTps, unit: "tok/s", peerName: p ? peerName : undefined, peerFigure: p?.decodeTps },
      { name: "generate decode bound fraction", shape, figure: ours.boundFraction, unit: "fraction" },
      { name: "generate host time per decode step", shape, figure: ours.hostMs, unit: "ms" },
    );
  }
}
const store = MetricsStore.open(defaultDbPath());
store.startRun({ kind: "bench", backend: be.name, device: be.device });
store.recordBenchmarks(rows);
store.close();
