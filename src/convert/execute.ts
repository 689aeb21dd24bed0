// Runs one planned job: reads its input a few rows at a time, dequantizes or casts to float, quantizes or not,
// and writes each piece straight to its place in the output file. Memory stays at one chunk whatever the tensor.
import { FLOAT_DTYPE_SIZE, type FloatDType, decodeFloats, encodeFloats, roundArrayTo, roundTo } from "../quant/dtype.ts";
import { affineDequantize, affineQuantize } from "../quant/affine.ts";
import { fpDequantize, fpQuantize } from "../quant/fp.ts";
import type { SafetensorsWriter } from "../io/safetensors_write.ts";
import type { Input, Job } from "./plan.ts";
import type { TensorReader } from "./source.ts";

/** Elements per chunk: a few tens of megabytes of f32 working memory at most. */
const CHUNK_ELEMENTS = 1 << 20;
const COPY_BYTES = 8 << 20;

export type WriterFor = (tensorName: string) => SafetensorsWriter;

interface FloatSource {
  rows: number;
  k: number;
  /** `n` rows from `row0`, as f32 values exact in `dtype`. */
  read(row0: number, n: number): Float32Array;
  /** Source bytes behind `n` rows, for progress. */
  bytesPerRow: number;
}

/**
 * The chunk buffers, one pair for the whole process and reused chunk after chunk: garbage at the rate a model
 * streams through outruns the collector under a tight memory limit (which the collector does not know about).
 */
const scratch = {
  f32: new Float32Array(0),
  u8: new Uint8Array(0),
  values(n: number): Float32Array {
    if (this.f32.length < n) this.f32 = new Float32Array(n);
    return this.f32.subarray(0, n);
  },
  bytes(n: number): Uint8Array {
    if (this.u8.byteLength < n) this.u8 = new Uint8Array(n);
    return this.u8;
  },
};

function floatSource(input: Input, reader: TensorReader, dtype: FloatDType): FloatSource {
  if (input.kind === "float") {
    const srcs = input.srcs;
    const first = srcs[0]!;
    const k = first.shape[first.shape.length - 1] ?? 1;
    const elem = first.nbytes / Math.max(1, first.shape.reduce((a, b) => a * b, 1));
    const rowsEach = first.shape.length === 0 ? 1 : first.shape.slice(0, -1).reduce((a, b) => a * b, 1);
    const srcDtype = first.dtype as FloatDType | "F64";
    const sel = input.rows;
    return {
      rows: sel ? (rowsEach / sel.period) * sel.count : rowsEach * srcs.length,
      k,
      bytesPerRow: k * elem,
      read(row0, n) {
        const out = scratch.values(n * k);
        const raw = scratch.bytes(n * k * elem);
        let done = 0;
        while (done < n) {
          const r = row0 + done;
          let s: (typeof srcs)[number];
          let local: number;
          let take: number;
          if (sel) {
            // A run of consecutive source rows, up to the end of this period's selected rows.
            s = first;
            local = Math.floor(r / sel.count) * sel.period + sel.offset + (r % sel.count);
            take = Math.min(n - done, sel.count - (r % sel.count));
          } else {
            s = srcs[Math.floor(r / rowsEach)]!;
            local = r % rowsEach;
            take = Math.min(n - done, rowsEach - local);
          }
          const bytes = reader.read(s, local * k * elem, take * k * elem, raw);
          decodeFloats(srcDtype, bytes, out.subarray(done * k, (done + take) * k));
          done += take;
        }
        if (input.addOne) {
          // mlx-lm shifts zero-centred norms by one in the checkpoint's own dtype, before any cast
          const own: FloatDType = srcDtype === "F64" ? "F32" : srcDtype;
          for (let i = 0; i < out.length; i++) out[i] = roundTo(own, out[i]! + 1);
        }
        return roundArrayTo(dtype, out);
      },
    };
  }
  if (input.kind !== "quantized") throw new Error("raw inputs have no float view");
  const { weight, scales, biases, spec } = input;
  const g = scales.shape[scales.shape.length - 1]!;
  const k = g * spec.groupSize;
  const rows = scales.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const wRow = (k * spec.bits) / 8;
  const sElem = scales.nbytes / (rows * g);
  return {
    rows,
    k,
    bytesPerRow: wRow + g * sElem * (biases ? 2 : 1),
    read(row0, n) {
      const wb = reader.read(weight, row0 * wRow, n * wRow);
      const words = new Uint32Array(wb.buffer, wb.byteOffset, wb.byteLength / 4);
      const sb = reader.read(scales, row0 * g * sElem, n * g * sElem);
      if (spec.mode === "affine") {
        const s = roundArrayTo(dtype, decodeFloats(scales.dtype as FloatDType, sb));
        const b = roundArrayTo(dtype, decodeFloats(biases!.dtype as FloatDType, reader.read(biases!, row0 * g * sElem, n * g * sElem)));
        return affineDequantize(words, s, b, spec.groupSize, spec.bits, dtype);
      }
      return roundArrayTo(dtype, fpDequantize(words, sb, spec.mode, "BF16"));
    },
  };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

/** Runs a job; `progress` gets source bytes as they are consumed. */
export async function runJob(job: Job, reader: TensorReader, writerFor: WriterFor, progress: (bytes: number) => void): Promise<void> {
  const { input, output } = job;
  if (output.kind === "raw") {
    if (input.kind !== "raw") throw new Error("raw output needs a raw input");
    const w = writerFor(output.name);
    const buf = new Uint8Array(Math.min(COPY_BYTES, input.src.nbytes));
    for (let at = 0; at < input.src.nbytes; at += COPY_BYTES) {
      const len = Math.min(COPY_BYTES, input.src.nbytes - at);
      w.write(output.name, reader.read(input.src, at, len, buf), at);
      progress(len);
      await tick();
    }
    return;
  }
  const dtype = output.kind === "float" ? output.dtype : output.scaleDtype;
  const src = floatSource(input, reader, dtype);
  const chunk = Math.max(1, Math.floor(CHUNK_ELEMENTS / src.k));
  for (let row0 = 0; row0 < src.rows; row0 += chunk) {
    const n = Math.min(chunk, src.rows - row0);
    const values = src.read(row0, n);
    if (output.kind === "float") {
      writerFor(output.name).write(output.name, encodeFloats(dtype, values), row0 * src.k * FLOAT_DTYPE_SIZE[dtype]);
    } else {
      const { path, spec } = output;
      const groups = src.k / spec.groupSize;
      const wRowBytes = (src.k * spec.bits) / 8;
      if (spec.mode === "affine") {
        const q = affineQuantize(values, spec.groupSize, spec.bits);
        const sz = FLOAT_DTYPE_SIZE[dtype];
        writerFor(`${path}.weight`).write(`${path}.weight`, new Uint8Array(q.weight.buffer), row0 * wRowBytes);
        writerFor(`${path}.scales`).write(`${path}.scales`, encodeFloats(dtype, q.scales), row0 * groups * sz);
        writerFor(`${path}.biases`).write(`${path}.biases`, encodeFloats(dtype, q.biases), row0 * groups * sz);
      } else {
        const q = fpQuantize(values, spec.mode);
        writerFor(`${path}.weight`).write(`${path}.weight`, new Uint8Array(q.weight.buffer), row0 * wRowBytes);
        writerFor(`${path}.scales`).write(`${path}.scales`, q.scales, row0 * groups);
      }
    }
    progress(n * src.bytesPerRow);
    await tick();
  }
}
