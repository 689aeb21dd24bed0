// Reads safetensors files through mmap: the header is parsed and checked strictly, tensor bytes stay views into
// the mapping, so opening a model costs only the pages that are later touched.
import { closeSync, openSync, readSync, statSync } from "node:fs";
import { RmlxError } from "../errors.ts";

export type StDType =
  | "F32"
  | "F16"
  | "BF16"
  | "U32"
  | "U8"
  | "I8"
  | "I32"
  | "I64"
  | "F8_E4M3"
  | "U16"
  | "I16"
  | "F64"
  | "BOOL"
  | "F8_E5M2";

/** Bytes per element of every dtype we accept. */
export const ST_DTYPE_SIZE: Readonly<Record<StDType, number>> = {
  F64: 8,
  I64: 8,
  F32: 4,
  U32: 4,
  I32: 4,
  F16: 2,
  BF16: 2,
  U16: 2,
  I16: 2,
  U8: 1,
  I8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

export interface TensorEntry {
  name: string;
  dtype: StDType;
  shape: number[];
  /** Zero-copy view into the mmapped file. */
  bytes: Uint8Array;
  /** Path of the file that holds it. */
  file: string;
  /** Where its bytes start in that file; absent for tensors that live in memory only. */
  offset?: number;
}

/** Number of elements of a shape (1 for a scalar). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Bun's typed arrays stop at 4 GiB, and MLX shards reach 5 GB: larger files are mapped in several windows. */
const MAX_MAPPING_BYTES = 2 ** 32 - 2 ** 16;
// Window starts are aligned for every page size in use (4 KiB on x86-64, 16 KiB on Apple Silicon).
const MAP_ALIGN = 2 ** 16;
// The format's own limit; it keeps a corrupt length from turning into a huge allocation.
const HEADER_LIMIT = 100_000_000n;

function bad(path: string, problem: string): never {
  throw new RmlxError("bad_model", `${path}: ${problem}`);
}

function isIndex(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

interface RawEntry {
  name: string;
  dtype: StDType;
  shape: number[];
  begin: number;
  end: number;
}

function checkEntry(path: string, name: string, v: unknown, dataLen: number): RawEntry {
  if (typeof v !== "object" || v === null || Array.isArray(v)) bad(path, `tensor '${name}': entry is not an object`);
  const e = v as Record<string, unknown>;
  const dtype = e.dtype;
  if (typeof dtype !== "string") bad(path, `tensor '${name}': missing dtype`);
  if (!Object.hasOwn(ST_DTYPE_SIZE, dtype)) bad(path, `tensor '${name}': unknown dtype '${dtype}'`);
  const shape = e.shape;
  if (!Array.isArray(shape) || !shape.every(isIndex)) bad(path, `tensor '${name}': shape is not a list of sizes`);
  const offs = e.data_offsets;
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isIndex))
    bad(path, `tensor '${name}': data_offsets is not [begin, end]`);
  const [begin, end] = offs as [number, number];
  if (begin > end) bad(path, `tensor '${name}': data_offsets [${begin}, ${end}] end before begin`);
  if (end > dataLen)
    bad(path, `tensor '${name}': data_offsets [${begin}, ${end}] beyond the data section (${dataLen} bytes)`);
  const want = numel(shape as number[]) * ST_DTYPE_SIZE[dtype as StDType];
  if (want !== end - begin)
    bad(
      path,
      `tensor '${name}': ${dtype} [${(shape as number[]).join(", ")}] needs ${want} bytes but data_offsets span ${end - begin}`,
    );
  return { name, dtype: dtype as StDType, shape: [...(shape as number[])], begin, end };
}

