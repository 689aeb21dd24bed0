// The linear-attention ops (Gated DeltaNet) against a float64 token-by-token reference: several sequences of
// different lengths in one call, state carried from one call to the next, runs crossing chunk boundaries, and the
// chunked and recurrent forms alike.
import { describe, expect, test } from "bun:test";
import type { RecurrentBatch, StateSpec } from "../../src/backend/backend.ts";
import { RmlxError } from "../../src/errors.ts";
import { backend, randn } from "./helpers.ts";

const be = backend();
let seed = 100;
const rn = (n: number, scale: number) => randn(n, seed++, scale);
const f32 = (data: Float32Array, shape: number[]) => be.fromArray(data, shape, "f32");

const SPEC: StateSpec = { convDim: 12, kernel: 4, keyHeads: 2, valueHeads: 4, keyDim: 8, valueDim: 6 };

/** Float64 state of one sequence: conv tail [kernel-1][convDim] and S[h][valueDim][keyDim]. */
interface RefState {
  conv: number[][];
  S: number[][][];
}

const freshRef = (s: StateSpec): RefState => ({
  conv: Array.from({ length: s.kernel - 1 }, () => new Array<number>(s.convDim).fill(0)),
  S: Array.from({ length: s.valueHeads }, () => Array.from({ length: s.valueDim }, () => new Array<number>(s.keyDim).fill(0))),
});

function refConv(st: RefState, x: Float32Array, w: Float32Array, s: StateSpec, n: number): number[] {
  const C = s.convDim;
  const K = s.kernel;
  const out: number[] = [];
  const win = [...st.conv.map((r) => [...r])];
  for (let t = 0; t < n; t++) win.push(Array.from(x.subarray(t * C, (t + 1) * C)));
  for (let t = 0; t < n; t++)
    for (let c = 0; c < C; c++) {
      let a = 0;
      for (let j = 0; j < K; j++) a += w[c * K + j]! * win[t + j]![c]!;
      out.push(a);
    }
  st.conv = win.slice(win.length - (K - 1));
  return out;
}

function refDelta(st: RefState, q: Float32Array, k: Float32Array, v: Float32Array, g: Float32Array, beta: Float32Array, s: StateSpec, n: number): number[] {
  const { keyHeads: Hk, valueHeads: Hv, keyDim: Dk, valueDim: Dv } = s;
  const rep = Hv / Hk;
  const out = new Array<number>(n * Hv * Dv).fill(0);
  for (let t = 0; t < n; t++)
    for (let h = 0; h < Hv; h++) {
      const kh = Math.floor(h / rep);
      const S = st.S[h]!;
      const decay = Math.exp(g[t * Hv + h]!);
      const b = beta[t * Hv + h]!;
      for (let j = 0; j < Dv; j++) {
        const row = S[j]!;
        let kv = 0;
        for (let i = 0; i < Dk; i++) {
          row[i]! *= decay;
          kv += row[i]! * k[(t * Hk + kh) * Dk + i]!;
        }
        const u = (v[(t * Hv + h) * Dv + j]! - kv) * b;
        let o = 0;
        for (let i = 0; i < Dk; i++) {
          row[i]! += u * k[(t * Hk + kh) * Dk + i]!;
          o += row[i]! * q[(t * Hk + kh) * Dk + i]!;
        }
        out[(t * Hv + h) * Dv + j] = o;
      }
    }
  return out;
}

function l2rows(x: Float32Array, d: number, scale: number): Float32Array {
  for (let r = 0; r < x.length / d; r++) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[r * d + i]! ** 2;
    const inv = scale / Math.sqrt(ss + 1e-6);
    for (let i = 0; i < d; i++) x[r * d + i]! *= inv;
  }
  return x;
}

function maxDiff(got: Float32Array, want: number[]): number {
  let m = 0;
  for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(got[i]! - want[i]!));
  return m;
}

