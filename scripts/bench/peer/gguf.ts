// A minimal GGUF (version 3) writer, enough for llama.cpp to load a model of random weights: the header, typed
// key/value metadata, tensor infos, then tensor data, each tensor at an offset aligned to 32 bytes (the format's
// default general.alignment). Tensor data is produced in chunks by a callback, so multi-GB files stream to disk.
import { closeSync, openSync, writeSync } from "node:fs";

/** ggml type ids as stored in a GGUF tensor info (ggml.h's enum ggml_type). */
export const GGML_TYPE = { f32: 0, f16: 1, q4_0: 2, q8_0: 8, bf16: 30 } as const;
export type GgmlFloatType = "f32" | "f16" | "bf16";
const BYTES: Record<GgmlFloatType, number> = { f32: 4, f16: 2, bf16: 2 };

/** Metadata values: strings, booleans, string arrays, and numbers tagged with their GGUF scalar type. */
export type GgufValue = string | boolean | string[] | { u32: number } | { i32: number } | { f32: number } | { u64: bigint };

export interface GgufTensor {
  name: string;
  /** Row-major shape, outermost first ([out_features, in_features] for a linear weight), as in safetensors. */
  shape: number[];
  type: GgmlFloatType;
  /** Fills `out` (a whole number of elements) with the elements starting at element `start`. */
  fill: (out: Uint8Array, start: number) => void;
}

const ALIGN = 32;
const VT = { u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10 } as const;

class Bytes {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;
  private room(n: number) {
    if (this.length + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u32(v: number) {
    this.room(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number) {
    this.room(4);
    this.view.setInt32(this.length, v, true);
    this.length += 4;
  }
  f32(v: number) {
    this.room(4);
    this.view.setFloat32(this.length, v, true);
    this.length += 4;
  }
  u64(v: bigint | number) {
    this.room(8);
    this.view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  u8(v: number) {
    this.room(1);
    this.buf[this.length++] = v;
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  pad(align: number) {
    while (this.length % align) this.u8(0);
  }
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

function writeValue(out: Bytes, v: GgufValue) {
  if (typeof v === "string") {
    out.u32(VT.string);
    out.str(v);
  } else if (typeof v === "boolean") {
    out.u32(VT.bool);
    out.u8(v ? 1 : 0);
  } else if (Array.isArray(v)) {
    out.u32(VT.array);
    out.u32(VT.string);
    out.u64(v.length);
    for (const s of v) out.str(s);
  } else if ("u32" in v) {
    out.u32(VT.u32);
    out.u32(v.u32);
  } else if ("i32" in v) {
    out.u32(VT.i32);
    out.i32(v.i32);
  } else if ("f32" in v) {
    out.u32(VT.f32);
    out.f32(v.f32);
  } else {
    out.u32(VT.u64);
    out.u64(v.u64);
  }
}

const elements = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const alignUp = (n: number) => Math.ceil(n / ALIGN) * ALIGN;

/** Bytes of the header, metadata and tensor infos, padded to where tensor data begins. */
export function ggufHeader(meta: [string, GgufValue][], tensors: Omit<GgufTensor, "fill">[]): Uint8Array {
  const out = new Bytes();
  out.u32(0x46554747); // "GGUF" read as a little-endian u32
  out.u32(3);
  out.u64(tensors.length);
  out.u64(meta.length);
  for (const [k, v] of meta) {
    out.str(k);
    writeValue(out, v);
  }
  let offset = 0;
  for (const t of tensors) {
    out.str(t.name);
    out.u32(t.shape.length);
    // ggml lists dimensions innermost first.
    for (let i = t.shape.length - 1; i >= 0; i--) out.u64(t.shape[i]!);
    out.u32(GGML_TYPE[t.type]);
    out.u64(offset);
    offset = alignUp(offset + elements(t.shape) * BYTES[t.type]);
  }
  out.pad(ALIGN);
  return out.bytes().slice();
}

/** Writes a GGUF file; returns its size in bytes. */
export function writeGguf(path: string, meta: [string, GgufValue][], tensors: GgufTensor[]): number {
  const fd = openSync(path, "w");
  try {
    const header = ggufHeader(meta, tensors);
    let pos = writeSync(fd, header);
    const chunk = new Uint8Array(1 << 24);
    for (const t of tensors) {
      const esize = BYTES[t.type];
      const total = elements(t.shape);
      const per = Math.floor(chunk.length / esize);
      for (let start = 0; start < total; start += per) {
        const n = Math.min(per, total - start);
        const view = chunk.subarray(0, n * esize);
        t.fill(view, start);
        pos += writeSync(fd, view);
      }
      const padded = alignUp(pos - header.length) + header.length;
      if (padded > pos) pos += writeSync(fd, new Uint8Array(padded - pos));
    }
    return pos;
  } finally {
    closeSync(fd);
  }
}
