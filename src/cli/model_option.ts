// -m/--model (default: the built-in model), --chat-template, --ctx-size and --bitnet-activations, shared by the
// subcommands that load a model in this process (generate, chat).
import type { Command } from "commander";
import { builtinModelDir } from "../builtin/index.ts";
import { loadSession, type Session } from "../engine/session.ts";
import { readChatTemplateFile } from "../text/chat_template.ts";
import { addBitnetOption, type BitnetFlags, modelOptionsFrom } from "./bitnet_option.ts";
import { parseInteger, pick } from "./parse.ts";

export interface ModelFlags extends BitnetFlags {
  model?: string;
  chatTemplate?: string;
  ctxSize?: string;
}

export const MODEL_HELP = "model directory (default: the built-in model)";

export function addModelOptions(cmd: Command): Command {
  cmd
    .option("-m, --model <dir>", MODEL_HELP)
    .option("--chat-template <file>", "a chat template (Jinja, or JSON with chat_template) used instead of the model's own (env RMLX_CHAT_TEMPLATE)")
    .option("-c, --ctx-size <n>", "most tokens of context, below the model's own limit (env RMLX_CTX_SIZE)");
  return addBitnetOption(cmd);
}

/** The model directory a command works on: -m, else the built-in model. */
export function modelDirFrom(f: { model?: string }): string {
  return f.model ?? builtinModelDir();
}

/** The model loaded with its chat template (or --chat-template's) and its context (capped by --ctx-size). */
export function openModel(f: ModelFlags): { session: Session; contextLength: number; dir: string } {
  const templateFile = pick(f.chatTemplate, "RMLX_CHAT_TEMPLATE");
  const ctxSize = pick(f.ctxSize, "RMLX_CTX_SIZE");
  const cap = ctxSize === undefined ? Infinity : parseInteger(ctxSize, "--ctx-size", 1);
  const chatTemplate = templateFile === undefined ? undefined : readChatTemplateFile(templateFile);
  const dir = modelDirFrom(f);
  const session = loadSession(dir, undefined, { chatTemplate, modelOptions: modelOptionsFrom(f) });
  return { session, contextLength: Math.min(session.md.config.contextLength, cap), dir };
}