describe.each([
  { name: "chunked (chunk 16)", chunk: 16 },
  { name: "chunked (chunk 64)", chunk: 64 },
  { name: "recurrent", chunk: 0 },
])("gated delta rule and causal conv, $name", ({ chunk }) => {
  test("match the float64 reference over three steps of mixed lengths", () => {
    const s = SPEC;
    const pool = be.createStatePool(6, s);
    const w = rn(s.convDim * s.kernel, 0.5);
    // slot per sequence; lengths per step (the second step continues each sequence's state)
    const slotOf = [4, 0, 2, 5];
    const steps = [
      [1, 37, 70, 5],
      [1, 1, 19, 40],
      [3, 2, 0, 4],
    ];
    const refs = slotOf.map(() => freshRef(s));
    steps.forEach((lens, stepIdx) => {
      const T = lens.reduce((a, b) => a + b, 0);
      const seqStart = new Int32Array(lens.length + 1);
      lens.forEach((n, i) => (seqStart[i + 1] = seqStart[i]! + n));
      const batch: RecurrentBatch = { seqStart, slots: Int32Array.from(slotOf), fresh: Int32Array.from(lens, () => (stepIdx === 0 ? 1 : 0)) };
      const x = rn(T * s.convDim, 1);
      const q = l2rows(rn(T * s.keyHeads * s.keyDim, 1), s.keyDim, 1 / Math.sqrt(s.keyDim));
      const k = l2rows(rn(T * s.keyHeads * s.keyDim, 1), s.keyDim, 1);
      const v = rn(T * s.valueHeads * s.valueDim, 1);
      const g = Float32Array.from(rn(T * s.valueHeads, 1), (a) => -Math.log1p(Math.exp(a)) * 0.3);
      const beta = Float32Array.from(rn(T * s.valueHeads, 1), (a) => 1 / (1 + Math.exp(-a)));
      const [convOut, deltaOut] = be.scope(() => {
        const c = be.causalConv1d(f32(x, [T, s.convDim]), f32(w, [s.convDim, s.kernel, 1]), pool, batch);
        const o = be.gatedDelta(
          f32(q, [T, s.keyHeads, s.keyDim]),
          f32(k, [T, s.keyHeads, s.keyDim]),
          f32(v, [T, s.valueHeads, s.valueDim]),
          f32(g, [T, s.valueHeads]),
          f32(beta, [T, s.valueHeads]),
          pool,
          batch,
          chunk,
        );
        return [be.toFloat32(c), be.toFloat32(o)];
      });
      lens.forEach((n, i) => {
        const t0 = seqStart[i]!;
        const sl = (a: Float32Array, d: number) => a.subarray(t0 * d, (t0 + n) * d);
        const wantConv = refConv(refs[i]!, sl(x, s.convDim), w, s, n);
        expect(maxDiff(sl(convOut, s.convDim), wantConv)).toBeLessThan(1e-5);
        const hk = s.keyHeads * s.keyDim;
        const wantDelta = refDelta(refs[i]!, sl(q, hk), sl(k, hk), sl(v, s.valueHeads * s.valueDim), sl(g, s.valueHeads), sl(beta, s.valueHeads), s, n);
        expect(maxDiff(sl(deltaOut, s.valueHeads * s.valueDim), wantDelta)).toBeLessThan(2e-5);
      });
    });
    // the final state matches too (slot 4 holds sequence 0)
    const S = be.toFloat32(pool.delta);
    const per = s.valueHeads * s.valueDim * s.keyDim;
    const want = refs[0]!.S.flat(2);
    expect(maxDiff(S.subarray(4 * per, 5 * per), want)).toBeLessThan(2e-5);
    be.dispose(pool.conv);
    be.dispose(pool.delta);
  });
});

