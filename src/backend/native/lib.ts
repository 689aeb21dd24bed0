// Loads the native kernel library (native/build/librmlx.so) through bun:ffi and declares exactly the symbols of
// native/include/rmlx.h. In a compiled `rmlx` binary the library is embedded; it is written once to a cache
// directory keyed by its content hash, because dlopen needs a real file.
import { dlopen, FFIType, CString } from "bun:ffi";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import embeddedLib from "../../../native/build/librmlx.so" with { type: "file" };
import { RmlxError } from "../../errors.ts";
import { parseGemmMode, parseGemvMode, type GemvMode } from "../choice.ts";

export const DT = { f32: 0, f16: 1, bf16: 2, u32: 3, u8: 4, i32: 5 } as const;
export const QMODE = { affine: 0, mxfp4: 1, mxfp8: 2, nvfp4: 3 } as const;
/** RMLX_Q_EXACT_ROWS, OR'ed into a mode (QuantizedWeight.exactRows). */
export const Q_EXACT_ROWS = 0x100;
const ABI_VERSION = 4;

const { ptr: P, i32, i64, f32, f64, cstring } = FFIType;

const SYMBOLS = {
  rmlx_abi_version: { args: [], returns: i32 },
  rmlx_init: { args: [i32], returns: i32 },
  rmlx_num_threads: { args: [], returns: i32 },
  rmlx_isa: { args: [], returns: cstring },
  rmlx_set_isa: { args: [P], returns: i32 },
  rmlx_gemv_mode: { args: [], returns: cstring },
  rmlx_set_gemv_mode: { args: [P], returns: i32 },
  rmlx_gemm_mode: { args: [], returns: cstring },
  rmlx_set_gemm_mode: { args: [P], returns: i32 },
  rmlx_last_error: { args: [], returns: cstring },
  rmlx_alloc: { args: [i64, P], returns: i32 },
  rmlx_free: { args: [P], returns: i32 },
  rmlx_populate: { args: [P, i64], returns: i32 },
  rmlx_linear: { args: [P, P, i64, i64, i64, P, i32, P], returns: i32 },
  rmlx_qlinear: { args: [P, P, i64, i64, i64, P, P, P, i32, i32, i32, i32, f32, P, i32], returns: i32 },
  rmlx_gather_qlinear: {
    args: [P, P, i64, i64, i64, i64, P, i64, P, P, P, i32, i32, i32, i32, f32],
    returns: i32,
  },
  rmlx_gather_linear: { args: [P, P, i64, i64, i64, i64, P, i64, P, i32], returns: i32 },
  rmlx_dequantize_rows: { args: [P, P, i64, i64, i64, P, P, P, i32, i32, i32, i32, f32], returns: i32 },
  rmlx_take_rows: { args: [P, P, i64, i64, i64, P, i32], returns: i32 },
  rmlx_ternary_linear: { args: [P, P, i64, i64, i64, P, f32, i32], returns: i32 },
  rmlx_exec: { args: [P, i64], returns: i32 },
  rmlx_exec_async: { args: [P, i64, P], returns: i32 },
  rmlx_exec_wait: { args: [i64], returns: i32 },
  rmlx_exec_seconds: { args: [], returns: f64 },
  rmlx_sample: { args: [P, i64, P, P, P, P, P], returns: i32 },
  rmlx_bench_triad: { args: [i64, i32, P], returns: i32 },
} as const;

function libraryPath(): string {
  const override = process.env.RMLX_NATIVE_LIB;
  if (override) return override;
  if (!embeddedLib.startsWith("/$bunfs/") && existsSync(embeddedLib)) return embeddedLib;
  // Compiled binary: copy the embedded library out once per content hash.
  const data = readFileSync(embeddedLib);
  const hash = Bun.hash(data).toString(16);
  const base = process.env.XDG_CACHE_HOME || (homedir() ? join(homedir(), ".cache") : tmpdir());
  let dir = join(base, "rmlx");
  try {
    mkdirSync(dir, { recursive: true });
  } catch {
    dir = join(tmpdir(), "rmlx");
    mkdirSync(dir, { recursive: true });
  }
  const target = join(dir, `librmlx-${hash}.so`);
  if (!existsSync(target)) {
    const tmp = `${target}.${process.pid}.tmp`;
    writeFileSync(tmp, data, { mode: 0o755 });
    renameSync(tmp, target);
  }
  return target;
}

function open() {
  let lib;
  try {
    lib = dlopen(libraryPath(), SYMBOLS);
  } catch (err) {
    throw new RmlxError("native", `cannot load the native library: ${(err as Error).message}`);
  }
  const abi = lib.symbols.rmlx_abi_version();
  if (abi !== ABI_VERSION) throw new RmlxError("native", `native library ABI ${abi}, expected ${ABI_VERSION}`);
  // RMLX_ISA is read by the library itself; a bad value fails here, before any kernel runs.
  const status = lib.symbols.rmlx_init(Number(process.env.RMLX_THREADS ?? 0));
  if (status !== 0) throw statusError(status, String(lib.symbols.rmlx_last_error() as unknown as CString));
  // read here as well as by the library: a Worker's process.env is its own, not the C environment
  const gemv = parseGemvMode(process.env.RMLX_GEMV);
  if (gemv) lib.symbols.rmlx_set_gemv_mode(Buffer.from(`${gemv}\0`));
  const gemm = parseGemmMode(process.env.RMLX_GEMM);
  if (gemm) lib.symbols.rmlx_set_gemm_mode(Buffer.from(`${gemm}\0`));
  return lib.symbols;
}

let symbols: ReturnType<typeof open> | undefined;

/** The native symbols, loaded on first use. */
export function native(): ReturnType<typeof open> {
  symbols ??= open();
  return symbols;
}

/** Sets the arithmetic of decode-shaped quantized products for the whole process; returns the previous one. */
export function setGemvMode(mode: GemvMode): GemvMode {
  const lib = native();
  const before = String(lib.rmlx_gemv_mode() as unknown as CString) as GemvMode;
  check(lib.rmlx_set_gemv_mode(Buffer.from(`${mode}\0`)), "gemv mode");
  return before;
}

function statusError(status: number, msg: string): RmlxError {
  return new RmlxError(status === 1 ? "invalid_argument" : status === 2 ? "unsupported" : "native", msg);
}

/** Turns a non-zero status into an RmlxError carrying the library's message. */
export function check(status: number, what: string): void {
  if (status === 0) return;
  throw statusError(status, `${what}: ${String(native().rmlx_last_error() as unknown as CString)}`);
}
