// A model's view of its checkpoint: tensors by mlx-lm's names (stored names mapped by the family's sanitize, the
// same mapping convert applies), as backend tensors (the file's bytes in place, or read into the backend's own
// memory where it asks for that), and Linear / embedding weights as float or MLX-quantized per the quantization
// config.
import { closeSync, openSync, readSync } from "node:fs";
import { type Backend, type DType, type QuantizedWeight, type Tensor, type Weight } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { quantSpecFor } from "../io/quant_config.ts";
import type { StDType, TensorEntry } from "../io/safetensors.ts";
import type { Sanitizer } from "./family.ts";

/**
 * Fills a weight's own memory with its stored bytes: read from the file where it has one, so that the file's pages
 * are never mapped into this process (they stay in the page cache, not in the model's resident memory twice).
 */
function fillWeight(dst: Uint8Array, e: TensorEntry): void {
  if (e.offset === undefined) {
    dst.set(e.bytes);
    return;
  }
  let fd: number;
  try {
    fd = openSync(e.file, "r");
  } catch (err) {
    throw new RmlxError("bad_model", `${e.file}: cannot read tensor '${e.name}': ${(err as Error).message}`);
  }
  try {
    for (let done = 0; done < dst.byteLength; ) {
      const n = readSync(fd, dst, done, Math.min(dst.byteLength - done, 1 << 30), e.offset + done);
      if (n <= 0) throw new RmlxError("bad_model", `${e.file}: tensor '${e.name}' ends before its ${dst.byteLength} bytes`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * A weight made at load time (a repacked or converted form): in the backend's own memory where it offers that
 * (Backend.weightBuffer), else wrapping `bytes`, which `keep` then holds for the model's life.
 */
export function loadTimeWeight(be: Backend, bytes: Uint8Array, shape: readonly number[], dtype: DType, keep: (b: Uint8Array) => void): Tensor {
  const own = be.weightBuffer?.(shape, dtype);
  if (own) {
    own.bytes.set(bytes);
    return own.tensor;
  }
  keep(bytes);
  return be.fromBytes(bytes, shape, dtype);
}

const DTYPES: Partial<Record<StDType, DType>> = { F32: "f32", F16: "f16", BF16: "bf16", U32: "u32", U8: "u8", I32: "i32" };

export class ModelWeights {
  private readonly cache = new Map<string, Tensor>();
  /** mlx-lm name -> stored name. */
  private readonly stored = new Map<string, string>();
  /** mlx-lm name of a stacked expert tensor -> the stored name of each expert. */
  private readonly experts = new Map<string, string[]>();
  /** Buffers built at load time (stacked experts) that tensors wrap without owning. */
  private readonly keepAlive: Uint8Array[] = [];
  /** The model routes tokens to experts: its quantized weights ask for exact many-row products (exactRows). */
  private readonly routed: boolean;

  constructor(
    readonly backend: Backend,
    readonly md: ModelDir,
    sanitizer: Sanitizer,
  ) {
    this.routed = (md.config.numExperts ?? 0) > 1;
    for (const name of md.weights.names()) {
      const r = sanitizer.rename(name);
      if (r === null) continue;
      if (r.expert !== undefined) {
        const parts = this.experts.get(r.name) ?? [];
        parts[r.expert] = name;
        this.experts.set(r.name, parts);
        continue;
      }
      const other = this.stored.get(r.name);
      if (other !== undefined) throw new RmlxError("bad_model", `${md.dir}: tensors ${other} and ${name} are both ${r.name}`);
      this.stored.set(r.name, name);
    }
  }

  has(name: string): boolean {
    return this.stored.has(name) || this.experts.has(name);
  }

  private storedName(name: string): string {
    const stored = this.stored.get(name);
    if (stored === undefined) throw new RmlxError("bad_model", `${this.md.dir}: missing tensor ${name}`);
    return stored;
  }

  /** The tensor (one per stored tensor, so tied weights share it), in place or in the backend's memory (weightBuffer). */
  tensor(name: string): Tensor {
    return this.wrap(this.storedName(name));
  }

  private wrap(stored: string): Tensor {
    const hit = this.cache.get(stored);
    if (hit) return hit;
    const e = this.md.weights.require(stored);
    const dt = dtypeOf(e, this.md.dir);
    const own = this.backend.weightBuffer?.(e.shape, dt);
    if (own) fillWeight(own.bytes, e);
    const t = own?.tensor ?? this.backend.fromBytes(e.bytes, e.shape, dt);
    this.cache.set(stored, t);
    return t;
  }

  /** The stored entry behind a tensor (by its mlx-lm name), for weights a family transforms at load time. */
  entry(name: string): TensorEntry {
    return this.md.weights.require(this.storedName(name));
  }

  optTensor(name: string): Tensor | undefined {
    return this.stored.has(name) ? this.tensor(name) : undefined;
  }

  /**
   * A Linear or embedding module's weight (path without ".weight"), float or quantized; experts stored one by one
   * come back stacked.
   */
  linear(path: string): Weight {
    const experts = this.experts.get(`${path}.weight`);
    if (experts) return this.stackExperts(path, experts);
    return this.storedLinear(this.storedName(`${path}.weight`).slice(0, -".weight".length));
  }

  optLinear(path: string): Weight | undefined {
    return this.has(`${path}.weight`) ? this.linear(path) : undefined;
  }

  /** The module stored at storedPath; its quantization is looked up under the stored path. */
  private storedLinear(storedPath: string): Weight {
    const stored = `${storedPath}.weight`;
    const spec = quantSpecFor(this.md.quant, storedPath, this.md.weights);
    if (!spec) return this.unquantized(this.wrap(stored), stored);
    const q: QuantizedWeight = {
      w: this.wrap(stored),
      scales: this.wrap(`${storedPath}.scales`),
      mode: spec.mode,
      bits: spec.bits,
      groupSize: spec.groupSize,
      ...(spec.mode === "affine" ? { biases: this.wrap(`${storedPath}.biases`) } : {}),
      ...(this.md.weights.has(`${storedPath}.global_scale`) ? { globalScale: this.scalar(`${storedPath}.global_scale`) } : {}),
      ...(this.routed ? { exactRows: true } : {}),
    };
    return q;
  }

  /** A weight with no quantization configured, which must then be floats (stored: its name, for the error). */
  private unquantized(t: Tensor, stored: string): Tensor {
    if (t.dtype !== "f32" && t.dtype !== "f16" && t.dtype !== "bf16") {
      throw new RmlxError("bad_model", `${this.md.dir}: ${stored} is ${t.dtype} but no quantization is configured for it`);
    }
    return t;
  }

  /**
   * Experts stored one by one (weights[e] the stored name of expert e's [out, in] weight, as transformers saves
   * them) stacked into one [E, out, in] weight, since the kernels read stacked experts only: in the backend's own
   * memory where it offers that (weightBuffer), else in a buffer of their own.
   */
  private stackExperts(path: string, weights: readonly string[]): Weight {
    // a missing expert leaves a hole, which map() would skip
    if (Array.from(weights).includes(undefined as unknown as string))
      throw new RmlxError("bad_model", `${this.md.dir}: experts of ${path} are not numbered 0..${weights.length - 1}`);
    const paths = weights.map((w) => w.slice(0, -".weight".length));
    const specs = paths.map((p) => quantSpecFor(this.md.quant, p, this.md.weights));
    const first = specs[0] ?? null;
    const stack = (name: (i: number) => string): Tensor => {
      const entries = paths.map((_, i) => this.md.weights.require(name(i)));
      const e0 = entries[0]!;
      const shape = [paths.length, ...e0.shape];
      const dt = dtypeOf(e0, this.md.dir);
      const own = this.backend.weightBuffer?.(shape, dt);
      const bytes = own?.bytes ?? new Uint8Array(entries.reduce((n, e) => n + e.bytes.byteLength, 0));
      let off = 0;
      for (const e of entries) {
        if (e.dtype !== e0.dtype || e.shape.join() !== e0.shape.join()) {
          throw new RmlxError("bad_model", `${this.md.dir}: experts ${e0.name} and ${e.name} differ in shape or dtype`);
        }
        fillWeight(bytes.subarray(off, off + e.bytes.byteLength), e);
        off += e.bytes.byteLength;
      }
      if (own) return own.tensor;
      this.keepAlive.push(bytes);
      return this.backend.fromBytes(bytes, shape, dt);
    };
    for (const sp of specs) {
      if (sp?.bits !== first?.bits || sp?.groupSize !== first?.groupSize || sp?.mode !== first?.mode) {
        throw new RmlxError("bad_model", `${this.md.dir}: experts of ${paths[0]} are quantized differently`);
      }
    }
    const w = stack((i) => `${paths[i]}.weight`);
    if (!first) return this.unquantized(w, weights[0]!);
    return {
      w,
      scales: stack((i) => `${paths[i]}.scales`),
      ...(first.mode === "affine" ? { biases: stack((i) => `${paths[i]}.biases`) } : {}),
      mode: first.mode,
      bits: first.bits,
      groupSize: first.groupSize,
      ...(this.routed ? { exactRows: true } : {}),
    };
  }

  /** The value of a one-element float tensor (by its mlx-lm name), read on the host at load time. */
  value(name: string): number {
    const stored = this.storedName(name);
    const e = this.md.weights.require(stored);
    if (e.shape.reduce((a, b) => a * b, 1) !== 1) throw new RmlxError("bad_model", `${this.md.dir}: ${stored} is not a single value`);
    const v = new DataView(e.bytes.buffer, e.bytes.byteOffset, e.bytes.byteLength);
    if (e.dtype === "F32") return v.getFloat32(0, true);
    if (e.dtype === "BF16") return new Float32Array(new Uint32Array([v.getUint16(0, true) << 16]).buffer)[0]!;
    if (e.dtype === "F16") return halfToFloat(v.getUint16(0, true));
    throw new RmlxError("bad_model", `${this.md.dir}: ${stored} is ${e.dtype}, not a float`);
  }

  private scalar(name: string): number {
    const e = this.md.weights.require(name);
    if (e.dtype !== "F32" || e.bytes.byteLength !== 4) throw new RmlxError("bad_model", `${this.md.dir}: ${name} is not an f32 scalar`);
    return new DataView(e.bytes.buffer, e.bytes.byteOffset, 4).getFloat32(0, true);
  }
}

function dtypeOf(e: TensorEntry, dir: string): DType {
  const d = DTYPES[e.dtype];
  if (!d) throw new RmlxError("unsupported", `${dir}: tensor ${e.name} has dtype ${e.dtype}, which the kernels do not read`);
  return d;
}

/** A float scalar rounded to bf16 (round to nearest even), as a bf16 tensor would hold it. */
export function roundToBf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  u[0] = ((u[0]! + 0x7fff + ((u[0]! >>> 16) & 1)) >>> 16) << 16;
  return f[0]!;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}
