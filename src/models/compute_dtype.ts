// Which backend instance computes a model: where activations follow the model's dtype (--compute-dtype; see
// ComputeDtypeMode), the float dtype that holds most of the model's float bytes (bf16 for most checkpoints and for
// the scales of MLX's quantized snapshots), so that the mlx backend never widens a weight on a step. The native
// backend computes in f32 either way.
import type { Backend, DType } from "../backend/backend.ts";
import { parseComputeDtype } from "../backend/choice.ts";
import type { ModelDir } from "../io/model_dir.ts";

const FLOATS: Partial<Record<string, DType>> = { F32: "f32", F16: "f16", BF16: "bf16" };

/** The float dtype with the most bytes among the model's tensors (f32 when it has none). */
export function modelFloatDtype(md: ModelDir): DType {
  const bytes = new Map<DType, number>();
  for (const name of md.weights.names()) {
    const e = md.weights.require(name);
    const dt = FLOATS[e.dtype];
    if (dt) bytes.set(dt, (bytes.get(dt) ?? 0) + e.bytes.byteLength);
  }
  let best: DType = "f32";
  let most = -1;
  for (const [dt, n] of bytes)
    if (n > most) {
      best = dt;
      most = n;
    }
  return best;
}

export function backendForModel(backend: Backend, md: ModelDir): Backend {
  if (!backend.forModel) return backend;
  return backend.forModel(modelFloatDtype(md), parseComputeDtype(process.env.RMLX_COMPUTE_DTYPE)) ?? backend;
}
