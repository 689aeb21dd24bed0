// The native backend's tensor: shape, dtype, where its bytes live, and the recorded node that computes it.
import { DTYPE_BYTES, type DType, type Tensor } from "../backend.ts";
import type { Node } from "./graph.ts";

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
  /** The launched program (Graph.evalAsync) that computes it, until read: its bytes are there once it has run. */
  ticket = 0;

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

  /** Whether its memory is freed (a view dies with its base). */
  dead(): boolean {
    return this.home === Home.Dead || (this.base !== null && this.base.home === Home.Dead);
  }
}
