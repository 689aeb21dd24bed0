// Reading the transformers references of test/fixtures/models and comparing logits with them.
import type { SafetensorsFile } from "../../src/io/safetensors.ts";

/** An F32 reference tensor, copied out of the mapping. */
export function readF32(file: SafetensorsFile, key: string): { shape: number[]; data: Float32Array } {
  const t = file.tensors.get(key);
  if (!t || t.dtype !== "F32") throw new Error(`reference tensor ${key} missing or not F32`);
  const copy = new Uint8Array(t.bytes);
  return { shape: t.shape, data: new Float32Array(copy.buffer) };
}

/** max over rows of max |ours - ref| / max |ref| (the row's logit scale). */
export function relError(ours: Float32Array, ref: Float32Array, V: number): number {
  let worst = 0;
  for (let r = 0; r < ref.length / V; r++) {
    let scale = 0;
    let diff = 0;
    for (let j = r * V; j < (r + 1) * V; j++) {
      scale = Math.max(scale, Math.abs(ref[j]!));
      diff = Math.max(diff, Math.abs(ours[j]! - ref[j]!));
    }
    worst = Math.max(worst, diff / scale);
  }
  return worst;
}
