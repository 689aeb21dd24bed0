// The lazy graph of the native backend: ops record nodes; eval orders the nodes its results need, gives their
// outputs memory, encodes them as one program and runs it with one rmlx_exec call.
import { ptr } from "bun:ffi";
import { fmt, invalid } from "../args.ts";
import { check, native } from "./lib.ts";
import { ProgramWriter } from "./program.ts";
import { Home, type NTensor } from "./tensor.ts";

export type HostArray = Int32Array | Float32Array | Float64Array | Uint8Array;

/** Writes a node's records; host[i] is the native address of node.host[i]. */
export type Emit = (w: ProgramWriter, host: readonly number[]) => void;

const NO_ADDRS: number[] = [];
const NO_INPUTS: NTensor[] = [];
const NO_NODES: Node[] = [];
const NO_HOST: HostArray[] = [];
// Host arrays are copies owned by their node, alive until the program has run; the collector does not move them.
const hostPtr = (h: HostArray): number => (h.length ? ptr(h) : 0);

export class Node {
  /** Eval pass that last visited this node (for the topological walk). */
  mark = 0;
  done = false;
  /** The order of recording, which the model's code gave: a topological order of its own (see run). */
  seq = 0;
  constructor(
    public inputs: NTensor[],
    public outputs: NTensor[],
    public emit: Emit,
    /** Host arrays copied at record time; the kernels read them in place. */
    public host: HostArray[] = NO_HOST,
    /** Nodes that must run first without being data inputs (KV pool writes before reads). */
    public deps: Node[] = NO_NODES,
  ) {}
}

/** Memory written in place by nodes with no outputs (a KV pool): its last write and the reads recorded since. */
export interface Shared {
  lastWrite: Node | null;
  readers: Node[];
}

/** A launched program and what it reads and writes that the collector must not free before it has run. */
interface Launch {
  ticket: number;
  keep: unknown[];
}

export class Graph {
  private readonly prog = new ProgramWriter();
  /** Recorded writes to shared memory, run by the next eval whatever it asks for. */
  private effects: Node[] = [];
  private pass = 0;
  private recorded = 0;
  /** Programs launched (evalAsync) and not yet waited for, oldest first. */
  private launches: Launch[] = [];
  /** The last ticket given out, and the last one known to have run. */
  lastTicket = 0;
  private settled = 0;
  private readonly ticketOut = new BigInt64Array(1);

  /** place gives a root tensor about to be computed its memory. */
  constructor(private readonly place: (t: NTensor) => void) {}

  record(inputs: NTensor[], outputs: NTensor[], emit: Emit, host?: HostArray[], deps?: Node[]): Node {
    const n = new Node(inputs, outputs, emit, host, deps);
    n.seq = ++this.recorded;
    for (const o of outputs) o.node = n;
    return n;
  }

  /** Records a write to shared memory, ordered after its earlier writes and reads. */
  write(s: Shared, inputs: NTensor[], emit: Emit, host?: HostArray[]): void {
    const deps: Node[] = [];
    if (s.lastWrite && !s.lastWrite.done) deps.push(s.lastWrite);
    for (const r of s.readers) if (!r.done) deps.push(r);
    const n = this.record(inputs, [], emit, host, deps);
    s.lastWrite = n;
    s.readers = [];
    this.effects.push(n);
  }

  /**
   * Records an op that reads and writes shared memory in place and also has outputs (a recurrent state update):
   * ordered like a write, and run by the next eval whether or not its outputs are asked for.
   */
  update(s: Shared, inputs: NTensor[], outputs: NTensor[], emit: Emit, host: HostArray[]): void {
    const deps: Node[] = [];
    if (s.lastWrite && !s.lastWrite.done) deps.push(s.lastWrite);
    for (const r of s.readers) if (!r.done) deps.push(r);
    const n = this.record(inputs, outputs, emit, host, deps);
    s.lastWrite = n;
    s.readers = [];
    this.effects.push(n);
  }

  /** Records a read of shared memory, ordered after its last write. */
  read(s: Shared, inputs: NTensor[], outputs: NTensor[], emit: Emit, host: HostArray[]): void {
    const deps = s.lastWrite && !s.lastWrite.done ? [s.lastWrite] : NO_NODES;
    s.readers.push(this.record(inputs, outputs, emit, host, deps));
    if (s.readers.length > 64) s.readers = s.readers.filter((r) => !r.done);
  }

  /** Whether anything is recorded that the next eval must run even if asked for nothing. */
  get hasEffects(): boolean {
    return this.effects.length > 0;
  }

  /**
   * Computes the given root tensors and every recorded write; when they were launched, waits for their programs
   * (with no roots, for every launched program: a barrier before the host reads or writes shared memory).
   */
  eval(roots: NTensor[]): void {
    const nodes: Node[] = [];
    for (const t of roots) if (t.node && !t.node.done) nodes.push(t.node);
    for (const e of this.effects) if (!e.done) nodes.push(e);
    if (nodes.length > 0) {
      this.run(nodes, false);
      this.effects = this.effects.filter((e) => !e.done);
    }
    if (roots.length === 0) this.wait(this.lastTicket);
    else for (const t of roots) if (t.ticket > this.settled) this.wait(t.ticket);
  }

