// Loads libmlxc (the C API of MLX) through bun:ffi and declares the mlx-c symbols the mlx backend calls.
// mlx-c passes its handles (mlx_array, mlx_stream, mlx_vector_array, ...) as one-pointer structs by value, which
// every supported ABI (x86-64 SysV, arm64) passes exactly like a pointer, so they are declared as pointers here;
// results come back through 8-byte out-slots. Optional scalars ({value; bool has_value}) are 8 bytes and travel
// in one integer register: they are declared u64 and built by optInt.
import { dlopen, FFIType, JSCallback, CString, type Pointer } from "bun:ffi";
import { existsSync } from "node:fs";
import { RmlxError } from "../../errors.ts";

const { ptr: P, i32, u64, f32, bool, cstring, void: VOID } = FFIType;
// size_t (every platform MLX supports is 64-bit); results come back as bigint and are read through Number().
const usize = u64;

/** mlx_dtype enum values. */
export const MLX_DTYPE = {
  bool: 0,
  u8: 1,
  u16: 2,
  u32: 3,
  u64: 4,
  i8: 5,
  i16: 6,
  i32: 7,
  i64: 8,
  f16: 9,
  f32: 10,
  f64: 11,
  bf16: 12,
} as const;

/** A shape or axis list for mlx-c's const int * parameters (one element at least, a valid pointer when empty). */
export function ints(xs: readonly number[]): Int32Array {
  const a = new Int32Array(Math.max(xs.length, 1));
  for (let i = 0; i < xs.length; i++) a[i] = xs[i]!;
  return a;
}

/** Array handles for mlx-c's const mlx_array * parameters (one element at least, as ints). */
export function handles(hs: readonly number[]): BigUint64Array {
  const a = new BigUint64Array(Math.max(hs.length, 1));
  for (let i = 0; i < hs.length; i++) a[i] = BigInt(hs[i]!);
  return a;
}

/** A NUL-terminated UTF-8 copy of s, for the const char * parameters of mlx-c. */
export function cstr(s: string): Uint8Array {
  return new TextEncoder().encode(`${s}\0`);
}

const unary = { args: [P, P, P], returns: i32 } as const;
const binary = { args: [P, P, P, P], returns: i32 } as const;