test.each([16, 64])("chunked form (chunk %d) with one key repeated, beta near 1 and no decay stays on the reference", (chunk) => {
  // Within a chunk the writes then solve a system whose matrix has ones (times beta) below the diagonal: a form
  // that sums powers of it cancels terms of order C choose C/2.
  const s = SPEC;
  const T = 64;
  const pool = be.createStatePool(1, s);
  const batch: RecurrentBatch = { seqStart: Int32Array.of(0, T), slots: Int32Array.of(0), fresh: Int32Array.of(1) };
  const key = l2rows(rn(s.keyHeads * s.keyDim, 1), s.keyDim, 1);
  const k = new Float32Array(T * key.length);
  for (let t = 0; t < T; t++) k.set(key, t * key.length);
  const q = l2rows(rn(T * s.keyHeads * s.keyDim, 1), s.keyDim, 1 / Math.sqrt(s.keyDim));
  const v = rn(T * s.valueHeads * s.valueDim, 1);
  const g = new Float32Array(T * s.valueHeads);
  const beta = new Float32Array(T * s.valueHeads).fill(0.999);
  const got = be.scope(() =>
    be.toFloat32(
      be.gatedDelta(f32(q, [T, s.keyHeads, s.keyDim]), f32(k, [T, s.keyHeads, s.keyDim]), f32(v, [T, s.valueHeads, s.valueDim]), f32(g, [T, s.valueHeads]), f32(beta, [T, s.valueHeads]), pool, batch, chunk),
    ),
  );
  const want = refDelta(freshRef(s), q, k, v, g, beta, s, T);
  expect(maxDiff(got, want)).toBeLessThan(2e-5);
  be.dispose(pool.conv);
  be.dispose(pool.delta);
});

test("a fresh sequence without tokens in a step has its slot zeroed; the others' slots are untouched", () => {
  const pool = be.createStatePool(3, SPEC);
  const { convDim, valueHeads: H, keyHeads: HK, keyDim: DK, valueDim: DV } = SPEC;
  const run = (batch: RecurrentBatch, T: number) =>
    be.scope(() => {
      be.causalConv1d(f32(rn(T * convDim, 1), [T, convDim]), f32(rn(convDim * 4, 1), [convDim, 4]), pool, batch);
      const g = f32(new Float32Array(T * H).fill(-0.1), [T, H]);
      const beta = f32(new Float32Array(T * H).fill(0.5), [T, H]);
      be.toFloat32(be.gatedDelta(f32(rn(T * HK * DK, 0.3), [T, HK, DK]), f32(rn(T * HK * DK, 0.3), [T, HK, DK]), f32(rn(T * H * DV, 1), [T, H, DV]), g, beta, pool, batch));
    });
  run({ seqStart: Int32Array.of(0, 4, 7), slots: Int32Array.of(0, 2), fresh: Int32Array.of(1, 1) }, 7);
  const before = [be.toFloat32(pool.conv), be.toFloat32(pool.delta)];
  run({ seqStart: Int32Array.of(0, 0), slots: Int32Array.of(2), fresh: Int32Array.of(1) }, 0);
  const after = [be.toFloat32(pool.conv), be.toFloat32(pool.delta)];
  const c = 3 * convDim;
  const d = H * DV * DK;
  expect(before[0]!.subarray(2 * c).some((x) => x !== 0)).toBe(true);
  expect(before[1]!.subarray(2 * d).some((x) => x !== 0)).toBe(true);
  expect(after[0]!.subarray(2 * c).every((x) => x === 0)).toBe(true);
  expect(after[1]!.subarray(2 * d).every((x) => x === 0)).toBe(true);
  expect(Array.from(after[0]!.subarray(0, c))).toEqual(Array.from(before[0]!.subarray(0, c)));
  expect(Array.from(after[1]!.subarray(0, d))).toEqual(Array.from(before[1]!.subarray(0, d)));
  be.dispose(pool.conv);
  be.dispose(pool.delta);
});

