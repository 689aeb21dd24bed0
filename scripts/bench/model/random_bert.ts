// A random-weight BERT sentence-transformers directory (BertModel, mean pooling, Normalize) for the embedding
// benchmark. Weights are f32 as published BERT checkpoints are, with random magnitudes of a sane range so that
// activations stay finite; the kernels do not look at the values, so random weights cost what trained ones cost.
// The tokenizer is the tiny WordPiece one of the test fixtures: the benchmark sends token ids.
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SafetensorsWriter, type WriteEntry } from "../../../src/io/safetensors_write.ts";

const FIXTURE = join(import.meta.dir, "../../../test/fixtures/embeddings/bert_mean");

export interface BertShape {
  hiddenSize: number;
  layers: number;
  heads: number;
  intermediateSize: number;
  vocab: number;
  maxPositions: number;
}

/** bert-base-uncased's published shape. */
export const BERT_BASE: BertShape = { hiddenSize: 768, layers: 12, heads: 12, intermediateSize: 3072, vocab: 30522, maxPositions: 512 };

/** f32 values of magnitude 2^-12 .. 2^-5 with random signs (near1: just above 1, for LayerNorm weights). */
function f32(state: { x: number }, n: number, near1 = false): Uint8Array {
  const out = new Float32Array(n);
  let x = state.x;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const r = x >>> 0;
    out[i] = near1 ? 1 + (r & 0xff) / 4096 : (r & 1 ? -1 : 1) * 2 ** -(5 + ((r >>> 1) % 8)) * (1 + ((r >>> 4) & 0xff) / 256);
  }
  state.x = x >>> 0 || 1;
  return new Uint8Array(out.buffer);
}

/** config.json, model.safetensors, the sentence-transformers files and a tokenizer into dir; returns the weight bytes. */
export function writeRandomBert(dir: string, shape: BertShape, seed = 0x9e3779b9): number {
  mkdirSync(dir, { recursive: true });
  const state = { x: seed };
  const tensors: { entry: WriteEntry; make: () => Uint8Array }[] = [];
  const add = (name: string, dims: number[], near1 = false) =>
    tensors.push({ entry: { name, dtype: "F32", shape: dims }, make: () => f32(state, dims.reduce((a, b) => a * b, 1), near1) });
  const H = shape.hiddenSize;
  const linear = (p: string, out: number, inp: number) => {
    add(`${p}.weight`, [out, inp]);
    add(`${p}.bias`, [out]);
  };
  const layerNorm = (p: string) => {
    add(`${p}.weight`, [H], true);
    add(`${p}.bias`, [H]);
  };
  add("embeddings.word_embeddings.weight", [shape.vocab, H]);
  add("embeddings.position_embeddings.weight", [shape.maxPositions, H]);
  add("embeddings.token_type_embeddings.weight", [2, H]);
  layerNorm("embeddings.LayerNorm");
  for (let i = 0; i < shape.layers; i++) {
    const p = `encoder.layer.${i}`;
    linear(`${p}.attention.self.query`, H, H);
    linear(`${p}.attention.self.key`, H, H);
    linear(`${p}.attention.self.value`, H, H);
    linear(`${p}.attention.output.dense`, H, H);
    layerNorm(`${p}.attention.output.LayerNorm`);
    linear(`${p}.intermediate.dense`, shape.intermediateSize, H);
    linear(`${p}.output.dense`, H, shape.intermediateSize);
    layerNorm(`${p}.output.LayerNorm`);
  }
  const writer = SafetensorsWriter.create(join(dir, "model.safetensors"), tensors.map((t) => t.entry));
  let bytes = 0;
  try {
    for (const t of tensors) {
      const data = t.make();
      writer.write(t.entry.name, data);
      bytes += data.byteLength;
    }
    writer.close();
  } catch (err) {
    writer.abort();
    throw err;
  }
  const config = {
    architectures: ["BertModel"],
    model_type: "bert",
    hidden_size: H,
    num_hidden_layers: shape.layers,
    num_attention_heads: shape.heads,
    intermediate_size: shape.intermediateSize,
    vocab_size: shape.vocab,
    max_position_embeddings: shape.maxPositions,
    type_vocab_size: 2,
    hidden_act: "gelu",
    layer_norm_eps: 1e-12,
    pad_token_id: 0,
    position_embedding_type: "absolute",
  };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
  writeSentenceTransformers(dir, H, "mean");
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(FIXTURE, f), join(dir, f));
  return bytes;
}

/** modules.json (Transformer, Pooling, Normalize), 1_Pooling/config.json and 2_Normalize/ into an encoder's directory. */
export function writeSentenceTransformers(dir: string, dim: number, pooling: "mean" | "lasttoken" | "cls"): void {
  mkdirSync(join(dir, "1_Pooling"), { recursive: true });
  mkdirSync(join(dir, "2_Normalize"), { recursive: true });
  const modules = [
    { idx: 0, name: "0", path: "", type: "sentence_transformers.models.Transformer" },
    { idx: 1, name: "1", path: "1_Pooling", type: "sentence_transformers.models.Pooling" },
    { idx: 2, name: "2", path: "2_Normalize", type: "sentence_transformers.models.Normalize" },
  ];
  writeFileSync(join(dir, "modules.json"), JSON.stringify(modules, null, 2));
  writeFileSync(join(dir, "1_Pooling", "config.json"), JSON.stringify({ embedding_dimension: dim, pooling_mode: pooling, include_prompt: true }, null, 2));
  writeFileSync(join(dir, "2_Normalize", "config.json"), "{}");
}
