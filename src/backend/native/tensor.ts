// Tensors and recorded nodes of the native backend.
import type { DType, Tensor } from "../backend.ts";
import type { ProgramWriter } from "./program.ts";

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, u32: 4, u8: 1, i32: 4 };

/** Where a tensor's bytes live once it has some. */
export const enum Home {
  /** Not yet computed (or a view of a tensor that is not). */
  Pending,
  /** The scope arena: freed when the outermost scope ends. */
  Arena,
  /** Its own JS-owned buffer (`hold`), freed when the tensor is collected. */
  Heap,
  /** Its own native allocation, freed only by dispose(). */
  Persistent,
  /** Caller memory (fromBytes), kept alive through `hold`. */
  External,
  /** Freed: using the tensor is an error. */
  Dead,
}

/** Writes a node's records; host[i] is the native address of node.host[i]. */
export type Emit = (w: ProgramWriter, host: readonly number[]) => void;

const NO_HOST: (Int32Array | Float32Array)[] = [];
const NO_DEPS: Node[] = [];

export class Node {
  /** Eval pass that last visited this node (for the topological walk). */
  mark = 0;
  done = false;
  constructor(
    public inputs: NTensor[],
    public outputs: NTensor[],
    public emit: Emit,
    /** Host arrays copied at record time; the kernels read them in place. */
    public host: (Int32Array | Float32Array)[] = NO_HOST,
    /** Nodes that must run first without being data inputs (KV pool writes before reads). */
    public deps: Node[] = NO_DEPS,
  ) {}
}

export class NTensor implements Tensor {
  readonly size: number;
  readonly nbytes: number;
  /** Byte address of element 0 once computed (for views: filled in from the base). */
  addr = 0;
  home: Home = Home.Pending;
  /** A view shares base's memory at byte offset `offset`. */
  base: NTensor | null = null;
  offset = 0;
  /** Allocated in the arena (created inside a scope) rather than on its own. */
  scoped = false;
  node: Node | null = null;
  /** Keeps the bytes alive: caller memory (fromBytes) or the tensor's own buffer (Heap). */
  hold: Uint8Array | null = null;

  constructor(
    readonly shape: readonly number[],
    readonly dtype: DType,
  ) {
    let n = 1;
    for (let i = 0; i < shape.length; i++) n *= shape[i]!;
    this.size = n;
    this.nbytes = n * DTYPE_BYTES[dtype];
  }

  /** The tensor that owns the memory (itself unless a view). */
  root(): NTensor {
    return this.base ?? this;
  }

  /** Native address of element 0; valid once the root is computed. */
  address(): number {
    return this.base ? this.base.addr + this.offset : this.addr;
  }
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}
