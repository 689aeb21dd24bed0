// A model's view of its checkpoint: tensors by mlx-lm's canonical names (with the prefixes that multimodal and
// transformers-5 checkpoints add resolved), wrapped as backend tensors without copying, and Linear / embedding
// weights as float or MLX-quantized per the quantization config.
import type { Backend, DType, QuantizedWeight, Tensor, Weight } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import type { ModelDir } from "../io/model_dir.ts";
import { quantSpecFor } from "../io/quant_config.ts";
import type { StDType, TensorEntry } from "../io/safetensors.ts";

const DTYPES: Partial<Record<StDType, DType>> = { F32: "f32", F16: "f16", BF16: "bf16", U32: "u32", U8: "u8", I32: "i32" };

/** Where a text model's weights may live besides the canonical "model." / "lm_head." names. */
const ALIASES: [string, string[]][] = [
  ["model.", ["language_model.model.", "model.language_model."]],
  ["lm_head.", ["language_model.lm_head."]],
];

export class ModelWeights {
  private readonly cache = new Map<string, Tensor>();

  constructor(
    readonly backend: Backend,
    readonly md: ModelDir,
  ) {}

  /** The stored name for a canonical name, or undefined. */
  resolve(name: string): string | undefined {
    const w = this.md.weights;
    if (w.has(name)) return name;
    for (const [prefix, alts] of ALIASES) {
      if (!name.startsWith(prefix)) continue;
      for (const alt of alts) {
        const n = alt + name.slice(prefix.length);
        if (w.has(n)) return n;
      }
    }
    return undefined;
  }

  has(name: string): boolean {
    return this.resolve(name) !== undefined;
  }

  private entry(name: string): TensorEntry {
    const stored = this.resolve(name);
    if (stored === undefined) throw new RmlxError("bad_model", `${this.md.dir}: missing tensor ${name}`);
    return this.md.weights.require(stored);
  }

  /** The stored tensor, wrapped without copying (one wrapper per name, so tied weights share it). */
  tensor(name: string): Tensor {
    const e = this.entry(name);
    const hit = this.cache.get(e.name);
    if (hit) return hit;
    const t = this.backend.fromBytes(e.bytes, e.shape, dtypeOf(e, this.md.dir));
    this.cache.set(e.name, t);
    return t;
  }

  optTensor(name: string): Tensor | undefined {
    return this.has(name) ? this.tensor(name) : undefined;
  }

  /** A Linear or embedding module's weight (path without ".weight"), float or quantized. */
  linear(path: string): Weight {
    const stored = this.resolve(`${path}.weight`);
    if (stored === undefined) throw new RmlxError("bad_model", `${this.md.dir}: missing tensor ${path}.weight`);
    const storedPath = stored.slice(0, -".weight".length);
    const spec = quantSpecFor(this.md.quant, storedPath, this.md.weights);
    if (!spec) {
      const t = this.tensor(stored);
      if (t.dtype !== "f32" && t.dtype !== "f16" && t.dtype !== "bf16") {
        throw new RmlxError("bad_model", `${this.md.dir}: ${stored} is ${t.dtype} but no quantization is configured for it`);
      }
      return t;
    }
    const q: QuantizedWeight = {
      w: this.tensor(stored),
      scales: this.tensor(`${storedPath}.scales`),
      mode: spec.mode,
      bits: spec.bits,
      groupSize: spec.groupSize,
      ...(spec.mode === "affine" ? { biases: this.tensor(`${storedPath}.biases`) } : {}),
      ...(this.md.weights.has(`${storedPath}.global_scale`) ? { globalScale: this.scalar(`${storedPath}.global_scale`) } : {}),
    };
    return q;
  }

  optLinear(path: string): Weight | undefined {
    return this.has(`${path}.weight`) ? this.linear(path) : undefined;
  }

  /**
   * Experts stored one by one (paths[e] + ".weight" [out, in], as transformers saves them) stacked into one
   * [E, out, in] weight. This is the one place weights are copied: the kernels read stacked experts only.
   */
  stackExperts(paths: readonly string[]): Weight {
    const first = this.linear(paths[0]!);
    const parts = paths.map((p) => this.linear(p));
    const stack = (name: (i: number) => string): Tensor => {
      const entries = paths.map((_, i) => this.entry(name(i)));
      const e0 = entries[0]!;
      const bytes = new Uint8Array(entries.reduce((n, e) => n + e.bytes.byteLength, 0));
      let off = 0;
      for (const e of entries) {
        if (e.dtype !== e0.dtype || e.shape.join() !== e0.shape.join()) {
          throw new RmlxError("bad_model", `${this.md.dir}: experts ${e0.name} and ${e.name} differ in shape or dtype`);
        }
        bytes.set(e.bytes, off);
        off += e.bytes.byteLength;
      }
      this.keepAlive.push(bytes);
      return this.backend.fromBytes(bytes, [paths.length, ...e0.shape], dtypeOf(e0, this.md.dir));
    };
    const w = stack((i) => `${paths[i]}.weight`);
    if (!isQ(first)) return w;
    for (const p of parts) {
      if (!isQ(p) || p.bits !== first.bits || p.groupSize !== first.groupSize || p.mode !== first.mode) {
        throw new RmlxError("bad_model", `${this.md.dir}: experts of ${paths[0]} are quantized differently`);
      }
    }
    return {
      w,
      scales: stack((i) => `${paths[i]}.scales`),
      ...(first.mode === "affine" ? { biases: stack((i) => `${paths[i]}.biases`) } : {}),
      mode: first.mode,
      bits: first.bits,
      groupSize: first.groupSize,
    };
  }

  /** Buffers built at load time (stacked experts) that tensors wrap without owning. */
  private readonly keepAlive: Uint8Array[] = [];

  private scalar(name: string): number {
    const e = this.entry(name);
    if (e.dtype !== "F32" || e.bytes.byteLength !== 4) throw new RmlxError("bad_model", `${this.md.dir}: ${name} is not an f32 scalar`);
    return new DataView(e.bytes.buffer, e.bytes.byteOffset, 4).getFloat32(0, true);
  }
}

function isQ(w: Weight): w is QuantizedWeight {
  return (w as QuantizedWeight).scales !== undefined;
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
