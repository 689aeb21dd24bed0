// Recurrent-state slots for the linear-attention layers of hybrid models (Gated DeltaNet): beside the paged KV of
// the full-attention layers, each running sequence holds one slot, the same index in every such layer's state pool
// (its conv inputs and its delta-rule state, f32). A slot is taken when a sequence first runs and given back when
// it is released (finished, cancelled or preempted: a preempted sequence recomputes, so its state starts fresh or
// from a prefix-cache snapshot). Recurrent state cannot be cut back to a shorter prefix, so the prefix cache keeps
// copies of it (snapshots) at block boundaries, and a sequence that starts from a cached prefix takes its slot
// with the snapshot of that prefix's last block written in.
//
// A snapshot is one self-contained byte payload: a 16-byte header (u32 little-endian: magic "RSS1", format
// version 1, number of linear-attention layers, bytes that follow), then for each such layer in layer order its
// slot as the backend's readStateSlot lays it out: conv inputs [kernel - 1, convDim] then the delta-rule state
// [valueHeads, valueDim, keyDim], f32.
import type { Backend, RecurrentBatch, StatePool, StateSpec } from "../../backend/backend.ts";
import { RmlxError } from "../../errors.ts";
import type { LayerCacheSpec } from "../../models/model.ts";

const SNAPSHOT_MAGIC = 0x31535352;
const SNAPSHOT_VERSION = 1;
const SNAPSHOT_HEADER = 16;

/** Bytes of one sequence's state in one layer. */
function stateBytes(s: StateSpec): number {
  return 4 * (Math.max(1, s.kernel - 1) * s.convDim + s.valueHeads * s.valueDim * s.keyDim);
}

export class StateSlots<Seq extends object> {
  /** One entry per layer: a pool for linear-attention layers, null for the others. */
  readonly pools: (StatePool | null)[];
  readonly bytesPerSlot: number;
  private readonly free: number[] = [];
  private readonly bySeq = new Map<Seq, number>();

  constructor(
    private readonly backend: Backend,
    layers: readonly LayerCacheSpec[],
    readonly numSlots: number,
  ) {
    if (!Number.isInteger(numSlots) || numSlots < 1) throw new RmlxError("invalid_argument", `state slots: ${numSlots}`);
    this.pools = layers.map((l) => (l.state ? backend.createStatePool(numSlots, l.state) : null));
    this.bytesPerSlot = StateSlots.bytesPerSlot(layers);
    for (let i = numSlots - 1; i >= 0; i--) this.free.push(i);
  }

  static bytesPerSlot(layers: readonly LayerCacheSpec[]): number {
    return layers.reduce((sum, l) => sum + (l.state ? stateBytes(l.state) : 0), 0);
  }

  get numFree(): number {
    return this.free.length;
  }

  get memoryBytes(): number {
    return this.numSlots * this.bytesPerSlot;
  }

  slotOf(seq: Seq): number | undefined {
    return this.bySeq.get(seq);
  }

  /** New slots the given sequences need (those not holding one yet, each counted once). */
  needed(seqs: Iterable<Seq>): number {
    const seen = new Set<Seq>();
    for (const s of seqs) if (!this.bySeq.has(s)) seen.add(s);
    return seen.size;
  }

  /** Bytes of a snapshot payload of this model's state. */
  get snapshotBytes(): number {
    return SNAPSHOT_HEADER + this.bytesPerSlot;
  }

  /**
   * Gives seq a slot if it has none, holding `restore` (a snapshot) when given, else whatever the step's `fresh`
   * flag makes of it; RmlxError("overloaded") when every slot is held.
   */
  take(seq: Seq, restore?: Uint8Array): number {
    const have = this.bySeq.get(seq);
    if (have !== undefined) return have;
    if (restore) this.checkSnapshot(restore);
    const slot = this.free.pop();
    if (slot === undefined) {
      throw new RmlxError("overloaded", `recurrent state is full: all ${this.numSlots} sequence slots are in use`);
    }
    this.bySeq.set(seq, slot);
    if (restore) {
      let at = SNAPSHOT_HEADER;
      for (const p of this.pools) {
        if (!p) continue;
        const n = this.backend.stateSlotBytes(p);
        this.backend.writeStateSlot(p, slot, restore.subarray(at, at + n));
        at += n;
      }
    }
    return slot;
  }