const SYMBOLS = {
  mlx_set_error_handler: { args: [P, P, P], returns: VOID },
  mlx_version: { args: [P], returns: i32 },
  mlx_string_data: { args: [P], returns: cstring },
  mlx_string_free: { args: [P], returns: i32 },

  mlx_metal_is_available: { args: [P], returns: i32 },
  mlx_default_cpu_stream_new: { args: [], returns: P },
  mlx_default_gpu_stream_new: { args: [], returns: P },
  mlx_stream_free: { args: [P], returns: i32 },
  mlx_synchronize: { args: [P], returns: i32 },

  mlx_array_new: { args: [], returns: P },
  mlx_array_free: { args: [P], returns: i32 },
  mlx_array_new_data: { args: [P, P, i32, i32], returns: P },
  mlx_array_new_data_managed_payload: { args: [P, P, i32, i32, P, P], returns: P },
  mlx_array_new_float32: { args: [f32], returns: P },
  mlx_array_ndim: { args: [P], returns: usize },
  mlx_array_shape: { args: [P], returns: P },
  mlx_array_dtype: { args: [P], returns: i32 },
  mlx_array_nbytes: { args: [P], returns: usize },
  mlx_array_eval: { args: [P], returns: i32 },
  mlx_array_data_uint8: { args: [P], returns: P },
  _mlx_array_is_row_contiguous: { args: [P, P], returns: i32 },

  mlx_vector_array_new: { args: [], returns: P },
  mlx_vector_array_new_data: { args: [P, usize], returns: P },
  mlx_vector_array_free: { args: [P], returns: i32 },
  mlx_vector_array_size: { args: [P], returns: usize },
  mlx_vector_array_get: { args: [P, P, usize], returns: i32 },
  mlx_vector_string_new_data: { args: [P, usize], returns: P },
  mlx_vector_string_free: { args: [P], returns: i32 },

  mlx_eval: { args: [P], returns: i32 },
  mlx_async_eval: { args: [P], returns: i32 },
  mlx_get_active_memory: { args: [P], returns: i32 },

  mlx_reshape: { args: [P, P, P, usize, P], returns: i32 },
  mlx_transpose_axes: { args: [P, P, P, usize, P], returns: i32 },
  mlx_slice: { args: [P, P, P, usize, P, usize, P, usize, P], returns: i32 },
  mlx_concatenate_axis: { args: [P, P, i32, P], returns: i32 },
  mlx_astype: { args: [P, P, i32, P], returns: i32 },
  mlx_contiguous: { args: [P, P, bool, P], returns: i32 },
  mlx_zeros: { args: [P, P, usize, i32, P], returns: i32 },
  mlx_slice_update: { args: [P, P, P, P, usize, P, usize, P, usize, P], returns: i32 },
  mlx_scatter: { args: [P, P, P, P, P, usize, P], returns: i32 },
  mlx_view: { args: [P, P, i32, P], returns: i32 },
  mlx_take_axis: { args: [P, P, P, i32, P], returns: i32 },
  mlx_as_strided: { args: [P, P, P, usize, P, usize, usize, P], returns: i32 },
  mlx_split: { args: [P, P, i32, i32, P], returns: i32 },

  mlx_matmul: binary,
  mlx_quantized_matmul: { args: [P, P, P, P, P, bool, u64, u64, cstring, P], returns: i32 },
  mlx_gather_qmm: { args: [P, P, P, P, P, P, P, bool, u64, u64, cstring, bool, P], returns: i32 },
  mlx_gather_mm: { args: [P, P, P, P, P, bool, P], returns: i32 },
  mlx_quantize: { args: [P, P, u64, u64, cstring, P, P], returns: i32 },
  mlx_dequantize: { args: [P, P, P, P, u64, u64, cstring, P, u64, P], returns: i32 },

  mlx_add: binary,
  mlx_subtract: binary,
  mlx_multiply: binary,
  mlx_divide: binary,
  mlx_where: { args: [P, P, P, P, P], returns: i32 },
  mlx_abs: unary,
  mlx_maximum: binary,
  mlx_minimum: binary,
  mlx_less: binary,
  mlx_less_equal: binary,
  mlx_greater_equal: binary,
  mlx_logical_and: binary,
  mlx_max_axis: { args: [P, P, i32, bool, P], returns: i32 },
  mlx_round: { args: [P, P, i32, P], returns: i32 },
  mlx_right_shift: binary,
  mlx_bitwise_and: binary,
  mlx_sigmoid: unary,
  mlx_tanh: unary,
  mlx_erf: unary,
  mlx_exp: unary,
  mlx_logaddexp: binary,
  mlx_cumsum: { args: [P, P, i32, bool, bool, P], returns: i32 },
  mlx_softmax_axis: { args: [P, P, i32, bool, P], returns: i32 },
  mlx_argmax_axis: { args: [P, P, i32, bool, P], returns: i32 },
  mlx_argsort_axis: { args: [P, P, i32, P], returns: i32 },
  mlx_take_along_axis: { args: [P, P, P, i32, P], returns: i32 },
  mlx_sum_axis: { args: [P, P, i32, bool, P], returns: i32 },

  mlx_power: binary,
  mlx_closure_new_func_payload: { args: [P, P, P], returns: P },
  mlx_closure_free: { args: [P], returns: i32 },
  mlx_closure_apply: { args: [P, P, P], returns: i32 },
  mlx_compile: { args: [P, P, bool], returns: i32 },
  mlx_vector_array_set_data: { args: [P, P, usize], returns: i32 },

  mlx_fast_rms_norm: { args: [P, P, P, f32, P], returns: i32 },
  mlx_fast_layer_norm: { args: [P, P, P, P, f32, P], returns: i32 },
  mlx_fast_rope_dynamic: { args: [P, P, i32, bool, u64, f32, P, P, P], returns: i32 },
  mlx_fast_scaled_dot_product_attention: { args: [P, P, P, P, f32, cstring, P, P, P], returns: i32 },

  mlx_fast_metal_kernel_new: { args: [cstring, P, P, cstring, cstring, bool, bool], returns: P },
  mlx_fast_metal_kernel_free: { args: [P], returns: VOID },
  mlx_fast_metal_kernel_apply: { args: [P, P, P, P, P], returns: i32 },
  mlx_fast_metal_kernel_config_new: { args: [], returns: P },
  mlx_fast_metal_kernel_config_free: { args: [P], returns: VOID },
  mlx_fast_metal_kernel_config_add_output_arg: { args: [P, P, usize, i32], returns: i32 },
  mlx_fast_metal_kernel_config_set_grid: { args: [P, i32, i32, i32], returns: i32 },
  mlx_fast_metal_kernel_config_set_thread_group: { args: [P, i32, i32, i32], returns: i32 },
  mlx_fast_metal_kernel_config_add_template_arg_dtype: { args: [P, cstring, i32], returns: i32 },
} as const;

