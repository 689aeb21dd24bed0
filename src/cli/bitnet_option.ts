// --bitnet-activations, shared by the subcommands that load a model (serve hands it to its engine worker): how
// BitNet b1.58's ternary linears take their input. int8 quantizes each token's activations to int8 (absmax) as
// transformers does, so that tokens match it; float multiplies the float activations by the ternary weights times
// their scale, as mlx-lm does (its weights repacked at load to 2.25 bits a weight, against 2 packed).
import type { Command } from "commander";
import { RmlxError } from "../errors.ts";
import { BITNET_ACTIVATIONS, type BitnetActivations, type ModelOptions } from "../models/family.ts";
import { pick } from "./parse.ts";

export interface BitnetFlags {
  bitnetActivations?: string;
}

export function addBitnetOption(cmd: Command): Command {
  return cmd.option(
    "--bitnet-activations <mode>",
    "BitNet b1.58's linears: int8 (activations quantized per token, as transformers, whose tokens it matches) or float (as mlx-lm) (env RMLX_BITNET_ACTIVATIONS; default int8)",
  );
}

/** The model options of the flags and environment, checked. */
export function modelOptionsFrom(f: BitnetFlags): ModelOptions {
  const v = pick(f.bitnetActivations, "RMLX_BITNET_ACTIVATIONS", "int8");
  if (!BITNET_ACTIVATIONS.includes(v as BitnetActivations))
    throw new RmlxError("invalid_argument", `--bitnet-activations must be ${BITNET_ACTIVATIONS.join(" or ")} (got '${v}')`);
  return { bitnetActivations: v as BitnetActivations };
}
