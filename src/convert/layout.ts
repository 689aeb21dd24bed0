// The output directory's files besides tensor data: shard assignment, the index, config.json, copied tokenizer
// and template files.
import { copyFileSync, cpSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { RmlxError } from "../errors.ts";
import { type WriteEntry, entryBytes } from "../io/safetensors_write.ts";

/** mlx-lm's limit per shard file. */
export const MAX_SHARD_BYTES = 5 * 2 ** 30;

export interface Shard {
  file: string;
  entries: WriteEntry[];
  bytes: number;
}

/** mlx-lm's make_shards: fill a shard in order until the next tensor would pass the limit (never an empty shard). */
export function makeShards(entries: readonly WriteEntry[], maxBytes: number): Shard[] {
  const groups: { entries: WriteEntry[]; bytes: number }[] = [];
  let cur: { entries: WriteEntry[]; bytes: number } = { entries: [], bytes: 0 };
  for (const e of entries) {
    const n = entryBytes(e);
    if (cur.entries.length > 0 && cur.bytes + n > maxBytes) {
      groups.push(cur);
      cur = { entries: [], bytes: 0 };
    }
    cur.entries.push(e);
    cur.bytes += n;
  }
  if (cur.entries.length > 0) groups.push(cur);
  const count = groups.length;
  const pad = (i: number) => String(i).padStart(5, "0");
  return groups.map((g, i) => ({
    ...g,
    file: count > 1 ? `model-${pad(i + 1)}-of-${pad(count)}.safetensors` : "model.safetensors",
  }));
}

export function writeIndex(dir: string, shards: readonly Shard[], totalSize: number, totalParameters: number): void {
  const map: [string, string][] = [];
  for (const s of shards) for (const e of s.entries) map.push([e.name, s.file]);
  map.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const index = {
    metadata: { total_size: totalSize, total_parameters: totalParameters },
    weight_map: Object.fromEntries(map),
  };
  writeFileSync(join(dir, "model.safetensors.index.json"), `${JSON.stringify(index, null, 4)}`);
}

/**
 * mlx-lm's save_config: drop _name_or_path and vision_config, mirror "quantization" as "quantization_config",
 * sort the top-level keys.
 */
export function writeConfig(dir: string, config: Record<string, unknown>, quantization: Record<string, unknown> | null): void {
  const c: Record<string, unknown> = { ...config };
  delete c._name_or_path;
  delete c.vision_config;
  delete c.quantization;
  delete c.quantization_config;
  if (quantization) {
    c.quantization = quantization;
    c.quantization_config = quantization;
  }
  const sorted = Object.fromEntries(Object.keys(c).sort().map((k) => [k, c[k]]));
  writeFileSync(join(dir, "config.json"), JSON.stringify(sorted, null, 4));
}

/** Files of the tokenizer, chat template and generation settings that travel with the weights. */
const COPIED = [
  /^tokenizer.*\.(json|model)$/,
  /^special_tokens_map\.json$/,
  /^added_tokens\.json$/,
  /^vocab\.(json|txt)$/,
  /^merges\.txt$/,
  /^chat_template\.(jinja|json)$/,
  /^generation_config\.json$/,
  /\.tiktoken$/,
  /^tiktoken\.model$/,
  /\.py$/,
  // sentence-transformers: the pipeline after the encoder
  /^modules\.json$/,
  /^config_sentence_transformers\.json$/,
  /^sentence_bert_config\.json$/,
];

/** sentence-transformers' module folders (1_Pooling, 2_Dense, 3_Normalize, ...): copied whole, Dense weights kept as they are. */
const MODULE_DIR = /^\d+_[A-Za-z]+$/;

export function copySideFiles(srcDir: string, dstDir: string): string[] {
  const copied: string[] = [];
  for (const f of readdirSync(srcDir).sort()) {
    const p = join(srcDir, f);
    const dir = MODULE_DIR.test(f);
    if (!dir && !COPIED.some((re) => re.test(f))) continue;
    try {
      const st = statSync(p);
      if (dir && st.isDirectory()) cpSync(p, join(dstDir, f), { recursive: true });
      else if (!dir && st.isFile()) copyFileSync(p, join(dstDir, f));
      else continue;
    } catch (err) {
      throw new RmlxError("bad_model", `${p}: cannot copy (${(err as NodeJS.ErrnoException).code ?? "error"})`);
    }
    copied.push(f);
  }
  return copied;
}