/** Views of every tensor's bytes: one mapping of the whole file, or consecutive windows when it is too large. */
function mapTensors(
  path: string,
  size: number,
  dataStart: number,
  sorted: readonly RawEntry[],
  maxMap: number,
): Map<string, Uint8Array> {
  const views = new Map<string, Uint8Array>();
  if (size <= maxMap) {
    const buf = Bun.mmap(path, { shared: false });
    for (const e of sorted) views.set(e.name, buf.subarray(dataStart + e.begin, dataStart + e.end));
    return views;
  }
  let i = 0;
  while (i < sorted.length) {
    const winStart = Math.floor((dataStart + sorted[i]!.begin) / MAP_ALIGN) * MAP_ALIGN;
    let j = i;
    while (j < sorted.length && dataStart + sorted[j]!.end - winStart <= maxMap) j++;
    if (j === i) {
      const e = sorted[i]!;
      throw new RmlxError("unsupported", `${path}: tensor '${e.name}' of ${e.end - e.begin} bytes is too large to map`);
    }
    const winEnd = dataStart + sorted[j - 1]!.end;
    const win = winEnd > winStart ? Bun.mmap(path, { shared: false, offset: winStart, size: winEnd - winStart }) : new Uint8Array(0);
    for (let k = i; k < j; k++) {
      const e = sorted[k]!;
      views.set(e.name, win.subarray(dataStart + e.begin - winStart, dataStart + e.end - winStart));
    }
    i = j;
  }
  return views;
}

export class SafetensorsFile {
  private constructor(
    readonly path: string,
    readonly metadata: Record<string, string>,
    readonly tensors: Map<string, TensorEntry>,
    /** Size of the file in bytes. */
    readonly size: number,
  ) {}

  /** `maxMappingBytes` only exists so that tests can exercise windowed mapping with small files. */
  static open(path: string, maxMappingBytes = MAX_MAPPING_BYTES): SafetensorsFile {
    let size: number;
    try {
      const st = statSync(path);
      if (!st.isFile()) bad(path, "not a regular file");
      size = st.size;
    } catch (err) {
      if (err instanceof RmlxError) throw err;
      throw new RmlxError("bad_model", `${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? "error"})`);
    }
    if (size < 8) bad(path, `file of ${size} bytes is too short for a safetensors header`);
    const fd = openSync(path, "r");
    let headerBytes: Uint8Array;
    try {
      const prefix = new Uint8Array(8);
      readSync(fd, prefix, 0, 8, 0);
      const headerLen = new DataView(prefix.buffer).getBigUint64(0, true);
      if (headerLen > BigInt(size - 8))
        bad(path, `header length ${headerLen} runs beyond the end of the file (${size} bytes)`);
      if (headerLen > HEADER_LIMIT) bad(path, `header length ${headerLen} is over the ${HEADER_LIMIT} byte limit`);
      headerBytes = new Uint8Array(Number(headerLen));
      if (readSync(fd, headerBytes, 0, headerBytes.length, 8) !== headerBytes.length) bad(path, "short read of the header");
    } finally {
      closeSync(fd);
    }
    const hlen = headerBytes.length;
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
    } catch {
      bad(path, "header is not valid JSON");
    }
    if (typeof header !== "object" || header === null || Array.isArray(header)) bad(path, "header is not a JSON object");

    const dataStart = 8 + hlen;
    const dataLen = size - dataStart;
    const metadata: Record<string, string> = {};
    const raw: RawEntry[] = [];
    for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
      if (name === "__metadata__") {
        if (typeof v !== "object" || v === null || Array.isArray(v)) bad(path, "__metadata__ is not an object");
        for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
          if (typeof s !== "string") bad(path, `__metadata__ value '${k}' is not a string`);
          metadata[k] = s;
        }
        continue;
      }
      raw.push(checkEntry(path, name, v, dataLen));
    }

    const sorted = [...raw].sort((a, b) => a.begin - b.begin || a.end - b.end);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      const cur = sorted[i]!;
      if (cur.begin < prev.end)
        bad(path, `tensors '${prev.name}' [${prev.begin}, ${prev.end}] and '${cur.name}' [${cur.begin}, ${cur.end}] overlap`);
    }

    const views = mapTensors(path, size, dataStart, sorted, maxMappingBytes);
    const tensors = new Map<string, TensorEntry>();
    for (const e of raw) {
      tensors.set(e.name, { name: e.name, dtype: e.dtype, shape: e.shape, bytes: views.get(e.name)!, file: path, offset: dataStart + e.begin });
    }
    return new SafetensorsFile(path, metadata, tensors, size);
  }
}
