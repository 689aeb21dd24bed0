// --backend, --mlx-lib, --gemv, --gemm, --compute-dtype, --mmap-weights and --threads, shared by every subcommand
// that computes. They set RMLX_BACKEND / RMLX_MLX_C_LIB / RMLX_GEMV / RMLX_GEMM / RMLX_COMPUTE_DTYPE /
// RMLX_MMAP_WEIGHTS / RMLX_THREADS for this process (flags override the environment); serve hands the same values
// to its engine worker.
import type { Command } from "commander";
import { RmlxError } from "../errors.ts";
import { parseBackendChoice, parseComputeDtype, parseGemmMode, parseGemvMode } from "../backend/choice.ts";

export interface BackendFlags {
  backend?: string;
  mlxLib?: string;
  gemv?: string;
  gemm?: string;
  computeDtype?: string;
  mmapWeights?: boolean;
  threads?: string;
}

export function addBackendOptions(cmd: Command): Command {
  return cmd
    .option("--backend <name>", "compute backend: auto, native or mlx (env RMLX_BACKEND; default auto: mlx when libmlxc loads on a Metal device, else native)")
    .option("--mlx-lib <path>", "libmlxc for the mlx backend (env RMLX_MLX_C_LIB; default: Homebrew's locations on macOS, /usr/local/lib elsewhere)")
    .option("--gemv <mode>", "native decode products of quantized weights: x16 (affine, mxfp4, nvfp4: x in 16-bit fixed point per weight group, about 1.7x faster; mxfp8: bf16 products of exact weights with x split in two bf16 parts where the CPU has AVX512-BF16, else exact f32 sums over a faster decode of the codes); x8: as x16, but affine 2/4-bit (8-bit with AVX512-VNNI) products with several rows of x, batched decode and prefill, put x in int8 per weight group, coarser by 128x; or f32 (the plain exact f32 kernels) (env RMLX_GEMV; default x16)")
    .option("--gemm <mode>", "native prefill products (many rows of x): auto (x16 as long as --gemv is not f32, except for models that route tokens to experts, where a near-tie between two experts would turn x16's rounding into another expert: f32 there), f32 (exact), x16 (affine 4 and 8-bit weights on 16-bit integer products with x in 16-bit fixed point per group, as the decode products have it: about 1.4x faster prompt processing on AVX-512, logits off by about 1e-4 of their scale; other formats and CPUs f32) or bf16 (x and the decoded weights rounded to bf16 for AVX512-BF16 dot products, about 1.7x, each product off by about 2^-9 of its terms; x16 where the CPU has no AVX512-BF16) (env RMLX_GEMM; default auto)")
    .option("--compute-dtype <mode>", "activations on the mlx backend: model (the dtype of the model's weights, bf16 for most, as mlx-lm computes), f32 (exact; what the reference tests use) or auto (model on a Metal device, f32 on MLX's CPU build, where bf16 is slower and its quantized products add up in bf16); the native backend computes in f32 either way (env RMLX_COMPUTE_DTYPE; default auto)")
    .option("-t, --threads <n>", "native backend: compute threads (env RMLX_THREADS; default: one per online core)")
    .option("--mmap-weights", "native backend: use weights in the model files' mapping (4 KiB pages) instead of reading those of 1 MiB or more into the library's memory (2 MiB pages) at load, which decodes faster and loads a little slower (env RMLX_MMAP_WEIGHTS=1)");
}

export function applyBackendFlags(f: BackendFlags): void {
  if (f.backend !== undefined) process.env.RMLX_BACKEND = parseBackendChoice(f.backend);
  else parseBackendChoice(process.env.RMLX_BACKEND);
  if (f.mlxLib !== undefined) process.env.RMLX_MLX_C_LIB = f.mlxLib;
  const gemv = parseGemvMode(f.gemv ?? process.env.RMLX_GEMV);
  if (gemv) process.env.RMLX_GEMV = gemv;
  const gemm = parseGemmMode(f.gemm ?? process.env.RMLX_GEMM);
  if (gemm) process.env.RMLX_GEMM = gemm;
  process.env.RMLX_COMPUTE_DTYPE = parseComputeDtype(f.computeDtype ?? process.env.RMLX_COMPUTE_DTYPE);
  if (f.mmapWeights) process.env.RMLX_MMAP_WEIGHTS = "1";
  if (f.threads !== undefined) process.env.RMLX_THREADS = String(parseThreads(f.threads, "--threads", 1));
  // 0 in the environment is the default: one thread per online core.
  else if (process.env.RMLX_THREADS) process.env.RMLX_THREADS = String(parseThreads(process.env.RMLX_THREADS, "RMLX_THREADS", 0));
}

/** A thread count from least to 1024. */
function parseThreads(v: string, name: string, least: number): number {
  const n = /^\d+$/.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < least || n > 1024) throw new RmlxError("invalid_argument", `${name} must be an integer from ${least} to 1024 (got '${v}')`);
  return n;
}
