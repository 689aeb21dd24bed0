// --kv-quant, shared by the subcommands that hold a KV cache: how the paged cache stores keys and values (see
// src/quant/kv_codec.ts). f32 keeps attention exact against f32 references; f16 and bf16 halve the cache; q8
// (8.5 bits a value), k8v4 (6.5), q4 (4.5), fp8 (8.25), turbo4 (4.125 at head_dim 128) and turbo3 (3.125) store
// packed pages that attention reads in place; the turbo codecs need a power-of-two head_dim.
// --kv-dtype (f32, f16, bf16) is the older spelling of the float codecs.
import type { Command } from "commander";
import { KV_CODEC_NAMES, parseKvCodec } from "../quant/kv_codec.ts";
import { RmlxError } from "../errors.ts";

export interface KvFlags {
  kvQuant?: string;
  kvDtype?: string;
}

export function addKvOption(cmd: Command): Command {
  return cmd
    .option(
      "--kv-quant <codec>",
      `KV cache codec: ${KV_CODEC_NAMES.join(", ")}; q8/q4/k8v4/fp8 take a group suffix g32 or g64, e.g. q4g32; turbo4/turbo3 need a power-of-two head_dim (env RMLX_KV_QUANT; default f32, or the activations' bf16/f16 where the mlx backend computes in it)`,
    )
    .option("--kv-dtype <type>", "older spelling of --kv-quant f32, f16 or bf16 (env RMLX_KV_DTYPE)");
}

/**
 * The codec name: --kv-quant, else --kv-dtype, else RMLX_KV_QUANT, else RMLX_KV_DTYPE; checked here. Undefined
 * when none is given: the engine then takes defaultKvCodec of the model's backend.
 */
export function kvCodecFrom(f: KvFlags): string | undefined {
  if (f.kvQuant !== undefined && f.kvDtype !== undefined && f.kvQuant !== f.kvDtype) {
    throw new RmlxError("invalid_argument", `--kv-quant ${f.kvQuant} and --kv-dtype ${f.kvDtype} disagree: give one`);
  }
  const v = f.kvQuant ?? f.kvDtype ?? process.env.RMLX_KV_QUANT ?? process.env.RMLX_KV_DTYPE;
  if (v === undefined) return undefined;
  if (f.kvQuant === undefined && f.kvDtype !== undefined && !["f32", "f16", "bf16"].includes(f.kvDtype)) {
    throw new RmlxError("invalid_argument", `--kv-dtype must be one of f32, f16, bf16 (got '${f.kvDtype}'); see --kv-quant`);
  }
  return parseKvCodec(v).name;
}
