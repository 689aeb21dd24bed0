// Rope's tables: inverse frequencies per (base, dims), and the cos/sin table of a step's positions, which every
// rope call of the step with the same positions and frequencies (q and k of all layers) shares.
import type { RopeOptions } from "../backend.ts";
import type { Graph } from "./graph.ts";
import * as encode from "./oplist_gen.ts";
import { Home, NTensor } from "./tensor.ts";

const NO_INPUTS: NTensor[] = [];

function sameInts(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class RopeTables {
  private freqCache = new Map<string, Float32Array>();
  private lastFreqs: { base: number; dims: number; freqs: Float32Array } | null = null;
  private tables: { positions: Int32Array; freqs: Float32Array; scale: number; mscale: number; table: NTensor }[] = [];

  constructor(private readonly graph: Graph) {}

  /** opts.freqs, or 1 / base^(2i/dims) (checked by the caller). */
  invFreq(opts: RopeOptions): Float32Array {
    if (opts.freqs) return opts.freqs;
    const last = this.lastFreqs;
    if (last && last.base === opts.base && last.dims === opts.dims) return last.freqs;
    const key = `${opts.base}/${opts.dims}`;
    let f = this.freqCache.get(key);
    if (!f) {
      f = new Float32Array(opts.dims / 2);
      for (let i = 0; i < f.length; i++) f[i] = 1 / Math.pow(opts.base, (2 * i) / opts.dims);
      this.freqCache.set(key, f);
    }
    this.lastFreqs = { base: opts.base, dims: opts.dims, freqs: f };
    return f;
  }

  /** The [2, T, dims/2] table; it lives in its own buffer, outside the scopes, so per-layer scopes do not drop it. */
  table(positions: Int32Array, freqs: Float32Array, scale: number, mscale: number): NTensor {
    for (const e of this.tables)
      if (e.table.home !== Home.Dead && e.freqs === freqs && e.scale === scale && e.mscale === mscale && sameInts(e.positions, positions))
        return e.table;
    const T = positions.length;
    const half = freqs.length;
    const table = new NTensor([2, T, half], "f32");
    const pos = positions.slice();
    this.graph.record(
      NO_INPUTS,
      [table],
      (w, host) => {
        if (table.size === 0) return;
        encode.ropeTable(w, table.address(), host[0]!, T, half, host[1]!, scale, mscale);
      },
      [pos, freqs],
    );
    this.tables.unshift({ positions: pos, freqs, scale, mscale, table });
    if (this.tables.length > 4) this.tables.pop();
    return table;
  }
}
