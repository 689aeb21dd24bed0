// Functions compiled by MLX: a closure whose body records plain ops, passed through mlx_compile (shapeless), as
// mlx-lm compiles its activations (@mx.compile swiglu, gelu_approx). On a GPU the compiled graph runs as one fused
// kernel instead of one dispatch an op; on MLX's CPU build it is fused into generated code as well. The body is
// recorded once per input signature (rank and dtypes), by MLX calling back into TypeScript on this thread; later
// applications replay it. A function MLX cannot compile or run here (checked once, on a one-element input
// against the body's own ops) is reported as unavailable, and the caller records the plain ops instead.
import { JSCallback, read, type Pointer } from "bun:ffi";
import { handles, MLX_DTYPE, readSlot, slotPtr, type MlxSymbols } from "./lib.ts";

/**
 * Records a function's ops on input handles: its output handle, and the temporaries it made (freed once the
 * output is handed to MLX).
 */
export type Body = (inputs: readonly number[]) => { out: number; temps: number[] };

interface Fn {
  /** The compiled closure, 0 where compiling failed. */
  closure: number;
  callback: JSCallback;
}

export class CompiledFunctions {
  private readonly fns = new Map<string, Fn>();

  constructor(
    private readonly S: MlxSymbols,
    private readonly takeError: () => string,
  ) {}

  /**
   * body compiled and applied to the inputs: the output handle (the caller's to free), or null where MLX cannot
   * compile it here. arity: the number of inputs, for the one-time check.
   */
  apply(name: string, arity: number, body: Body, inputs: readonly number[]): number | null {
    const fn = this.fns.get(name) ?? this.make(name, arity, body);
    return fn.closure ? this.call(fn.closure, inputs) : null;
  }

  private make(name: string, arity: number, body: Body): Fn {
    const S = this.S;
    const callback = new JSCallback(
      (res: Pointer, input: Pointer) => {
        const ins: number[] = [];
        try {
          const n = Number(S.mlx_vector_array_size(input));
          for (let i = 0; i < n; i++) {
            if (S.mlx_vector_array_get(slotPtr(), input, i) !== 0) return 1;
            ins.push(readSlot());
          }
          const { out, temps } = body(ins);
          const st = S.mlx_vector_array_set_data(res, handles([out]), 1);
          for (const h of [...temps, out]) S.mlx_array_free(h);
          return st;
        } catch {
          return 1;
        } finally {
          for (const h of ins) S.mlx_array_free(h);
        }
      },
      { args: ["ptr", "ptr", "ptr"], returns: "i32" },
    );
    const plain = Number(S.mlx_closure_new_func_payload(callback.ptr, null, null));
    let closure = 0;
    if (plain && S.mlx_compile(slotPtr(), plain, true) === 0) closure = readSlot();
    if (plain) S.mlx_closure_free(plain);
    if (closure && !this.check(closure, arity, body)) {
      S.mlx_closure_free(closure);
      closure = 0;
    }
    this.takeError();
    const fn = { closure, callback };
    this.fns.set(name, fn);
    return fn;
  }

  /** One application, or 0 when MLX refuses it. */
  private call(closure: number, inputs: readonly number[]): number {
    const S = this.S;
    const vin = Number(S.mlx_vector_array_new_data(handles(inputs), inputs.length));
    try {
      if (S.mlx_closure_apply(slotPtr(), closure, vin) !== 0) {
        this.takeError();
        return 0;
      }
      const vout = readSlot();
      const st = S.mlx_vector_array_get(slotPtr(), vout, 0);
      const out = readSlot();
      S.mlx_vector_array_free(vout);
      return st === 0 ? out : 0;
    } finally {
      S.mlx_vector_array_free(vin);
    }
  }

  /** The compiled function on one-element f32 inputs computes what the body's ops compute. */
  private check(closure: number, arity: number, body: Body): boolean {
    const S = this.S;
    const ins = Array.from({ length: arity }, (_, i) => Number(S.mlx_array_new_data(Float32Array.of(1.5 + i * 0.25), Int32Array.of(1), 1, MLX_DTYPE.f32)));
    let got = 0;
    let want: { out: number; temps: number[] } | null = null;
    try {
      got = this.call(closure, ins);
      want = body(ins);
      if (!got || S.mlx_array_eval(got) !== 0 || S.mlx_array_eval(want.out) !== 0) return false;
      const a = S.mlx_array_data_uint8(got);
      const b = S.mlx_array_data_uint8(want.out);
      if (!a || !b) return false;
      const x = read.f32(a, 0);
      const y = read.f32(b, 0);
      // A fused kernel may round its steps differently in the last place.
      return Number.isFinite(x) && Math.abs(x - y) <= 1e-6 * Math.max(1, Math.abs(y));
    } catch {
      return false;
    } finally {
      for (const h of [...ins, ...(want ? [...want.temps, want.out] : []), got]) if (h) S.mlx_array_free(h);
    }
  }
}
