// One model's weights: a single safetensors file, several loose ones, or shards listed by
// model.safetensors.index.json. Every tensor stays a view into its file's mapping.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { RmlxError } from "../errors.ts";
import { SafetensorsFile, type TensorEntry } from "./safetensors.ts";

export const INDEX_FILE = "model.safetensors.index.json";

function bad(where: string, problem: string): never {
  throw new RmlxError("bad_model", `${where}: ${problem}`);
}

function readIndex(path: string): Map<string, string> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch {
    bad(path, "not valid JSON");
  }
  const wm = (raw as { weight_map?: unknown } | null)?.weight_map;
  if (typeof wm !== "object" || wm === null || Array.isArray(wm)) bad(path, "missing weight_map object");
  const map = new Map<string, string>();
  for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof file !== "string" || file === "" || file.includes("/") || file.includes("\\"))
      bad(path, `weight_map entry '${name}' does not name a shard file`);
    map.set(name, file);
  }
  return map;
}

export class WeightStore {
  private constructor(
    readonly dir: string,
    /** The opened files, in load order. */
    readonly files: readonly SafetensorsFile[],
    private readonly tensors: Map<string, TensorEntry>,
    /** Bytes of tensor data (what the weights occupy in memory once touched). */
    readonly totalBytes: number,
    /** Bytes of the weight files on disk, headers included. */
    readonly fileBytes: number,
  ) {}

  static open(dir: string): WeightStore {
    const indexPath = join(dir, INDEX_FILE);
    let files: SafetensorsFile[];
    let index: Map<string, string> | undefined;
    if (existsSync(indexPath)) {
      index = readIndex(indexPath);
      const shardNames = [...new Set(index.values())].sort();
      for (const s of shardNames) {
        if (!existsSync(join(dir, s))) bad(indexPath, `shard '${s}' named in weight_map is missing`);
      }
      files = shardNames.map((s) => SafetensorsFile.open(join(dir, s)));
    } else {
      // Only model*.safetensors (or the older weight*.safetensors) are weights: a directory may also hold
      // adapters or the original consolidated checkpoint.
      const all = readdirSync(dir).filter((f) => f.endsWith(".safetensors") && statSync(join(dir, f)).isFile());
      const model = all.filter((f) => f.startsWith("model"));
      const names = (model.length > 0 ? model : all.filter((f) => f.startsWith("weight"))).sort();
      if (names.length === 0) bad(dir, "no model*.safetensors weight files");
      files = names.map((f) => SafetensorsFile.open(join(dir, f)));
    }

    const tensors = new Map<string, TensorEntry>();
    let totalBytes = 0;
    let fileBytes = 0;
    for (const f of files) {
      fileBytes += f.size;
      for (const [name, t] of f.tensors) {
        const prev = tensors.get(name);
        if (prev) bad(dir, `tensor '${name}' appears in both ${prev.file} and ${t.file}`);
        tensors.set(name, t);
        totalBytes += t.bytes.byteLength;
      }
    }
    if (index) {
      for (const [name, shard] of index) {
        const t = tensors.get(name);
        if (!t || t.file !== join(dir, shard)) bad(join(dir, shard), `tensor '${name}' listed in ${INDEX_FILE} is missing`);
      }
    }
    return new WeightStore(dir, files, tensors, totalBytes, fileBytes);
  }

  get(name: string): TensorEntry | undefined {
    return this.tensors.get(name);
  }

  require(name: string): TensorEntry {
    const t = this.tensors.get(name);
    if (!t) throw new RmlxError("bad_model", `${this.dir}: missing tensor ${name}`);
    return t;
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /** Tensor names in file order. */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  /** Every tensor, in file order. */
  entries(): IterableIterator<TensorEntry> {
    return this.tensors.values();
  }
}
