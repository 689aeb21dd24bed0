// The mlx backend's tensor: one mlx_array handle plus the shape and dtype read back from MLX when it was made.
import type { DType, Tensor } from "../backend.ts";

export class MTensor implements Tensor {
  /** The mlx_array handle; 0 once freed. Pools swap it for the result of each write. */
  h: number;
  shape: readonly number[];
  dtype: DType;
  /** Bytes MLX reads without a copy (fromBytes): kept alive as long as the tensor. */
  hold: Uint8Array | null = null;
  /** Freed when the scope that made it ends. */
  scoped = false;
  /** Owned by the caller until dispose() (weights, KV pools). */
  persistent = false;
  /** Host copy of small i32 inputs (ids), so that ops can check ranges MLX does not check. */
  host: Int32Array | null = null;
  /** Set on a result whose inputs were found bad: using or reading it throws this (errors surface at eval). */
  error: string | null = null;

  constructor(h: number, shape: readonly number[], dtype: DType) {
    this.h = h;
    this.shape = shape;
    this.dtype = dtype;
  }

  get size(): number {
    let n = 1;
    for (const d of this.shape) n *= d;
    return n;
  }
}
