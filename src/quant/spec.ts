// One module's quantization parameters, their validation, and the tensors they produce.
import { RmlxError } from "../errors.ts";
import { AFFINE_BITS, AFFINE_GROUPS } from "./affine.ts";
import { FP_PARAMS, type FpMode } from "./fp.ts";

export type QuantMode = "affine" | FpMode;

export const QUANT_MODES: readonly QuantMode[] = ["affine", "mxfp4", "mxfp8", "nvfp4"];

export interface QSpec {
  mode: QuantMode;
  bits: number;
  groupSize: number;
}

/** mlx-lm's defaults per mode when --bits / --group-size are not given. */
export function defaultSpec(mode: QuantMode, bits?: number, groupSize?: number): QSpec {
  if (mode === "affine") return { mode, bits: bits ?? 4, groupSize: groupSize ?? 64 };
  const p = FP_PARAMS[mode];
  return { mode, bits: bits ?? p.bits, groupSize: groupSize ?? p.groupSize };
}

export function parseMode(s: string): QuantMode {
  if (!(QUANT_MODES as readonly string[]).includes(s))
    throw new RmlxError("invalid_argument", `unknown quantization mode '${s}' (expected ${QUANT_MODES.join(", ")})`);
  return s as QuantMode;
}

export function validateSpec(q: QSpec): void {
  if (q.mode === "affine") {
    if (!(AFFINE_BITS as readonly number[]).includes(q.bits))
      throw new RmlxError("invalid_argument", `affine quantization supports bits ${AFFINE_BITS.join(", ")}, not ${q.bits}`);
    if (!(AFFINE_GROUPS as readonly number[]).includes(q.groupSize))
      throw new RmlxError(
        "invalid_argument",
        `affine quantization supports group sizes ${AFFINE_GROUPS.join(", ")}, not ${q.groupSize}`,
      );
    return;
  }
  const p = FP_PARAMS[q.mode];
  if (q.bits !== p.bits) throw new RmlxError("invalid_argument", `${q.mode} requires bits ${p.bits}, not ${q.bits}`);
  if (q.groupSize !== p.groupSize)
    throw new RmlxError("invalid_argument", `${q.mode} requires group size ${p.groupSize}, not ${q.groupSize}`);
}
