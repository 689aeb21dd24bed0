// Rotary embedding setup from a RopeConfig: the inverse frequencies are computed once here, as transformers'
// rope initialisers define them, and handed to Backend.rope through RopeOptions.freqs.
import type { RopeOptions } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { RopeConfig } from "../io/config.ts";

export interface RopeSetup {
  opts: RopeOptions;
  /** Positions from here on would need frequencies this setup does not have (dynamic scaling). */
  maxPosition: number;
}

/** The base inverse frequencies 1 / theta^(2i/dims), in f64 for the later arithmetic. */
function baseInvFreq(theta: number, dims: number): Float64Array {
  const out = new Float64Array(dims / 2);
  for (let i = 0; i < out.length; i++) out[i] = 1 / Math.pow(theta, (2 * i) / dims);
  return out;
}

function llama3(inv: Float64Array, rope: RopeConfig): Float64Array {
  const factor = rope.factor!;
  const low = rope.lowFreqFactor!;
  const high = rope.highFreqFactor!;
  const oldCtx = rope.originalMaxPositionEmbeddings!;
  const lowWavelen = oldCtx / low;
  const highWavelen = oldCtx / high;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) return f;
    if (wavelen > lowWavelen) return f / factor;
    const smooth = (oldCtx / wavelen - low) / (high - low);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

function yarnMscale(scale: number, m = 1): number {
  return scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
}

function yarn(rope: RopeConfig, dims: number, contextLength: number): { inv: Float64Array; mscale: number } {
  const base = rope.theta;
  const factor = rope.factor!;
  const origMax = rope.originalMaxPositionEmbeddings ?? contextLength;
  let mscale = rope.attentionFactor;
  if (mscale === undefined) {
    mscale =
      rope.mscale && rope.mscaleAllDim
        ? yarnMscale(factor, rope.mscale) / yarnMscale(factor, rope.mscaleAllDim)
        : yarnMscale(factor);
  }
  const betaFast = rope.betaFast ?? 32;
  const betaSlow = rope.betaSlow ?? 1;
  const correctionDim = (rot: number) => (dims * Math.log(origMax / (rot * 2 * Math.PI))) / (2 * Math.log(base));
  const lowDim = Math.max(Math.floor(correctionDim(betaFast)), 0);
  let highDim = Math.min(Math.ceil(correctionDim(betaSlow)), dims - 1);
  if (lowDim === highDim) highDim += 0.001;
  const half = dims / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    const posFreq = Math.pow(base, (2 * i) / dims);
    const ramp = Math.min(1, Math.max(0, (i - lowDim) / (highDim - lowDim)));
    const extrapolation = 1 - ramp;
    inv[i] = (1 / (factor * posFreq)) * (1 - extrapolation) + (1 / posFreq) * extrapolation;
  }
  return { inv, mscale };
}

/**
 * Gemma 4's proportional rope (transformers' _compute_proportional_rope_parameters): the first
 * floor(partial_rotary_factor * head_dim / 2) frequencies are theta^(-2i/head_dim) / factor, with the exponent over
 * the whole head dim, and the rest are 0, so that rotate-half over the whole head turns pairs (i, i + head_dim/2)
 * of the first ones only and leaves every other dim as it is.
 */
function proportional(rope: RopeConfig, headDim: number): RopeSetup {
  if (headDim < 2 || headDim % 2 !== 0) throw new RmlxError("bad_model", `proportional rope needs an even head_dim (got ${headDim})`);
  const factor = rope.factor ?? 1;
  const angles = Math.floor(((rope.partialRotaryFactor ?? 1) * headDim) / 2);
  if (angles < 1 || angles > headDim / 2)
    throw new RmlxError("bad_model", `proportional rope: partial_rotary_factor ${rope.partialRotaryFactor} rotates no dims of head_dim ${headDim}`);
  const inv = new Float64Array(headDim / 2);
  for (let i = 0; i < angles; i++) inv[i] = 1 / Math.pow(rope.theta, (2 * i) / headDim) / factor;
  return { opts: { dims: headDim, traditional: false, base: rope.theta, scale: 1, freqs: Float32Array.from(inv) }, maxPosition: Number.MAX_SAFE_INTEGER };
}

/** Rope options for a layer with this head dim; contextLength is config.json's max_position_embeddings. */
export function ropeSetup(rope: RopeConfig, headDim: number, contextLength: number): RopeSetup {
  if (rope.type === "proportional") return proportional(rope, headDim);
  const dims = Math.floor(headDim * (rope.partialRotaryFactor ?? 1));
  if (dims < 2 || dims % 2 !== 0 || dims > headDim) {
    throw new RmlxError("bad_model", `rotary dims ${dims} (head_dim ${headDim}) must be even and at most head_dim`);
  }
  let inv = baseInvFreq(rope.theta, dims);
  let mscale = 1;
  let maxPosition = Number.MAX_SAFE_INTEGER;
  switch (rope.type) {
    case "default":
      break;
    case "linear":
      inv = inv.map((f) => f / rope.factor!);
      break;
    case "dynamic":
      // Dynamic NTK scaling only changes the frequencies past the original length, and then per sequence
      // length; below it the default frequencies are exact.
      maxPosition = rope.originalMaxPositionEmbeddings ?? contextLength;
      break;
    case "llama3":
      inv = llama3(inv, rope);
      break;
    case "yarn": {
      const y = yarn(rope, dims, contextLength);
      inv = y.inv;
      mscale = y.mscale;
      break;
    }
    default:
      throw new RmlxError("unsupported", `rope type '${rope.type}' is not supported yet`);
  }
  const opts: RopeOptions = { dims, traditional: false, base: rope.theta, scale: 1, freqs: Float32Array.from(inv) };
  if (mscale !== 1) opts.mscale = mscale;
  return { opts, maxPosition };
}

/** Throws when a step reaches positions the rope setup cannot represent. */
export function checkPositions(setup: RopeSetup, positions: Int32Array): void {
  if (setup.maxPosition === Number.MAX_SAFE_INTEGER) return;
  for (let i = 0; i < positions.length; i++) {
    if (positions[i]! >= setup.maxPosition) {
      throw new RmlxError(
        "context_length",
        `dynamic rope scaling beyond ${setup.maxPosition} tokens is not supported; shorten the prompt`,
      );
    }
  }
}
