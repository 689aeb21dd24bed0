// Recurrent-state slots for the linear-attention layers of hybrid models (Gated DeltaNet): beside the paged KV of
// the full-attention layers, each running sequence holds one slot, the same index in every such layer's state pool
// (its conv inputs and its delta-rule state, f32). A slot is taken when a sequence first runs and given back when
// it is released (finished, cancelled or preempted: a preempted sequence recomputes from scratch, so its state
// starts fresh). Recurrent state cannot be cut back to a shorter prefix, so hybrids do not share prefix blocks.
import type { Backend, RecurrentBatch, StatePool, StateSpec } from "../../backend/backend.ts";
import { RmlxError } from "../../errors.ts";
import type { LayerCacheSpec } from "../../models/model.ts";

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

  /** Gives seq a slot if it has none; RmlxError("overloaded") when every slot is held. */
  take(seq: Seq): number {
    const have = this.bySeq.get(seq);
    if (have !== undefined) return have;
    const slot = this.free.pop();
    if (slot === undefined) {
      throw new RmlxError("overloaded", `recurrent state is full: all ${this.numSlots} sequence slots are in use`);
    }
    this.bySeq.set(seq, slot);
    return slot;
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
