// --backend and --mlx-lib, shared by every subcommand that computes. They set RMLX_BACKEND / RMLX_MLX_C_LIB for
// this process (flags override the environment); serve hands the same values to its engine worker.
import type { Command } from "commander";
import { parseBackendChoice } from "../backend/choice.ts";

export interface BackendFlags {
  backend?: string;
  mlxLib?: string;
}

export function addBackendOptions(cmd: Command): Command {
  return cmd
    .option("--backend <name>", "compute backend: auto, native or mlx (env RMLX_BACKEND; default auto: mlx when libmlxc loads on a Metal device, else native)")
    .option("--mlx-lib <path>", "libmlxc for the mlx backend (env RMLX_MLX_C_LIB; default: Homebrew's locations on macOS, /usr/local/lib elsewhere)");
}

export function applyBackendFlags(f: BackendFlags): void {
  if (f.backend !== undefined) process.env.RMLX_BACKEND = parseBackendChoice(f.backend);
  else parseBackendChoice(process.env.RMLX_BACKEND);
  if (f.mlxLib !== undefined) process.env.RMLX_MLX_C_LIB = f.mlxLib;
}
