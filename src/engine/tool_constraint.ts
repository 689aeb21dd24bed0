// tool_choice "required" or a named tool: the output is forced to be exactly one call in the model's own format.
// The format's fixed text around the call (Hermes' <tool_call> tags) is forced token by token, and the call's JSON
// body goes through the JSON-schema constraint with a schema that admits only the offered tools' names, each
// with its own parameters; then the model's end-of-sequence token is the only choice left.
import { RmlxError } from "../errors.ts";
import type { ConstraintVocab } from "./json_constraint.ts";
import { JsonConstraint } from "./json_constraint.ts";
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
