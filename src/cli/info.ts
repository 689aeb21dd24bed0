import type { Command } from "commander";
import { RmlxError } from "../errors.ts";
import { openModelDir } from "../io/model_dir.ts";
import { kvCacheBytes, summarize, unsupportedReason, type ModelSummary, type RopeSummary } from "../io/summary.ts";
import { isEmbeddingDir, summarizeEmbedding, type EmbeddingSummary } from "../io/sentence_transformers.ts";
import { bert } from "../models/bert.ts";
import { ENCODER_MODEL_TYPES, SUPPORTED_MODEL_TYPES } from "../models/registry.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { parseKvCodec } from "../quant/kv_codec.ts";
import { addKvOption, kvCodecFrom, type KvFlags } from "./kv_option.ts";
import { builtinModelDir } from "../builtin/index.ts";

interface InfoOptions extends BackendFlags, KvFlags {
  model?: string;
  json?: boolean;
  verbose?: boolean;
}

/** "libmlxc not found (looked in a, b, c; set ...)" keeps its list of places for -v. */
function brief(reason: string, verbose: boolean): string {
  return verbose ? reason : reason.replace(/ \(looked in [^)]*\)/, " (-v lists where)");
}

/**
 * "native (cpu avx2, x16 decode products)", with ", bf16 prefill products" when --gemm bf16 or x16 is in effect
 * (the default, auto, follows the decode products); the ISA and the --gemv / --gemm modes are left out when the
 * native library cannot be loaded, since info needs no compute.
 */
async function nativeBackendName(): Promise<string> {
  try {
    const { native } = await import("../backend/native/lib.ts");
    const lib = native();
    const gemm = String(lib.rmlx_gemm_mode());
    return `native (cpu ${String(lib.rmlx_isa())}, ${String(lib.rmlx_gemv_mode())} decode products${gemm === "f32" || gemm === "auto" ? "" : `, ${gemm} prefill products`})`;
  } catch {
    return "native (cpu)";
  }
}

/** The backend --backend would pick here ("native (cpu avx2)"), and why ("auto: libmlxc not found (...)"). */
async function chosenBackend(): Promise<{ backend: string; backend_reason: string }> {
  const { resolveBackend } = await import("../backend/index.ts");
  const r = resolveBackend();
  return { backend: r.name === "native" ? await nativeBackendName() : "mlx", backend_reason: r.reason };
}

function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(2)} ${units[u]}`;
}

function formatCount(n: number): string {
  const scaled =
    n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(2)}K` : "";
  return scaled ? `${scaled} (${n.toLocaleString("en-US")})` : String(n);
}

/** "linear x8, base 1000000, rotary 25% of head_dim" */
function describeRope(r: RopeSummary): string {
  const parts = [r.factor !== undefined ? `${r.type} x${r.factor}` : r.type, `base ${r.base}`];
  if (r.partial_rotary_factor !== undefined) parts.push(`rotary ${r.partial_rotary_factor * 100}% of head_dim`);
  return parts.join(", ");
}

type InfoOut = Omit<ModelSummary, "kv_cache_bytes"> & {
  kv_cache_bytes: Record<string, number | null>;
  kv_cache_dtype: string;
  runnable: boolean;
  backend: string | null;
  backend_reason?: string;
  reason?: string;
  /** Present for a sentence-transformers embedding model. */
  embedding?: EmbeddingSummary;
};

/** "embedding model, mean pooling, dimension 768 (Dense 768->3072->768), normalized; prompts: query, document" */
function describeEmbedding(e: EmbeddingSummary): string {
  const dense = e.dense.length ? ` (Dense ${e.dense.join("->")})` : "";
  const parts = [`embedding model, ${e.pooling} pooling, dimension ${e.dimension}${dense}`, e.normalize ? "normalized" : "not normalized"];
  if (e.max_seq_length !== undefined) parts.push(`max ${e.max_seq_length} tokens`);
  const prompts = e.prompts.length ? `; prompts: ${e.prompts.join(", ")}` : "";
  return `${parts.join(", ")}${prompts}`;
}