  /** A snapshot payload of seq's state as of its last step (what the prefix cache keeps). */
  exportState(seq: Seq): Uint8Array {
    const slot = this.bySeq.get(seq);
    if (slot === undefined) throw new RmlxError("internal", "a snapshot of a sequence that holds no state slot");
    const out = new Uint8Array(this.snapshotBytes);
    const head = new DataView(out.buffer);
    head.setUint32(0, SNAPSHOT_MAGIC, true);
    head.setUint32(4, SNAPSHOT_VERSION, true);
    head.setUint32(8, this.pools.filter((p) => p).length, true);
    head.setUint32(12, this.bytesPerSlot, true);
    let at = SNAPSHOT_HEADER;
    for (const p of this.pools) {
      if (!p) continue;
      const n = this.backend.stateSlotBytes(p);
      this.backend.readStateSlot(p, slot, out.subarray(at, at + n));
      at += n;
    }
    return out;
  }

  private checkSnapshot(b: Uint8Array): void {
    const head = b.byteLength >= SNAPSHOT_HEADER ? new DataView(b.buffer, b.byteOffset, SNAPSHOT_HEADER) : null;
    const layers = this.pools.filter((p) => p).length;
    const ok =
      head !== null &&
      head.getUint32(0, true) === SNAPSHOT_MAGIC &&
      head.getUint32(4, true) === SNAPSHOT_VERSION &&
      head.getUint32(8, true) === layers &&
      head.getUint32(12, true) === this.bytesPerSlot &&
      b.byteLength === this.snapshotBytes;
    if (!ok) throw new RmlxError("internal", `a state snapshot that is not one of this model's (${layers} layers, ${this.bytesPerSlot} bytes)`);
  }

  release(seq: Seq): void {
    const slot = this.bySeq.get(seq);
    if (slot === undefined) return;
    this.bySeq.delete(seq);
    this.free.push(slot);
  }

  /** A slot for `to` holding a copy of `from`'s state. */
  fork(from: Seq, to: Seq): void {
    const src = this.bySeq.get(from);
    if (src === undefined) return;
    const dst = this.take(to);
    for (const p of this.pools) if (p) this.backend.copyStateSlot(p, src, dst);
  }

  /**
   * A copy of seq's state in a free slot (speculative decoding keeps it across a verification step, whose
   * rejected tokens the state cannot give back); undefined when seq has no state yet or no slot is free.
   */
  snapshot(seq: Seq): number | undefined {
    const src = this.bySeq.get(seq);
    const dst = this.free.pop();
    if (src === undefined || dst === undefined) {
      if (dst !== undefined) this.free.push(dst);
      return undefined;
    }
    for (const p of this.pools) if (p) this.backend.copyStateSlot(p, src, dst);
    return dst;
  }

  /** Puts a snapshot back as seq's state, and frees the snapshot's slot. */
  restore(seq: Seq, snapshot: number): void {
    const slot = this.bySeq.get(seq);
    if (slot === undefined) throw new RmlxError("internal", "restoring the state of a sequence that holds no slot");
    for (const p of this.pools) if (p) this.backend.copyStateSlot(p, snapshot, slot);
    this.free.push(snapshot);
  }

  /** Frees a snapshot's slot. */
  dropSnapshot(snapshot: number): void {
    this.free.push(snapshot);
  }

  /** The recurrent view of a step: each entry's slot (taken beforehand), token range and whether it starts fresh. */
  view(entries: readonly { seq: Seq; tokens: Int32Array; fresh: boolean }[]): RecurrentBatch {
    const n = entries.length;
    const seqStart = new Int32Array(n + 1);
    const slots = new Int32Array(n);
    const fresh = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      const slot = this.bySeq.get(e.seq);
      if (slot === undefined) throw new RmlxError("internal", "a step's sequence holds no state slot");
      slots[i] = slot;
      fresh[i] = e.fresh ? 1 : 0;
      seqStart[i + 1] = seqStart[i]! + e.tokens.length;
    }
    return { seqStart, slots, fresh };
  }

  dispose(): void {
    for (const p of this.pools) {
      if (!p) continue;
      this.backend.dispose(p.conv);
      this.backend.dispose(p.delta);
    }
  }
}
