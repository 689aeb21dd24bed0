// Tensor lifetimes of the native backend: what a scope creates lives in one arena and dies when the scope ends,
// except what the scope returns.
import type { DType } from "../backend.ts";
import { collectTensors } from "../args.ts";
import * as encode from "./oplist_gen.ts";
import type { Graph } from "./graph.ts";
import { Arena, type ArenaMark, heapPlace } from "./memory.ts";
import { Home, NTensor } from "./tensor.ts";

interface Mark {
  arena: ArenaMark;
  tensors: number;
  placed: number;
  /** The graph's last ticket when the scope began. */
  ticket: number;
}

export class Scopes {
  /**
   * Two arenas: a step launched without waiting (Graph.evalAsync) still reads and writes its scope's arena after
   * the scope ends, so the next outermost scope, which records the next step meanwhile, takes the other one.
   */
  private readonly arenas = [new Arena(), new Arena()];
  /** Per arena: the last program launched while it was in use, which must have run before it is used again. */
  private readonly guards = [0, 0];
  private current = 0;
  private depth = 0;
  /** Tensors created inside the open scopes, in creation order. */
  private tensors: NTensor[] = [];
  /** Arena tensors in placement (= arena) order since the outermost scope began. */
  private placed: NTensor[] = [];

  constructor(private readonly graph: Graph) {}

  newTensor(shape: readonly number[], dtype: DType): NTensor {
    const t = new NTensor(shape, dtype);
    if (this.depth > 0) {
      t.scoped = true;
      this.tensors.push(t);
    }
    return t;
  }

  /** Gives a root tensor its memory now: the arena inside a scope, a buffer of its own outside. */
  place(t: NTensor): void {
    if (t.scoped) {
      t.addr = this.arena.alloc(t.nbytes);
      t.home = Home.Arena;
      this.placed.push(t);
    } else {
      heapPlace(t);
    }
  }

  private get arena(): Arena {
    return this.arenas[this.current]!;
  }

  scope<T>(fn: () => T): T {
    const mark: Mark = { arena: this.arena.mark(), tensors: this.tensors.length, placed: this.placed.length, ticket: this.graph.lastTicket };
    this.depth++;
    let result: T;
    try {
      result = fn();
    } catch (err) {
      this.depth--;
      if (this.depth === 0) this.endScope([], mark);
      else this.endInner([], mark);
      throw err;
    }
    this.depth--;
    if (this.depth === 0) this.endScope(collectTensors(result, NTensor), mark);
    else this.endInner(collectTensors(result, NTensor), mark);
    return result;
  }

  /**
   * Ends a nested scope: computes what it returns, frees what it created, and packs the arena memory that must
   * survive (its results, and outer tensors computed meanwhile) down to where the scope began, so that a model
   * running each layer in its own scope holds about one layer's temporaries at a time.
   */
  private endInner(escapes: NTensor[], mark: Mark): void {
    const inner = this.tensors;
    const keep = new Set<NTensor>();
    for (const t of escapes) {
      if (t.dead()) continue;
      keep.add(t);
      keep.add(t.root());
    }
    let failed = true;
    try {
      if (keep.size > 0 || this.graph.hasEffects) this.graph.eval([...keep].map((t) => t.root()));
      // A step launched in this scope still uses the arena memory released below.
      if (this.graph.lastTicket > mark.ticket) this.graph.wait(this.graph.lastTicket);
      failed = false;
    } finally {
      const kept: NTensor[] = [];
      for (let i = mark.tensors; i < inner.length; i++) {
        const t = inner[i]!;
        if (!failed && keep.has(t)) kept.push(t);
        else {
          t.home = Home.Dead;
          t.node = null;
          t.addr = 0;
        }
      }
      inner.length = mark.tensors;
      for (const t of kept) inner.push(t);
      this.graph.dropDeadEffects();
      // Placement order is arena order, and packing the survivors from the mark never moves one past its old
      // place, so moving them in order (memmove) cannot clobber a survivor not yet moved.
      const movers: NTensor[] = [];
      for (let i = mark.placed; i < this.placed.length; i++) {
        const t = this.placed[i]!;
        if (t.home === Home.Arena && !t.base) movers.push(t);
      }
      this.placed.length = mark.placed;
      this.arena.release(mark.arena);
      this.graph.exec((w) => {
        for (const t of movers) {
          const addr = this.arena.alloc(t.nbytes);
          this.placed.push(t);
          if (addr === t.addr) continue;
          encode.memcpy(w, addr, t.addr, t.nbytes);
          t.addr = addr;
        }
      }, "scope");
    }
  }

  /** Runs what is still pending that must survive, moves returned tensors out of the arena, frees the rest. */
  private endScope(escapes: NTensor[], mark: Mark): void {
    const keep = new Set<NTensor>();
    const copies: NTensor[] = [];
    try {
      for (const t of escapes) {
        if (keep.has(t) || t.dead()) continue;
        keep.add(t);
        const r = t.root();
        if (!r.scoped) continue;
        if (t === r && r.home === Home.Pending) r.scoped = false;
        else copies.push(t);
      }
      this.graph.eval([...keep].map((t) => t.root()));
      if (copies.length > 0)
        this.graph.exec((w) => {
          for (const t of copies) {
            const src = t.address();
            t.base = null;
            t.offset = 0;
            t.scoped = false;
            heapPlace(t);
            encode.memcpy(w, t.addr, src, t.nbytes);
          }
        }, "scope");
    } finally {
      for (const t of this.tensors) {
        if (keep.has(t)) continue;
        t.home = Home.Dead;
        t.node = null;
        t.addr = 0;
      }
      this.tensors = [];
      this.placed = [];
      this.graph.dropDeadEffects();
      this.arena.reset();
      if (this.graph.lastTicket > mark.ticket) {
        this.guards[this.current] = this.graph.lastTicket;
        this.current ^= 1;
        this.graph.wait(this.guards[this.current]!);
      }
    }
  }

  /** Bytes held by the arenas. */
  get arenaBytes(): number {
    return this.arenas[0]!.capacity + this.arenas[1]!.capacity;
  }
}
