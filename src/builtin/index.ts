// The built-in default model: the small chat model in models/default, embedded in the compiled binary so that
// `rmlx serve` works on a fresh machine with no download. Every file is imported as a file, so that
// `bun build --compile` embeds it. Model loading needs real files (mmap, several files side by side), so in a
// compiled binary they are written once to a cache directory named by their content hash.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import config from "../../models/default/config.json" with { type: "file" };
import generationConfig from "../../models/default/generation_config.json" with { type: "file" };
import weights from "../../models/default/model.safetensors" with { type: "file" };
import tokenizer from "../../models/default/tokenizer.json" with { type: "file" };
import tokenizerConfig from "../../models/default/tokenizer_config.json" with { type: "file" };

/**
 * The name the built-in model is served under. Not its directory's name, "default": clients such as Claude Code
 * take "default" (like "sonnet" or "opus") as an alias of their own and would never send it.
 */
export const BUILTIN_MODEL_NAME = "rmlx-default";

/** The directory the model is extracted to, named as in the repository. */
const DIR_NAME = "default";

// resolveJsonModule types a JSON import as its content; imported as a file it is the file's path.
const FILES: Record<string, string> = {
  "config.json": config as unknown as string,
  "generation_config.json": generationConfig as unknown as string,
  "model.safetensors": weights,
  "tokenizer.json": tokenizer as unknown as string,
  "tokenizer_config.json": tokenizerConfig as unknown as string,
};

function cacheBase(): string {
  const base = process.env.XDG_CACHE_HOME || (homedir() ? join(homedir(), ".cache") : tmpdir());
  const dir = join(base, "rmlx", "models");
  try {
    mkdirSync(dir, { recursive: true });
    return dir;
  } catch {
    const fallback = join(tmpdir(), "rmlx", "models");
    mkdirSync(fallback, { recursive: true });
    return fallback;
  }
}

function extract(): string {
  const contents = Object.entries(FILES).map(([name, path]) => [name, readFileSync(path)] as const);
  // A fast non-cryptographic hash: it only has to tell builds apart, and sha256 of the weights cost more than
  // the rest of this function at every start.
  let h = 0n;
  for (const [name, data] of contents) h = Bun.hash.wyhash(data, Bun.hash.wyhash(name, h));
  const hash = h.toString(16).padStart(16, "0");
  const root = join(cacheBase(), hash);
  const dir = join(root, DIR_NAME);
  if (contents.every(([name]) => existsSync(join(dir, name)))) return dir;
  // Written beside the target and renamed into place, so that a concurrent start never sees half a model.
  const tmp = `${root}.${process.pid}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(join(tmp, DIR_NAME), { recursive: true });
  for (const [name, data] of contents) writeFileSync(join(tmp, DIR_NAME, name), data);
  rmSync(root, { recursive: true, force: true });
  try {
    renameSync(tmp, root);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    if (!contents.every(([name]) => existsSync(join(dir, name)))) throw err;
  }
  return dir;
}

let cached: string | undefined;

/** A directory holding the built-in model: the repository's models/default, or its extracted copy in a binary. */
export function builtinModelDir(): string {
  cached ??= FILES["config.json"]!.startsWith("/$bunfs/") ? extract() : dirname(FILES["config.json"]!);
  return cached;
}
