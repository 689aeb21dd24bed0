// tool_choice "required" or a named tool: the output is forced to be exactly one call in the model's own format.
// The format's fixed text around the call (Hermes' <tool_call> tags) is forced token by token, and the call's JSON
// body goes through the JSON-schema constraint with a schema that admits only the offered tools' names, each
// with its own parameters; then the model's end-of-sequence token is the only choice left.
import { RmlxError } from "../errors.ts";
import type { ConstraintVocab } from "./json_constraint.ts";
import { JsonConstraint } from "./json_constraint.ts";
import { canEnd, initialState, stepByte, type GrammarState } from "./json_grammar.ts";
import { compileSchema, type SchemaNode } from "./json_schema.ts";
import type { LogitsProcessor } from "./logits_processor.ts";
import type { ToolSpec } from "./types.ts";

/** The JSON texts a call may be, for one tool-call convention: `argsKey` is where the arguments go. */
export function toolCallSchema(tools: readonly ToolSpec[], argsKey: "arguments" | "parameters"): Record<string, unknown> {
  if (tools.length === 0) throw new RmlxError("invalid_argument", "a required tool call needs tools");
  return {
    anyOf: tools.map((t) => ({
      type: "object",
      properties: { name: { const: t.function.name }, [argsKey]: t.function.parameters ?? { type: "object" } },
      required: ["name", argsKey],
    })),
  };
}

type Phase = "prefix" | "json" | "suffix" | "end";

export class ForcedToolCall implements LogitsProcessor {
  private phase: Phase;
  private pos = 0;
  private readonly json: JsonConstraint;
  private readonly eos: readonly number[];

  constructor(
    schema: Record<string, unknown>,
    vocab: ConstraintVocab,
    /** Token ids forced before the JSON body, and after it. */
    private readonly prefix: readonly number[],
    private readonly suffix: readonly number[],
  ) {
    this.json = new JsonConstraint(schema, vocab);
    this.phase = prefix.length > 0 ? "prefix" : "json";
    this.eos = vocab.eos;
  }

  apply(logits: Float32Array): void {
    if (this.phase === "json" && this.json.complete) {
      this.phase = this.suffix.length > 0 ? "suffix" : "end";
      this.pos = 0;
    }
    if (this.phase === "json") return this.json.apply(logits);
    const allowed = this.phase === "end" ? this.eos : [(this.phase === "prefix" ? this.prefix : this.suffix)[this.pos]!];
    const keep = allowed.map((id) => logits[id]!);
    logits.fill(-Infinity);
    // Forced tokens keep a finite logit whatever the model thought of them.
    allowed.forEach((id, i) => (logits[id] = Number.isFinite(keep[i]!) ? keep[i]! : 0));
  }

  accept(tokenId: number): boolean {
    switch (this.phase) {
      case "json":
        return this.json.accept(tokenId);
      case "end":
        return this.eos.includes(tokenId);
      case "prefix":
      case "suffix": {
        const seq = this.phase === "prefix" ? this.prefix : this.suffix;
        if (tokenId !== seq[this.pos]) return false;
        if (++this.pos === seq.length) {
          this.phase = this.phase === "prefix" ? "json" : "end";
          this.pos = 0;
        }
        return true;
      }
    }
  }
}

// Gemma's pythonic convention: the reply is `[name(key=value, ...)]`. There is no tag to force, so the whole call
// is one byte-level grammar: "[", a declared tool's name, "(", keyword arguments whose names are the tool's
// parameters (each at most once, the required ones before ")"), each value a JSON text that follows the
// parameter's schema (JSON literals are Python literals too, and the pythonic parser reads true/false/null), then
// ")]" and the end. Inside a value the JSON constraint's own mask is used, so long string arguments keep its
// fast path; elsewhere the vocabulary is walked in byte order, sharing the steps of common prefixes.

interface PyTool {
  name: string;
  /** Parameter names, or null when the tool declares none (then any identifier is a name). */
  params: readonly string[] | null;
  required: readonly string[];
  schemas: Map<string, SchemaNode>;
  raw: Record<string, unknown>;
}

type PyState =
  | { k: "open" }
  | { k: "name"; buf: string }
  | { k: "key"; tool: PyTool; used: readonly string[]; buf: string; first: boolean }
  | { k: "value"; tool: PyTool; used: readonly string[]; json: GrammarState }
  | { k: "after"; tool: PyTool; used: readonly string[] }
  | { k: "sep"; tool: PyTool; used: readonly string[] }
  | { k: "close" }
  | { k: "done" };

const isIdentByte = (b: number, first: boolean) =>
  (b >= 0x61 && b <= 0x7a) || (b >= 0x41 && b <= 0x5a) || b === 0x5f || (!first && b >= 0x30 && b <= 0x39);

const PY_NAME = /^[A-Za-z_][\w.]*$/;
const PY_PARAM = /^[A-Za-z_]\w*$/;

/** A tool as a call of this convention, or null when the call could not be written (its name, or a required
 * parameter's, is not a Python identifier); parameters with other names are left out. */
