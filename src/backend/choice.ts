// The --backend / RMLX_BACKEND values, apart from the backends themselves: flag parsing must not load bun:ffi
// or the backends' modules (a conversion under a tight memory limit has no room for them).
import { RmlxError } from "../errors.ts";

/**
 * value (a flag's or its environment variable's) as one of choices, case and surrounding space ignored;
 * undefined when empty; otherwise one line naming the flag, the variable and the choices.
 */
function parseChoice<T extends string>(value: string | undefined, choices: readonly T[], what: string, flag: string, env: string): T | undefined {
  const v = (value ?? "").trim().toLowerCase();
  if (v === "") return undefined;
  if ((choices as readonly string[]).includes(v)) return v as T;
  const list = `${choices.slice(0, -1).join(", ")} or ${choices[choices.length - 1]}`;
  throw new RmlxError("invalid_argument", `unknown ${what} '${value}' (${flag} / ${env}: ${list})`);
}

export type BackendChoice = "auto" | "native" | "mlx";
export const BACKEND_CHOICES: readonly BackendChoice[] = ["auto", "native", "mlx"];

export function parseBackendChoice(value: string | undefined): BackendChoice {
  return parseChoice(value, BACKEND_CHOICES, "backend", "--backend", "RMLX_BACKEND") ?? "auto";
}

/** Arithmetic of the native decode products of quantized weights (native/cpu/qkern_x16_impl.h, qkern_fp8_impl.h). */
export type GemvMode = "x8" | "x16" | "f32";
const GEMV_MODES: readonly GemvMode[] = ["x8", "x16", "f32"];

/** --gemv / RMLX_GEMV; undefined when unset (the library's default, x16). */
export function parseGemvMode(value: string | undefined): GemvMode | undefined {
  return parseChoice(value, GEMV_MODES, "gemv mode", "--gemv", "RMLX_GEMV");
}

/**
 * Arithmetic of the native prefill-shaped products (native/cpu/qkern_impl.h): exact f32, x16 (integer products for
 * affine 4 and 8-bit weights at the one-row kernels' precision, f32 for the rest), bf16 dot products, or auto:
 * x16 while the decode products are not exact f32, except on the weights of models that route tokens to experts
 * (QuantizedWeight.exactRows), which stay f32.
 */
export type GemmMode = "auto" | "f32" | "x16" | "bf16";
const GEMM_MODES: readonly GemmMode[] = ["auto", "f32", "x16", "bf16"];

/** --gemm / RMLX_GEMM; undefined when unset (the library's default, auto). */
export function parseGemmMode(value: string | undefined): GemmMode | undefined {
  return parseChoice(value, GEMM_MODES, "gemm mode", "--gemm", "RMLX_GEMM");
}

/**
 * What activations are computed in on the mlx backend: the model's own dtype (as mlx-lm does), f32 (exact, what
 * the references use), or auto: the model's dtype on a Metal device, f32 on MLX's CPU build (whose quantized
 * products add up in the activation dtype and whose bf16 arithmetic is emulated: slower and less exact there).
 */
export type ComputeDtypeMode = "auto" | "model" | "f32";
const COMPUTE_DTYPE_MODES: readonly ComputeDtypeMode[] = ["auto", "model", "f32"];

/** --compute-dtype / RMLX_COMPUTE_DTYPE; "auto" when unset. */
export function parseComputeDtype(value: string | undefined): ComputeDtypeMode {
  return parseChoice(value, COMPUTE_DTYPE_MODES, "compute dtype", "--compute-dtype", "RMLX_COMPUTE_DTYPE") ?? "auto";
}
