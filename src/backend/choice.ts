// The --backend / RMLX_BACKEND values, apart from the backends themselves: flag parsing must not load bun:ffi
// or the backends' modules (a conversion under a tight memory limit has no room for them).
import { RmlxError } from "../errors.ts";

export type BackendChoice = "auto" | "native" | "mlx";
export const BACKEND_CHOICES: readonly BackendChoice[] = ["auto", "native", "mlx"];

export function parseBackendChoice(value: string | undefined): BackendChoice {
  const v = (value ?? "").trim().toLowerCase();
  if (v === "") return "auto";
  if ((BACKEND_CHOICES as readonly string[]).includes(v)) return v as BackendChoice;
  throw new RmlxError("invalid_argument", `unknown backend '${value}' (--backend / RMLX_BACKEND: auto, native or mlx)`);
}

/** Arithmetic of the native decode products of quantized weights (native/cpu/qkern_x16_impl.h, qkern_fp8_impl.h). */
export type GemvMode = "x8" | "x16" | "f32";
const GEMV_MODES: readonly GemvMode[] = ["x8", "x16", "f32"];

/** --gemv / RMLX_GEMV; undefined when unset (the library's default, x16). */
export function parseGemvMode(value: string | undefined): GemvMode | undefined {
  const v = (value ?? "").trim().toLowerCase();
  if (v === "") return undefined;
  if ((GEMV_MODES as readonly string[]).includes(v)) return v as GemvMode;
  throw new RmlxError("invalid_argument", `unknown gemv mode '${value}' (--gemv / RMLX_GEMV: x8, x16 or f32)`);
}

/** Arithmetic of the native prefill-shaped products (native/cpu/qkern_impl.h): exact f32, or bf16 dot products. */
export type GemmMode = "bf16" | "f32";
const GEMM_MODES: readonly GemmMode[] = ["bf16", "f32"];

/** --gemm / RMLX_GEMM; undefined when unset (the library's default, f32). */
export function parseGemmMode(value: string | undefined): GemmMode | undefined {
  const v = (value ?? "").trim().toLowerCase();
  if (v === "") return undefined;
  if ((GEMM_MODES as readonly string[]).includes(v)) return v as GemmMode;
  throw new RmlxError("invalid_argument", `unknown gemm mode '${value}' (--gemm / RMLX_GEMM: bf16 or f32)`);
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
  const v = (value ?? "").trim().toLowerCase();
  if (v === "") return "auto";
  if ((COMPUTE_DTYPE_MODES as readonly string[]).includes(v)) return v as ComputeDtypeMode;
  throw new RmlxError("invalid_argument", `unknown compute dtype '${value}' (--compute-dtype / RMLX_COMPUTE_DTYPE: auto, model or f32)`);
}