function pyTool(t: ToolSpec): PyTool | null {
  const p = t.function.parameters;
  const props = p && typeof p.properties === "object" && p.properties !== null ? (p.properties as Record<string, unknown>) : null;
  const required = Array.isArray(p?.required) ? (p.required as unknown[]).filter((r): r is string => typeof r === "string") : [];
  if (!PY_NAME.test(t.function.name) || !required.every((r) => PY_PARAM.test(r))) return null;
  const params = props ? Object.keys(props).filter((k) => PY_PARAM.test(k)) : null;
  return { name: t.function.name, params, required, schemas: new Map(), raw: props ?? {} };
}

function paramSchema(tool: PyTool, key: string): SchemaNode {
  let s = tool.schemas.get(key);
  if (!s) {
    s = compileSchema(tool.raw[key] ?? {});
    tool.schemas.set(key, s);
  }
  return s;
}

function moreParams(tool: PyTool, used: readonly string[]): boolean {
  return tool.params === null || tool.params.some((p) => !used.includes(p));
}

function pyStep(st: PyState, b: number, tools: readonly PyTool[]): PyState | null {
  const c = String.fromCharCode(b);
  switch (st.k) {
    case "open":
      return b === 0x5b ? { k: "name", buf: "" } : null;
    case "name": {
      if (b === 0x28) {
        const tool = tools.find((t) => t.name === st.buf);
        return tool ? { k: "key", tool, used: [], buf: "", first: true } : null;
      }
      const buf = st.buf + c;
      return b < 0x80 && tools.some((t) => t.name.startsWith(buf)) ? { k: "name", buf } : null;
    }
    case "key": {
      const { tool, used } = st;
      if (b === 0x3d) {
        const known = tool.params === null ? st.buf.length > 0 : tool.params.includes(st.buf);
        return known && !used.includes(st.buf) ? { k: "value", tool, used: [...used, st.buf], json: initialState(paramSchema(tool, st.buf)) } : null;
      }
      if (b === 0x29 && st.first && st.buf === "") return tool.required.length === 0 ? { k: "close" } : null;
      if (!isIdentByte(b, st.buf === "")) return null;
      const buf = st.buf + c;
      const fits = tool.params === null || tool.params.some((p) => p.startsWith(buf) && !used.includes(p));
      return fits ? { ...st, buf } : null;
    }
    case "value": {
      const json = stepByte(st.json, b);
      if (json.length > 0) return { ...st, json };
      return canEnd(st.json) ? pyStep({ k: "after", tool: st.tool, used: st.used }, b, tools) : null;
    }
    case "after":
      if (b === 0x2c) return moreParams(st.tool, st.used) ? { k: "sep", tool: st.tool, used: st.used } : null;
      if (b === 0x29) return st.tool.required.every((r) => st.used.includes(r)) ? { k: "close" } : null;
      return null;
    case "sep":
      if (b === 0x20) return { k: "key", tool: st.tool, used: st.used, buf: "", first: false };
      return pyStep({ k: "key", tool: st.tool, used: st.used, buf: "", first: false }, b, tools);
    case "close":
      return b === 0x5d ? { k: "done" } : null;
    case "done":
      return null;
  }
}

export class ForcedPythonicCall implements LogitsProcessor {
  private state: PyState = { k: "open" };
  private readonly tools: PyTool[];
  private readonly mask: Uint8Array;

  constructor(
    tools: readonly ToolSpec[],
    private readonly vocab: ConstraintVocab,
  ) {
    this.tools = tools.map(pyTool).filter((t): t is PyTool => t !== null);
    if (this.tools.length === 0) {
      throw new RmlxError("invalid_argument", "a required tool call needs a tool whose name and required parameters are identifiers in this model's call format");
    }
    this.mask = new Uint8Array(vocab.size);
  }

  apply(logits: Float32Array): void {
    const mask = this.mask;
    const st = this.state;
    mask.fill(0);
    if (st.k === "done") for (const e of this.vocab.eos) mask[e] = 1;
    else if (st.k === "value") {
      this.vocab.fillMask(st.json, mask);
      for (const e of this.vocab.eos) mask[e] = 0;
      if (canEnd(st.json)) this.walk({ k: "after", tool: st.tool, used: st.used });
    } else this.walk(st);
    for (let i = 0; i < logits.length; i++) if (i >= mask.length || mask[i] === 0) logits[i] = -Infinity;
  }

  /** Marks every token whose bytes the call grammar accepts from `start`. */
  private walk(start: PyState): void {
    this.vocab.all.walk(start, (st, b) => pyStep(st, b, this.tools), this.vocab.bytes, this.mask);
  }

  accept(tokenId: number): boolean {
    if (this.vocab.eos.includes(tokenId)) return this.state.k === "done";
    if (this.vocab.special.has(tokenId)) return false;
    const { blob, offsets } = this.vocab.bytes;
    let st: PyState | null = this.state;
    for (let k = offsets[tokenId]!; k < offsets[tokenId + 1]! && st; k++) st = pyStep(st, blob[k]!, this.tools);
    if (!st) return false;
    this.state = st;
    return true;
  }
}