function humanLines(s: InfoOut): [string, string][] {
  const layers = s.layer_types
    ? `${s.layers} (${Object.entries(s.layer_types)
        .map(([t, n]) => `${n} ${t.replace("_attention", "")}`)
        .join(", ")})`
    : String(s.layers);
  const lines: [string, string][] = [
    ...(s.embedding ? [["kind", describeEmbedding(s.embedding)] as [string, string]] : []),
    ["architecture", s.architecture || "(not stated)"],
    ["model_type", s.model_type],
    ["parameters", formatCount(s.parameters)],
    ["layers", layers],
    ["hidden_size", String(s.hidden_size)],
    ["heads", String(s.heads)],
    ["kv_heads", String(s.kv_heads)],
    ["head_dim", String(s.head_dim)],
    ["intermediate_size", String(s.intermediate_size)],
  ];
  if (s.experts !== undefined) lines.push(["experts", `${s.experts}, ${s.experts_per_token ?? "?"} per token`]);
  lines.push(["vocab_size", String(s.vocab_size)], ["context_length", String(s.context_length)]);
  // BERT-family encoders learn absolute positions: no rope
  if (!bert.modelTypes.includes(s.model_type)) lines.push(["rope", describeRope(s.rope)]);
  if (s.local_rope) lines.push(["rope (sliding layers)", describeRope(s.local_rope)]);
  if (s.sliding_window !== undefined) lines.push(["sliding_window", String(s.sliding_window)]);
  lines.push(
    ["quantization", s.quantization],
    ["size on disk", formatBytes(s.size_bytes)],
    ["memory: weights", formatBytes(s.weights_bytes)],
  );
  if (s.per_layer_embeddings) {
    const p = s.per_layer_embeddings;
    lines.push(["memory: per-layer embeddings", `${formatBytes(p.bytes)} (${formatCount(p.parameters)} parameters, part of the weights)`]);
  }
  // Hybrids keep KV only in their full-attention layers; their linear-attention layers hold a fixed-size state.
  const full = s.recurrent_state_bytes !== undefined ? (s.layer_types?.full_attention ?? 0) : undefined;
  const kvNote = full !== undefined ? `, ${full} full-attention layer${full === 1 ? "" : "s"}` : "";
  // The codec in use here first, then every --kv-quant codec's size ("n/a": the codec cannot take head_dim).
  // an embedding model keeps no KV cache: each request runs once over its inputs
  for (const [tokens, bytes] of s.embedding ? [] : Object.entries(s.kv_cache_bytes)) {
    const size = (b: number | null | undefined) => (b === null || b === undefined ? "n/a" : formatBytes(b));
    const others = Object.entries(s.kv_cache_bytes_by_codec)
      .filter(([codec]) => codec !== s.kv_cache_dtype)
      .map(([codec, by]) => `${codec} ${size(by[tokens])}`);
    lines.push([`memory: KV cache @ ${Number(tokens) / 1024}k`, `${size(bytes)} (${s.kv_cache_dtype}, one sequence${kvNote}); ${others.join(", ")}`]);
  }
  if (s.recurrent_state_bytes !== undefined) {
    const linear = s.layer_types?.linear_attention ?? 0;
    lines.push([
      "memory: recurrent state",
      `${formatBytes(s.recurrent_state_bytes)} per sequence (f32, ${linear} linear-attention layer${linear === 1 ? "" : "s"}, any context length)`,
    ]);
  }
  if (s.mtp) {
    const n = s.mtp.layers;
    lines.push([
      "mtp head",
      `${n} layer${n === 1 ? "" : "s"}, ${formatCount(s.mtp.parameters)} parameters, ${formatBytes(s.mtp.bytes)} (in the totals above; drafts with --draft-kind mtp)`,
    ]);
  }
  lines.push(
    ["tokenizer", s.tokenizer ? "yes" : "no"],
    ["chat template", s.chat_template ? "yes" : "no"],
    ["runnable", s.runnable ? `yes, on ${s.backend} (${s.backend_reason})` : `no: ${s.reason}`],
  );
  return lines;
}

export function register(program: Command): void {
  addKvOption(addBackendOptions(program.command("info")))
    .description("Describe a model directory: architecture, size, quantization, memory, and whether it can run")
    .argument("[model]", "the model directory, as -m takes it")
    .option("-m, --model <dir>", "model directory: config.json and .safetensors files (default: the built-in model)")
    .option("--json", "print one JSON object instead of aligned lines")
    .option("-v, --verbose", "say more: where libmlxc was looked for")
    .action(
      action(async (positional: string | undefined, opts: InfoOptions) => {
        applyBackendFlags(opts);
        if (positional !== undefined && opts.model !== undefined && positional !== opts.model) {
          throw new RmlxError("invalid_argument", `two model directories: '${positional}' and -m '${opts.model}'`);
        }
        const codec = parseKvCodec(kvCodecFrom(opts) ?? "f32");
        const md = openModelDir(opts.model ?? positional ?? builtinModelDir());
        let embedding: EmbeddingSummary | undefined;
        let reason: string | null;
        if (isEmbeddingDir(md.dir)) {
          try {
            embedding = summarizeEmbedding(md.dir, md.config.hiddenSize);
            reason = unsupportedReason(md, ENCODER_MODEL_TYPES);
          } catch (e) {
            reason = (e as Error).message;
          }
        } else {
          reason = unsupportedReason(md, SUPPORTED_MODEL_TYPES);
        }
        const chosen = reason === null ? await chosenBackend() : { backend: null };
        if ("backend_reason" in chosen) chosen.backend_reason = brief(chosen.backend_reason, Boolean(opts.verbose));
        const summary = summarize(md);
        const out: InfoOut = {
          ...summary,
          // The codec the engine would use here; null where it cannot take a layer's head_dim.
          kv_cache_bytes: Object.fromEntries(Object.keys(summary.kv_cache_bytes).map((t) => [t, kvCacheBytes(md, Number(t), codec)])),
          kv_cache_dtype: codec.name,
          runnable: reason === null,
          ...chosen,
          ...(reason ? { reason } : {}),
          ...(embedding ? { embedding } : {}),
        };
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
          return;
        }
        const lines = humanLines(out);
        const width = Math.max(...lines.map(([k]) => k.length)) + 1;
        process.stdout.write(lines.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}`).join("\n") + "\n");
      }),
    );
}
