// A loaded model with its tokenizer and chat template: what the CLI's generate and chat need.
import { getBackend } from "../backend/index.ts";
import type { Backend } from "../backend/backend.ts";
import { RmlxError } from "../errors.ts";
import { openModelDir, type ModelDir } from "../io/model_dir.ts";
import type { Model } from "../models/model.ts";
import { loadModel } from "../models/registry.ts";
import { ChatTemplate } from "../text/chat_template.ts";
import { Tokenizer } from "../text/tokenizer.ts";

export interface Session {
  md: ModelDir;
  model: Model;
  tokenizer: Tokenizer;
  template?: ChatTemplate;
  /** EOS ids of the model's configs and its tokenizer. */
  stopTokenIds: number[];
}

export function loadSession(dir: string, backend: Backend = getBackend()): Session {
  const md = openModelDir(dir);
  if (!md.tokenizerJson) throw new RmlxError("bad_model", `${dir}: no tokenizer.json`);
  const tokenizer = Tokenizer.fromModelDir(dir);
  const model = loadModel(backend, md);
  const template = ChatTemplate.fromModelDir(dir, md.tokenizerConfig ?? {});
  const stopTokenIds = [...new Set([...md.config.eosTokenIds, ...tokenizer.eosTokenIds])];
  const s: Session = { md, model, tokenizer, stopTokenIds };
  if (template) s.template = template;
  return s;
}
