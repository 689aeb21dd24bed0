// A streaming safetensors writer: every tensor's dtype and shape are known before any data, so the header (keys
// sorted, compact JSON, as MLX writes it) goes first and each tensor's bytes are written at their final offset, in
// pieces and in any order, without ever holding the file in memory.
import { closeSync, fsyncSync, openSync, writeSync } from "node:fs";
import { RmlxError } from "../errors.ts";
import { ST_DTYPE_SIZE, type StDType, numel } from "./safetensors.ts";

export interface WriteEntry {
  name: string;
  dtype: StDType;
  shape: readonly number[];
}

export function entryBytes(e: WriteEntry): number {
  return numel(e.shape) * ST_DTYPE_SIZE[e.dtype];
}

interface Slot {
  start: number;
  size: number;
  written: number;
}

/**
 * The header: `__metadata__` then tensors in byte order of their names, data laid out in that order. Spaces pad
 * the header to a multiple of 8 bytes (allowed by the format) so every tensor starts 8-byte aligned.
 */
export function buildHeader(
  entries: readonly WriteEntry[],
  metadata: Record<string, string>,
): { header: Uint8Array; offsets: Map<string, { begin: number; end: number }> } {
  const sorted = [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const offsets = new Map<string, { begin: number; end: number }>();
  const parts: string[] = [];
  const metaKeys = Object.keys(metadata).sort();
  parts.push(`"__metadata__":{${metaKeys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`).join(",")}}`);
  let off = 0;
  for (const e of sorted) {
    if (offsets.has(e.name)) throw new RmlxError("internal", `tensor '${e.name}' planned twice`);
    const size = entryBytes(e);
    if (size === 0) throw new RmlxError("invalid_argument", `cannot write the empty tensor '${e.name}'`);
    offsets.set(e.name, { begin: off, end: off + size });
    parts.push(
      `${JSON.stringify(e.name)}:{"data_offsets":[${off},${off + size}],"dtype":"${e.dtype}","shape":[${e.shape.join(",")}]}`,
    );
    off += size;
  }
  let json = `{${parts.join(",")}}`;
  const len = Buffer.byteLength(json, "utf8");
  json += " ".repeat((8 - ((8 + len) % 8)) % 8);
  const body = new TextEncoder().encode(json);
  const header = new Uint8Array(8 + body.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(body.length), true);
  header.set(body, 8);
  return { header, offsets };
}

export class SafetensorsWriter {
  private readonly slots = new Map<string, Slot>();
  private fd: number | undefined;

  private constructor(
    readonly path: string,
    fd: number,
    readonly totalBytes: number,
  ) {
    this.fd = fd;
  }

  static create(
    path: string,
    entries: readonly WriteEntry[],
    metadata: Record<string, string> = { format: "mlx" },
  ): SafetensorsWriter {
    const { header, offsets } = buildHeader(entries, metadata);
    let fd: number;
    try {
      fd = openSync(path, "w");
    } catch (err) {
      throw new RmlxError("invalid_argument", `cannot create ${path} (${(err as NodeJS.ErrnoException).code ?? "error"})`);
    }
    writeSync(fd, header, 0, header.length, 0);
    let total = header.length;
    for (const o of offsets.values()) total = Math.max(total, header.length + o.end);
    const w = new SafetensorsWriter(path, fd, total);
    for (const [name, o] of offsets) w.slots.set(name, { start: header.length + o.begin, size: o.end - o.begin, written: 0 });
    return w;
  }

  /** Write `bytes` into tensor `name` starting `at` bytes into its data. */
  write(name: string, bytes: Uint8Array, at = 0): void {
    const slot = this.slots.get(name);
    if (!slot) throw new RmlxError("internal", `${this.path}: tensor '${name}' is not in the header`);
    if (this.fd === undefined) throw new RmlxError("internal", `${this.path}: already closed`);
    if (at < 0 || at + bytes.byteLength > slot.size)
      throw new RmlxError("internal", `${this.path}: write of ${bytes.byteLength} bytes at ${at} overruns '${name}'`);
    let done = 0;
    while (done < bytes.byteLength) {
      done += writeSync(this.fd, bytes, done, bytes.byteLength - done, slot.start + at + done);
    }
    slot.written += bytes.byteLength;
  }

  /** Close, checking that every tensor received exactly its size in bytes. */
  close(): void {
    if (this.fd === undefined) return;
    for (const [name, s] of this.slots) {
      if (s.written !== s.size)
        throw new RmlxError("internal", `${this.path}: tensor '${name}' got ${s.written} of ${s.size} bytes`);
    }
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = undefined;
  }

  /** Close without checks (on failure paths). */
  abort(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }
}
