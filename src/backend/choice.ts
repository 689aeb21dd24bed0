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
