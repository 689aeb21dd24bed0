// Kernels MLX has no single op for, as Metal source embedded in the binary and compiled at run time through
// mlx_fast_metal_kernel_*. Only Metal builds can create them: elsewhere (and if creation fails) callers get null
// and compose the same function from plain ops.
import { ptr, read } from "bun:ffi";
import swigluSource from "../../../metal/swiglu.metal" with { type: "text" };
import gegluSource from "../../../metal/geglu.metal" with { type: "text" };
import { MLX_DTYPE, cstr, readSlot, slotPtr, type MlxLib } from "./lib.ts";

export type GluKind = "swiglu" | "geglu";

const SOURCES: Record<GluKind, string> = { swiglu: swigluSource, geglu: gegluSource };
/** act(1.5) * 2 for each kind, what a kernel must compute on its first (probe) launch. */
const PROBE: Record<GluKind, number> = {
  swiglu: (1.5 / (1 + Math.exp(-1.5))) * 2,
  geglu: 0.5 * 1.5 * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (1.5 + 0.044715 * 1.5 ** 3))) * 2,
};
const THREADS = 256;

function stringVector(lib: MlxLib, names: string[]): number {
  const bufs = names.map(cstr);
  const ptrs = new BigUint64Array(bufs.map((b) => BigInt(ptr(b))));
  return Number(lib.sym.mlx_vector_string_new_data(ptrs, names.length));
}

export class GluKernels {
  private readonly kernels = new Map<GluKind, number>();
  private disabled: boolean;

  constructor(private readonly lib: MlxLib) {
    this.disabled = !lib.metal;
  }

  private kernel(kind: GluKind): number {
    const have = this.kernels.get(kind);
    if (have !== undefined) return have;
    const { sym } = this.lib;
    const inputs = stringVector(this.lib, ["gate", "up"]);
    const outputs = stringVector(this.lib, ["out"]);
    let k = Number(sym.mlx_fast_metal_kernel_new(cstr(`rmlx_${kind}`), inputs, outputs, cstr(SOURCES[kind]), cstr(""), true, false));
    sym.mlx_vector_string_free(inputs);
    sym.mlx_vector_string_free(outputs);
    // Metal compiles the source at the first evaluation, where a failure would fail a whole step: one probe
    // launch on a single element checks that it builds and computes what the plain ops would.
    if (k && !this.probe(kind, k)) {
      sym.mlx_fast_metal_kernel_free(k);
      k = 0;
    }
    this.lib.takeError();
    this.kernels.set(kind, k);
    return k;
  }

  private probe(kind: GluKind, k: number): boolean {
    const { sym } = this.lib;
    const one = Int32Array.of(1);
    const g = Number(sym.mlx_array_new_data(Float32Array.of(1.5), one, 1, MLX_DTYPE.f32));
    const u = Number(sym.mlx_array_new_data(Float32Array.of(2), one, 1, MLX_DTYPE.f32));
    const out = this.launch(k, g, u, [1]);
    sym.mlx_array_free(g);
    sym.mlx_array_free(u);
    if (!out) return false;
    try {
      if (sym.mlx_array_eval(out) !== 0) return false;
      const p = sym.mlx_array_data_uint8(out);
      return !!p && Math.abs(read.f32(p, 0) - PROBE[kind]) <= 1e-5;
    } finally {
      sym.mlx_array_free(out);
    }
  }

  /**
   * out = act(gate) * up for f32 gate and up of one shape, or null when no Metal kernel can run here (the caller
   * then uses plain ops). A kernel that fails to build or launch disables the fused path for the process.
   */
  apply(kind: GluKind, gate: number, up: number, shape: readonly number[]): number | null {
    if (this.disabled) return null;
    const k = this.kernel(kind);
    const out = k ? this.launch(k, gate, up, shape) : 0;
    if (!out) this.disabled = true;
    return out || null;
  }

  /** One launch over every element; 0 when MLX refuses it. */
  private launch(k: number, gate: number, up: number, shape: readonly number[]): number {
    const { sym } = this.lib;
    let size = 1;
    for (const d of shape) size *= d;
    const cfg = Number(sym.mlx_fast_metal_kernel_config_new());
    const ins = Number(sym.mlx_vector_array_new_data(new BigUint64Array([BigInt(gate), BigInt(up)]), 2));
    const outs = Number(sym.mlx_vector_array_new());
    try {
      const dims = Int32Array.from(shape);
      sym.mlx_fast_metal_kernel_config_add_output_arg(cfg, dims.length ? dims : new Int32Array(1), shape.length, MLX_DTYPE.f32);
      sym.mlx_fast_metal_kernel_config_set_grid(cfg, Math.max(size, 1), 1, 1);
      sym.mlx_fast_metal_kernel_config_set_thread_group(cfg, Math.min(THREADS, Math.max(size, 1)), 1, 1);
      const outSlot = new BigUint64Array([BigInt(outs)]);
      if (sym.mlx_fast_metal_kernel_apply(outSlot, k, ins, cfg, this.stream) !== 0) {
        this.lib.takeError();
        return 0;
      }
      const vec = Number(outSlot[0]);
      if (sym.mlx_vector_array_get(slotPtr(), vec, 0) !== 0) {
        this.lib.takeError();
        return 0;
      }
      const out = readSlot();
      if (vec !== outs) sym.mlx_vector_array_free(vec);
      return out;
    } finally {
      sym.mlx_vector_array_free(ins);
      sym.mlx_vector_array_free(outs);
      sym.mlx_fast_metal_kernel_config_free(cfg);
    }
  }

  /** The stream kernels run on; set by the backend after it picks its device. */
  stream = 0;

  dispose(): void {
    for (const k of this.kernels.values()) if (k) this.lib.sym.mlx_fast_metal_kernel_free(k);
    this.kernels.clear();
  }
}
