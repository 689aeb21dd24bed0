// --kv-dtype, shared by the subcommands that hold a KV cache. f32 keeps attention exact against f32 references;
// f16 and bf16 halve the cache and the bytes each decode step reads from it (MLX keeps the cache in the model's
// dtype, usually bf16).
import type { Command } from "commander";
import type { DType } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";

const KV_DTYPES = ["f32", "f16", "bf16"] as const;
export type KvDtype = (typeof KV_DTYPES)[number];

export interface KvFlags {
  kvDtype?: string;
}

export function addKvOption(cmd: Command): Command {
  return cmd.option("--kv-dtype <type>", "KV cache element type: f32, f16 or bf16 (env RMLX_KV_DTYPE; default f32)");
}

/** The flag, else RMLX_KV_DTYPE, else f32. */
export function kvDtypeFrom(f: KvFlags): DType {
  const v = f.kvDtype ?? process.env.RMLX_KV_DTYPE ?? "f32";
  if (!(KV_DTYPES as readonly string[]).includes(v)) {
    throw new RmlxError("invalid_argument", `--kv-dtype must be one of ${KV_DTYPES.join(", ")} (got '${v}')`);
  }
  return v as KvDtype;
}
