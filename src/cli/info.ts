import type { Command } from "commander";
import { RmlxError } from "../errors.ts";
import { openModelDir } from "../io/model_dir.ts";
import { summarize, unsupportedReason, type ModelSummary, type RopeSummary } from "../io/summary.ts";
import { SUPPORTED_MODEL_TYPES } from "../models/registry.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";

interface InfoOptions extends BackendFlags {
  model?: string;
  json?: boolean;
}

/**
 * "native (cpu avx2, x16 decode products)"; the ISA and the --gemv mode are left out when the native library
 * cannot be loaded, since info needs no compute.
 */
async function nativeBackendName(): Promise<string> {
  try {
    const { native } = await import("../backend/native/lib.ts");
    const lib = native();
    return `native (cpu ${String(lib.rmlx_isa())}, ${String(lib.rmlx_gemv_mode())} decode products)`;
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

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(2)} ${units[u]}`;
}

export function formatCount(n: number): string {
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

function humanLines(s: ModelSummary & { runnable: boolean; backend: string | null; backend_reason?: string; reason?: string }): [string, string][] {
  const layers = s.layer_types
    ? `${s.layers} (${Object.entries(s.layer_types)
        .map(([t, n]) => `${n} ${t.replace("_attention", "")}`)
        .join(", ")})`
    : String(s.layers);
  const lines: [string, string][] = [
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
  lines.push(["rope", describeRope(s.rope)]);
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
  // One line per context: each --kv-quant codec's cache for one sequence ("n/a": the codec cannot take head_dim).
  for (const tokens of Object.keys(s.kv_cache_bytes)) {
    const perCodec = Object.entries(s.kv_cache_bytes_by_codec).map(([codec, by]) => {
      const b = by[tokens];
      return `${codec} ${b === null || b === undefined ? "n/a" : formatBytes(b)}`;
    });
    lines.push([`memory: KV cache @ ${Number(tokens) / 1024}k`, `${perCodec.join(", ")} (one sequence)`]);
  }
  lines.push(
    ["tokenizer", s.tokenizer ? "yes" : "no"],
    ["chat template", s.chat_template ? "yes" : "no"],
    ["runnable", s.runnable ? `yes, on ${s.backend} (${s.backend_reason})` : `no: ${s.reason}`],
  );
  return lines;
}

export function register(program: Command): void {
  addBackendOptions(program.command("info"))
    .description("Describe a model directory: architecture, size, quantization, memory, and whether it can run")
    .requiredOption("-m, --model <dir>", "model directory (config.json and .safetensors files)")
    .option("--json", "print one JSON object instead of aligned lines")
    .action(
      action(async (opts: InfoOptions) => {
        if (!opts.model) throw new RmlxError("invalid_argument", "info needs --model DIR");
        applyBackendFlags(opts);
        const md = openModelDir(opts.model);
        const reason = unsupportedReason(md, SUPPORTED_MODEL_TYPES);
        const chosen = reason === null ? await chosenBackend() : { backend: null };
        const out = { ...summarize(md), runnable: reason === null, ...chosen, ...(reason ? { reason } : {}) };
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
