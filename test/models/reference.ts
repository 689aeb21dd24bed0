// Reading the transformers references of test/fixtures/models and comparing logits with them.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { SafetensorsFile } from "../../src/io/safetensors.ts";

/** One prompt of a fixture's reference.json. */
export interface PromptRef {
  kind: string;
  ids: number[];
  logits_key: string;
  greedy: number[];
  greedy_margins: number[];
}

/** A fixture folder's reference: its prompts, and the F32 tensors of reference.safetensors by key. */
export function fixtureReference(dir: string): { prompts: PromptRef[]; logits: (key: string) => { shape: number[]; data: Float32Array } } {
  const ref = JSON.parse(readFileSync(join(dir, "reference.json"), "utf8")) as { prompts: PromptRef[] };
  const file = SafetensorsFile.open(join(dir, "reference.safetensors"));
  return { prompts: ref.prompts, logits: (key) => readF32(file, key) };
}

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