// Handles travel as plain numbers (addresses below 2^53), which bun:ffi accepts for pointer arguments; the
// typed Pointer brand would force a cast at every one of the hundreds of call sites.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Fn = (...args: any[]) => any;
export type MlxSymbols = { readonly [K in keyof typeof SYMBOLS]: Fn };

export interface MlxLib {
  readonly sym: MlxSymbols;
  readonly path: string;
  readonly version: string;
  /** Whether MLX sees a Metal GPU (Apple Silicon builds). */
  readonly metal: boolean;
  /** The message of the last error mlx-c reported, cleared by takeError(). */
  takeError(): string;
  /** mlx_array_free as a C function pointer (a destructor that does nothing for a null payload). */
  readonly noopDtor: number;
  /** mlx-c calls made so far; counted only when RMLX_MLX_COUNT_CALLS=1 (benchmarks), else always 0. */
  calls(): number;
}

/** The same symbols, each counting its calls into counter[0]. */
function countingSymbols(sym: MlxSymbols, counter: Float64Array): MlxSymbols {
  const out: Record<string, Fn> = {};
  for (const [name, fn] of Object.entries(sym) as [string, Fn][])
    out[name] = (...a: unknown[]) => {
      counter[0]!++;
      return fn(...a);
    };
  return out as unknown as MlxSymbols;
}

/** Where libmlxc is looked for, first match wins. */
function mlxLibraryCandidates(explicit?: string): string[] {
  if (explicit) return [explicit];
  const env = process.env.RMLX_MLX_C_LIB;
  if (env) return [env];
  if (process.platform === "darwin")
    return ["/opt/homebrew/lib/libmlxc.dylib", "/usr/local/lib/libmlxc.dylib", "/opt/homebrew/opt/mlx-c/lib/libmlxc.dylib"];
  return ["/usr/local/lib/libmlxc.so", "/usr/lib/libmlxc.so", "/usr/lib/x86_64-linux-gnu/libmlxc.so", "/usr/lib/aarch64-linux-gnu/libmlxc.so"];
}

let loaded: MlxLib | undefined;

/**
 * Opens libmlxc once per process and installs the error handler before any other call: mlx-c's default
 * handler prints and exits, which would take the whole server down on one bad shape.
 */