test("copyStateSlot copies a sequence's state; bad slots are named", () => {
  const pool = be.createStatePool(3, SPEC);
  const T = 3;
  const batch: RecurrentBatch = { seqStart: Int32Array.of(0, T), slots: Int32Array.of(0), fresh: Int32Array.of(1) };
  be.scope(() => be.toFloat32(be.causalConv1d(f32(rn(T * SPEC.convDim, 1), [T, SPEC.convDim]), f32(rn(SPEC.convDim * 4, 1), [SPEC.convDim, 4]), pool, batch)));
  be.copyStateSlot(pool, 0, 2);
  const conv = be.toFloat32(pool.conv);
  const per = 3 * SPEC.convDim;
  expect(Array.from(conv.subarray(2 * per, 3 * per))).toEqual(Array.from(conv.subarray(0, per)));
  expect(() => be.copyStateSlot(pool, 0, 3)).toThrow(RmlxError);
  const bad: RecurrentBatch = { seqStart: Int32Array.of(0, 1), slots: Int32Array.of(7), fresh: Int32Array.of(1) };
  expect(() => be.causalConv1d(f32(new Float32Array(SPEC.convDim), [1, SPEC.convDim]), f32(new Float32Array(SPEC.convDim * 4), [SPEC.convDim, 4]), pool, bad)).toThrow(/slot 7/);
  expect(() => be.causalConv1d(f32(new Float32Array(SPEC.convDim), [1, SPEC.convDim]), f32(new Float32Array(SPEC.convDim * 3), [SPEC.convDim, 3]), pool, batch)).toThrow(/weight \[12, 3\] must be \[12, 4\]/);
});

test("a slot's state read out as bytes and written into another slot is the same state", () => {
  const pool = be.createStatePool(3, SPEC);
  const T = 5;
  const batch: RecurrentBatch = { seqStart: Int32Array.of(0, T), slots: Int32Array.of(1), fresh: Int32Array.of(1) };
  const { convDim, valueHeads: H, keyHeads: HK, keyDim: DK, valueDim: DV } = SPEC;
  be.scope(() => {
    be.causalConv1d(f32(rn(T * convDim, 1), [T, convDim]), f32(rn(convDim * 4, 1), [convDim, 4]), pool, batch);
    const out = be.gatedDelta(f32(rn(T * HK * DK, 0.3), [T, HK, DK]), f32(rn(T * HK * DK, 0.3), [T, HK, DK]), f32(rn(T * H * DV, 1), [T, H, DV]), f32(new Float32Array(T * H).fill(-0.1), [T, H]), f32(new Float32Array(T * H).fill(0.5), [T, H]), pool, batch);
    be.toFloat32(out);
  });
  const bytes = be.stateSlotBytes(pool);
  expect(bytes).toBe(4 * (3 * convDim + H * DV * DK));
  const snap = new Uint8Array(bytes);
  be.readStateSlot(pool, 1, snap);
  be.writeStateSlot(pool, 2, snap);
  const conv = be.toFloat32(pool.conv);
  const delta = be.toFloat32(pool.delta);
  const c = 3 * convDim;
  const d = H * DV * DK;
  expect(Array.from(conv.subarray(2 * c, 3 * c))).toEqual(Array.from(conv.subarray(c, 2 * c)));
  expect(Array.from(delta.subarray(2 * d, 3 * d))).toEqual(Array.from(delta.subarray(d, 2 * d)));
  expect(delta.subarray(d, 2 * d).some((x) => x !== 0)).toBe(true);
  expect(Array.from(new Float32Array(snap.buffer, c * 4, d))).toEqual(Array.from(delta.subarray(d, 2 * d)));
  expect(() => be.readStateSlot(pool, 3, snap)).toThrow(/slot 3/);
  expect(() => be.writeStateSlot(pool, 0, snap.subarray(4))).toThrow(/bytes for a slot of/);
  be.dispose(pool.conv);
  be.dispose(pool.delta);
});
