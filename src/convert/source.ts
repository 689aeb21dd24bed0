// The source model for conversion, read without mapping it: only the safetensors headers are parsed up front, and
// tensor bytes are read with positioned reads into small buffers, so a model far larger than the memory a
// conversion may use streams through.
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { RmlxError } from "../errors.ts";
import { ST_DTYPE_SIZE, type StDType, numel } from "../io/safetensors.ts";
import { INDEX_FILE } from "../io/weights.ts";

export interface SourceTensor {
  name: string;
  dtype: StDType;
  shape: number[];
  file: string;
  /** Byte offset of the data in the file. */
  offset: number;
  nbytes: number;
}

export interface SourceModel {
  dir: string;
  config: Record<string, unknown>;
  tensors: Map<string, SourceTensor>;
  /** Files of the source, in order. */
  files: string[];
  totalBytes: number;
}

function bad(where: string, problem: string): never {
  throw new RmlxError("bad_model", `${where}: ${problem}`);
}

function readHeader(path: string): SourceTensor[] {
  const size = statSync(path).size;
  const fd = openSync(path, "r");
  try {
    const lenBuf = Buffer.alloc(8);
    if (size < 8 || readSync(fd, lenBuf, 0, 8, 0) !== 8) bad(path, "too short for a safetensors header");
    const hlen = lenBuf.readBigUInt64LE(0);
    if (hlen > BigInt(size - 8)) bad(path, "not a safetensors file (header length runs past the end)");
    const h = Buffer.alloc(Number(hlen));
    readSync(fd, h, 0, h.length, 8);
    let header: unknown;
    try {
      header = JSON.parse(h.toString("utf8"));
    } catch {
      bad(path, "header is not valid JSON");
    }
    if (typeof header !== "object" || header === null || Array.isArray(header)) bad(path, "header is not a JSON object");
    const dataStart = 8 + Number(hlen);
    const out: SourceTensor[] = [];
    for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
      if (name === "__metadata__") continue;
      const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof e?.dtype !== "string") bad(path, `tensor '${name}': missing dtype`);
      if (!Object.hasOwn(ST_DTYPE_SIZE, e.dtype))
        throw new RmlxError("unsupported", `${path}: tensor '${name}' has unsupported dtype '${e.dtype}'`);
      const dtype = e.dtype as StDType;
      const shape = e.shape;
      const offs = e.data_offsets;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
        bad(path, `tensor '${name}': bad shape`);
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0))
        bad(path, `tensor '${name}': bad data_offsets`);
      const [b, en] = offs as [number, number];
      const nbytes = numel(shape) * ST_DTYPE_SIZE[dtype];
      if (en - b !== nbytes || dataStart + en > size) bad(path, `tensor '${name}': data_offsets do not match its shape`);
      out.push({ name, dtype, shape: [...shape], file: path, offset: dataStart + b, nbytes });
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

function weightFiles(dir: string): string[] {
  const index = join(dir, INDEX_FILE);
  if (existsSync(index)) {
    let raw: unknown;
    try {
      raw = JSON.parse(readFileSync(index, "utf8"));
    } catch {
      bad(index, "not valid JSON");
    }
    const wm = (raw as { weight_map?: unknown })?.weight_map;
    if (typeof wm !== "object" || wm === null) bad(index, "missing weight_map");
    const files = [...new Set(Object.values(wm as Record<string, string>))].sort();
    for (const f of files) if (!existsSync(join(dir, f))) bad(index, `shard '${f}' is missing`);
    return files.map((f) => join(dir, f));
  }
  // like mlx-lm's model*.safetensors glob: other safetensors beside the weights (references, adapters) are not weights
  const all = readdirSync(dir).filter((f) => f.endsWith(".safetensors") && statSync(join(dir, f)).isFile());
  const named = all.filter((f) => f.startsWith("model"));
  const names = all.includes("model.safetensors") ? ["model.safetensors"] : named.length > 0 ? named : all;
  if (names.length === 0) {
    if (readdirSync(dir).some((f) => f.toLowerCase().endsWith(".gguf")))
      throw new RmlxError("unsupported", `${dir}: GGUF models cannot be converted; give a Hugging Face or MLX safetensors directory`);
    if (readdirSync(dir).some((f) => f.endsWith(".bin") || f.endsWith(".pt") || f.endsWith(".pth")))
      throw new RmlxError("unsupported", `${dir}: PyTorch .bin checkpoints are not supported; only safetensors`);
    bad(dir, "no .safetensors weight files");
  }
  return names.sort().map((f) => join(dir, f));
}

export function openSource(dir: string): SourceModel {
  if (!existsSync(dir)) throw new RmlxError("not_found", `${dir}: no such model directory`);
  if (!statSync(dir).isDirectory()) {
    if (dir.toLowerCase().endsWith(".gguf"))
      throw new RmlxError("unsupported", `${dir}: GGUF files cannot be converted; give a Hugging Face or MLX safetensors directory`);
    throw new RmlxError("invalid_argument", `${dir}: not a model directory`);
  }
  const cfgPath = join(dir, "config.json");
  if (!existsSync(cfgPath)) bad(dir, "missing config.json");
  let config: unknown;
  try {
    config = JSON.parse(readFileSync(cfgPath, "utf8"));
  } catch {
    bad(cfgPath, "not valid JSON");
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) bad(cfgPath, "not a JSON object");
  const files = weightFiles(dir);
  const tensors = new Map<string, SourceTensor>();
  let totalBytes = 0;
  for (const f of files) {
    for (const t of readHeader(f)) {
      if (tensors.has(t.name)) bad(dir, `tensor '${t.name}' appears in more than one file`);
      tensors.set(t.name, t);
      totalBytes += t.nbytes;
    }
  }
  return { dir, config: config as Record<string, unknown>, tensors, files, totalBytes };
}

/** Reads byte ranges of source tensors; keeps one descriptor per file open. */
export class TensorReader {
  private readonly fds = new Map<string, number>();

  read(t: SourceTensor, at: number, length: number, into?: Uint8Array): Uint8Array {
    let fd = this.fds.get(t.file);
    if (fd === undefined) {
      fd = openSync(t.file, "r");
      this.fds.set(t.file, fd);
    }
    const buf = into && into.byteLength >= length ? into.subarray(0, length) : new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, buf, done, length - done, t.offset + at + done);
      if (n === 0) throw new RmlxError("bad_model", `${t.file}: unexpected end of file in '${t.name}'`);
      done += n;
    }
    return buf;
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}