  /**
   * Starts computing the given roots and every recorded write without waiting (rmlx_exec_async), so that the host
   * can record the next step meanwhile. Their outputs must have memory that outlives the arena's next reuse (the
   * caller places them); reads of them wait for the program (eval).
   */
  evalAsync(roots: NTensor[]): void {
    const nodes: Node[] = [];
    for (const t of roots) if (t.node && !t.node.done) nodes.push(t.node);
    for (const e of this.effects) if (!e.done) nodes.push(e);
    if (nodes.length === 0) return;
    this.run(nodes, true);
    this.effects = this.effects.filter((e) => !e.done);
  }

  /** Waits for the launched programs up to ticket, and reports the first failure among them. */
  wait(ticket: number): void {
    if (ticket <= this.settled) return;
    const status = native().rmlx_exec_wait(ticket);
    this.settled = ticket;
    while (this.launches.length > 0 && this.launches[0]!.ticket <= ticket) this.launches.shift();
    if (status !== 0) check(status, "eval");
  }

  /** Milliseconds the native library has spent running programs (launched ones included). */
  get execMs(): number {
    return native().rmlx_exec_seconds() * 1000;
  }

  /** Forgets writes that ran or whose inputs are gone (their scope ended). */
  dropDeadEffects(): void {
    this.effects = this.effects.filter((e) => !e.done && e.inputs.every((i) => i.root().home !== Home.Dead));
  }

  private run(roots: Node[], launch: boolean): void {
    const pass = ++this.pass;
    const order: Node[] = [];
    for (const r of roots) if (r.mark !== pass && !r.done) this.collect(r, pass, order);
    // Run in the order the ops were recorded (inputs and writes to shared memory always come first), not the
    // walk's: the walk puts a layer's k and v projections after q's norm and rope, and the executor runs products
    // over the same x as one when their records are next to each other (native/cpu/exec.cpp).
    order.sort((a, b) => a.seq - b.seq);

    for (let i = 0; i < order.length; i++) {
      const outs = order[i]!.outputs;
      for (let j = 0; j < outs.length; j++) if (outs[j]!.home === Home.Pending) this.place(outs[j]!);
    }

    const w = this.prog;
    w.reset();
    for (let i = 0; i < order.length; i++) {
      const n = order[i]!;
      n.emit(w, n.host.length === 0 ? NO_ADDRS : n.host.map(hostPtr));
    }
    if (w.len > 0 && launch) {
      // The program, its host arrays and every buffer it reads or writes stay referenced until it has run.
      const buf = w.buf.slice(0, w.len);
      const keep: unknown[] = [buf];
      for (const n of order) {
        keep.push(n.host);
        for (const t of n.inputs) keep.push(t.root().hold);
        for (const t of n.outputs) keep.push(t.root().hold);
      }
      check(native().rmlx_exec_async(buf, w.len, this.ticketOut), "evalAsync");
      const ticket = Number(this.ticketOut[0]);
      this.lastTicket = ticket;
      this.launches.push({ ticket, keep });
      for (const n of order) for (const o of n.outputs) o.root().ticket = ticket;
    } else if (w.len > 0) {
      const status = this.execAfterLaunches(w);
      if (status !== 0) {
        // A failed program is dropped whole (its results become unusable) so that it cannot fail every later eval.
        for (const n of order) {
          n.done = true;
          for (const o of n.outputs) {
            o.hold = null;
            o.home = Home.Dead;
            o.addr = 0;
            o.node = null;
          }
        }
        this.effects = this.effects.filter((e) => !e.done);
        check(status, "eval");
      }
    }
    for (let i = 0; i < order.length; i++) {
      const n = order[i]!;
      n.done = true;
      for (let j = 0; j < n.outputs.length; j++) n.outputs[j]!.node = null;
      n.inputs = NO_INPUTS;
      n.deps = NO_NODES;
      n.host = NO_HOST;
    }
  }

  /** Appends to order the nodes start needs that are not done, inputs first (iterative: graphs can be deep). */
  private collect(start: Node, pass: number, order: Node[]): void {
    const stack: Node[] = [start];
    const pos: number[] = [0];
    start.mark = pass;
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      let i = pos[pos.length - 1]!;
      const nIn = top.inputs.length;
      const total = nIn + top.deps.length;
      let next: Node | null = null;
      while (i < total) {
        let c: Node | null;
        if (i < nIn) {
          const r = top.inputs[i]!.root();
          if (r.home === Home.Dead) invalid(`eval: an input ${fmt(r.shape)} is gone (its scope ended)`);
          c = r.node;
        } else {
          c = top.deps[i - nIn]!;
          // A read recorded in a scope that ended unevaluated never happens: nothing to wait for.
          if (c.outputs.length > 0 && c.outputs[0]!.home === Home.Dead) c = null;
        }
        i++;
        if (c && !c.done && c.mark !== pass) {
          next = c;
          break;
        }
      }
      pos[pos.length - 1] = i;
      if (next) {
        next.mark = pass;
        stack.push(next);
        pos.push(0);
      } else {
        stack.pop();
        pos.pop();
        order.push(top);
      }
    }
  }

  /** Runs a program written outside the graph (memory moves), after every launched one. */
  exec(write: (w: ProgramWriter) => void, what: string): void {
    const w = this.prog;
    w.reset();
    write(w);
    if (w.len > 0) check(this.execAfterLaunches(w), what);
  }

  /** rmlx_exec, which runs every launched program first: none is pending afterwards. */
  private execAfterLaunches(w: ProgramWriter): number {
    const status = native().rmlx_exec(w.buf, w.len);
    this.settled = this.lastTicket;
    this.launches = [];
    return status;
  }
}
