import { existsSync, readdirSync, statSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { RmlxError } from "../errors.ts";
import type { LoadedModelInfo } from "../engine/types.ts";
import type { EngineClient } from "./engine_client.ts";
import { isEmbeddingDir } from "../io/sentence_transformers.ts";
import { HttpError } from "./errors.ts";

export interface ModelEntry {
  name: string;
  dir: string;
  state: "unloaded" | "loading" | "loaded";
  contextLength: number;
  info?: LoadedModelInfo;
  /** Requests using the model right now; it is never unloaded while this is above zero. */
  active: number;
  lastUsed: number;
  loading?: Promise<void>;
  createdS: number;
  /** A sentence-transformers directory: it answers /v1/embeddings, and only that. */
  embedding: boolean;
}

/** What a request wants of a model: text generation, embeddings, or either (tokenize, detokenize). */
export type ModelUse = "generate" | "embed" | "any";

function isModelDir(dir: string): boolean {
  return existsSync(join(dir, "config.json"));
}

/**
 * Turns --model arguments into named model directories: a model directory is served under its basename, or under
 * the alias given in the same place (the i-th alias names the i-th --model, which must then be one model); a
 * directory without config.json is a folder of model directories, each served under its own name.
 */
export function discoverModels(paths: string[], aliases: readonly string[] = []): Map<string, string> {
  if (aliases.length > paths.length) {
    throw new RmlxError("invalid_argument", `--alias: ${aliases.length} aliases for ${paths.length} --model arguments; give at most one per --model, in the same order`);
  }
  const found = new Map<string, string>();
  const add = (dir: string, name = basename(dir)) => {
    const prev = found.get(name);
    if (prev && prev !== dir) throw new RmlxError("invalid_argument", `two models are named '${name}': ${prev} and ${dir}`);
    found.set(name, dir);
  };
  paths.forEach((p, i) => {
    const alias = aliases[i];
    if (alias !== undefined && alias.trim() === "") throw new RmlxError("invalid_argument", "--alias: a name must not be empty");
    const dir = resolve(p);
    if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new RmlxError("invalid_argument", `model directory not found: ${p}`);
    if (isModelDir(dir)) return add(dir, alias);
    if (alias !== undefined) throw new RmlxError("invalid_argument", `--alias '${alias}': ${p} is a folder of models, not one model directory`);
    const subs = readdirSync(dir)
      .map((n) => join(dir, n))
      .filter((d) => statSync(d).isDirectory() && isModelDir(d))
      .sort();
    if (subs.length === 0) throw new RmlxError("invalid_argument", `${p} holds no model (no config.json in it or its subdirectories)`);
    for (const d of subs) add(d);
  });
  return found;
}

/** Which models exist, which are loaded; loads on first use and unloads after an idle time. */
export class ModelManager {
  readonly models = new Map<string, ModelEntry>();
  private timer: ReturnType<typeof setInterval> | null = null;

  constructor(
    private readonly engine: EngineClient,
    dirs: Map<string, string>,
    private readonly idleUnloadS: number,
    /** Only a served name selects a model (--strict-model-names). */
    private readonly strictNames = false,
  ) {
    const now = Math.floor(Date.now() / 1000);
    for (const [name, dir] of dirs) {
      this.models.set(name, { name, dir, state: "unloaded", contextLength: 0, active: 0, lastUsed: 0, createdS: now, embedding: isEmbeddingDir(dir) });
    }
    if (idleUnloadS > 0) {
      this.timer = setInterval(() => this.unloadIdle(), Math.min(1000, idleUnloadS * 250));
      this.timer.unref?.();
    }
  }

  get loading(): boolean {
    for (const m of this.models.values()) if (m.state === "loading") return true;
    return false;
  }

  get(name: string): ModelEntry {
    const m = this.models.get(name);
    if (!m) throw new RmlxError("not_found", `model '${name}' does not exist; known: ${[...this.models.keys()].join(", ")}`);
    return m;
  }

  /**
   * The model a request asks for. With a single model served, it answers whatever name a client sends, or none:
   * clients such as Claude Code send names of their own (claude-sonnet-4-5, ...), and llama-server's habit is to
   * leave the model out. --strict-model-names keeps to the served names.
   */
  resolve(name: string | null | undefined): ModelEntry {
    const m = name ? this.models.get(name) : undefined;
    if (m) return m;
    if (!this.strictNames && this.models.size === 1) return this.models.values().next().value!;
    if (!name) throw new HttpError(400, `model is required: this server serves ${[...this.models.keys()].join(", ")}`, { param: "model" });
    return this.get(name);
  }

  /**
   * Loads the model a request asks for (see resolve) if needed and marks it in use; pair every call with release().
   * A model that cannot serve the use is refused with a 400 that says why.
   */
  async acquire(name: string | null | undefined, use: ModelUse = "generate"): Promise<ModelEntry> {
    const m = this.resolve(name);
    checkUse(m, use);
    m.active++;
    m.lastUsed = Date.now();
    try {
      await this.ensureLoaded(m);
    } catch (e) {
      m.active--;
      throw e;
    }
    return m;
  }

  release(m: ModelEntry): void {
    m.active--;
    m.lastUsed = Date.now();
  }

  private ensureLoaded(m: ModelEntry): Promise<void> {
    if (m.state === "loaded") return Promise.resolve();
    if (!m.loading) {
      m.state = "loading";
      m.loading = this.engine
        .load(m.name, m.dir)
        .then(({ contextLength, info }) => {
          m.state = "loaded";
          m.contextLength = contextLength;
          m.info = info;
        })
        .catch((e) => {
          m.state = "unloaded";
          throw e;
        })
        .finally(() => (m.loading = undefined));
    }
    return m.loading;
  }

  /** Loads every model now (used at startup when there is a single model, so /health tells when it is ready). */
  async preload(name: string): Promise<void> {
    await this.ensureLoaded(this.get(name));
  }

  private unloadIdle(): void {
    const now = Date.now();
    for (const m of this.models.values()) {
      if (m.state !== "loaded" || m.active > 0 || now - m.lastUsed < this.idleUnloadS * 1000) continue;
      m.state = "unloaded";
      void this.engine.unload(m.name);
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
  }
}

export function checkUse(m: ModelEntry, use: ModelUse): void {
  if (use === "generate" && m.embedding) {
    throw new HttpError(400, `model '${m.name}' is an embedding model: it answers /v1/embeddings, not text generation`, {
      param: "model",
      code: "model_not_supported",
    });
  }
  if (use === "embed" && !m.embedding) {
    throw new HttpError(
      400,
      `model '${m.name}' does not produce embeddings: it is a causal language model, not a sentence-transformers embedding model (a directory with modules.json or 1_Pooling/)`,
      { param: "model", code: "model_not_supported" },
    );
  }
}