export function loadMlx(explicit?: string): MlxLib {
  if (loaded) return loaded;
  const candidates = mlxLibraryCandidates(explicit);
  const path = candidates.find((p) => existsSync(p));
  if (!path) throw new RmlxError("unsupported", `libmlxc not found (looked in ${candidates.join(", ")}; set RMLX_MLX_C_LIB or --mlx-lib)`);
  let handle: ReturnType<typeof dlopen<typeof SYMBOLS>>;
  try {
    handle = dlopen(path, SYMBOLS);
  } catch (e) {
    throw new RmlxError("unsupported", `cannot load ${path}: ${(e as Error).message.split("\n")[0]}`);
  }
  const counter = new Float64Array(1);
  const raw = handle.symbols as unknown as MlxSymbols;
  const sym = process.env.RMLX_MLX_COUNT_CALLS === "1" ? countingSymbols(raw, counter) : raw;
  let lastError = "";
  const onError = new JSCallback(
    (msg: Pointer | null) => {
      lastError = msg ? new CString(msg).toString() : "unknown mlx error";
    },
    { args: [P, P], returns: VOID },
  );
  sym.mlx_set_error_handler(onError.ptr, null, null);

  sym.mlx_version(slotPtr());
  const vs = readSlot();
  const version = vs ? String(sym.mlx_string_data(vs)) : "unknown";
  if (vs) sym.mlx_string_free(vs);

  const flag = new Uint8Array(1);
  const metal = sym.mlx_metal_is_available(flag) === 0 && flag[0] === 1;
  lastError = "";
  loaded = {
    sym,
    path,
    version,
    metal,
    takeError() {
      const e = lastError;
      lastError = "";
      return e;
    },
    noopDtor: Number((raw.mlx_array_free as unknown as { ptr: number }).ptr),
    calls: () => counter[0]!,
  };
  return loaded;
}

/** Whether libmlxc can be loaded here, and why not when it cannot (for `rmlx info` and backend selection). */
export function probeMlx(explicit?: string): { ok: true; lib: MlxLib } | { ok: false; reason: string } {
  try {
    return { ok: true, lib: loadMlx(explicit) };
  } catch (e) {
    return { ok: false, reason: e instanceof RmlxError ? e.message : String(e) };
  }
}

// One out-slot shared by every call: calls are synchronous and each result is read before the next call.
const slot = new BigUint64Array(1);
// The slot as two 32-bit halves: read and written without a BigInt a call (handles are below 2^53).
const slotWords = new Uint32Array(slot.buffer);
const WORD = 2 ** 32;
/**
 * Handles whose arrays nobody needs any more, kept to receive later results (outSlot): mlx-c assigns a result
 * into the array a non-null out-slot holds, so a step reuses its handles instead of paying an mlx_array_free and
 * a fresh handle for every intermediate (about half the mlx-c calls of a decode step).
 */
const spare: number[] = [];
/** The spare handle the slot holds for the call in progress, 0 when it holds none. */
let pending = 0;

/** The out-slot, empty: for results that are not arrays (vectors, strings, closures). */
export function slotPtr(): BigUint64Array {
  if (pending) spare.push(pending);
  pending = 0;
  slotWords[0] = 0;
  slotWords[1] = 0;
  return slot;
}

/** The out-slot holding a spare handle when there is one, for a call whose result is an array. */
export function outSlot(): BigUint64Array {
  if (pending) spare.push(pending);
  pending = spare.pop() ?? 0;
  slotWords[0] = pending >>> 0;
  slotWords[1] = Math.floor(pending / WORD);
  return slot;
}

/**
 * The handle the last call wrote, taken out of the slot: mlx-c assigns into whatever array a non-null out-slot
 * holds, so a call whose operands were built inside its own argument list (after its slotPtr()) would otherwise
 * overwrite the operand's array with its result. When such a nested call took the slot, the outer call found it
 * empty and made a new handle; the spare one it had goes back.
 */
export function readSlot(): number {
  const h = slotWords[0]! + slotWords[1]! * WORD;
  slotWords[0] = 0;
  slotWords[1] = 0;
  if (pending && pending !== h) spare.push(pending);
  pending = 0;
  return h;
}

/** Gives a handle whose array is no longer needed to later calls (its array lives on until then). */
export function spareHandle(h: number): void {
  spare.push(h);
}

/** Empties the spare handles, which the caller then frees (before an eval, so that no stale array pins a buffer). */
export function takeSpares(): number[] {
  return spare.splice(0, spare.length);
}

/** mlx_optional_int with a value. */
export function optInt(v: number): bigint {
  return BigInt(v >>> 0) | (1n << 32n);
}

/** An absent optional. */
export const NONE = 0n;
