// --draft-model and --draft-tokens, shared by generate and chat (serve reads the same flags into its engine
// config): speculative decoding with a smaller model of the same tokenizer.
import type { Command } from "commander";
import { DEFAULT_DRAFT_TOKENS, type DraftModel, loadDraft } from "../engine/draft_model.ts";
import type { Session } from "../engine/session.ts";
import { RmlxError } from "../errors.ts";
import { parseInteger, pick } from "./parse.ts";

export interface DraftFlags {
  draftModel?: string;
  draftTokens?: string;
  draftPolicy?: string;
}

export const DRAFT_TOKENS_HELP = `most tokens the draft proposes a step (env RMLX_DRAFT_TOKENS; default ${DEFAULT_DRAFT_TOKENS})`;
export const DRAFT_POLICY_HELP =
  "adaptive: propose as many as pay off, given each sequence's acceptance and the measured costs, none when speculation does not pay; fixed: always --draft-tokens after a first plain step (env RMLX_DRAFT_POLICY; default adaptive)";

export function addDraftOptions(cmd: Command): Command {
  return cmd
    .option("--draft-model <dir>", "a smaller model with the same tokenizer that proposes tokens for this one to verify (env RMLX_DRAFT_MODEL)")
    .option("--draft-tokens <k>", DRAFT_TOKENS_HELP)
    .option("--draft-policy <p>", DRAFT_POLICY_HELP);
}

/** The draft directory and token count of the flags and environment, checked; undefined without a draft. */
export function draftSettings(f: DraftFlags): { dir: string; tokens: number; fixed: boolean } | undefined {
  const dir = pick(f.draftModel, "RMLX_DRAFT_MODEL");
  const k = pick(f.draftTokens, "RMLX_DRAFT_TOKENS");
  const tokens = k === undefined ? DEFAULT_DRAFT_TOKENS : parseInteger(k, "--draft-tokens", 1);
  const policy = pick(f.draftPolicy, "RMLX_DRAFT_POLICY", "adaptive");
  if (policy !== "adaptive" && policy !== "fixed") throw new RmlxError("invalid_argument", `--draft-policy must be adaptive or fixed (got '${policy}')`);
  return dir === undefined ? undefined : { dir, tokens, fixed: policy === "fixed" };
}

/** The draft model loaded for `target`, or undefined without --draft-model. */
export function draftFrom(f: DraftFlags, target: Session): { model: DraftModel; tokens: number; fixed: boolean } | undefined {
  const d = draftSettings(f);
  return d && { model: loadDraft(target, d.dir), tokens: d.tokens, fixed: d.fixed };
}
