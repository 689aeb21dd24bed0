// --draft-model, --draft-kind, --draft-tokens and --draft-policy, shared by generate and chat (serve reads the same
// flags into its engine config): speculative decoding with a smaller model of the same tokenizer, or with the
// model's own multi-token-prediction head.
import type { Command } from "commander";
import { DEFAULT_DRAFT_TOKENS, type DraftSource, loadDraft, loadMtpDraft } from "../engine/draft_model.ts";
import type { Session } from "../engine/session.ts";
import { RmlxError } from "../errors.ts";
import { parseInteger, pick } from "./parse.ts";

export interface DraftFlags {
  draftModel?: string;
  draftKind?: string;
  draftTokens?: string;
  draftPolicy?: string;
}

export const DRAFT_KIND_HELP =
  "model: --draft-model proposes; mtp: the model's own multi-token-prediction head (Qwen3.5 / Qwen3.6 / Qwen3-Next mtp.* weights) proposes (env RMLX_DRAFT_KIND; default model)";
export const DRAFT_TOKENS_HELP = `most tokens the draft proposes a step (env RMLX_DRAFT_TOKENS; default ${DEFAULT_DRAFT_TOKENS})`;
export const DRAFT_POLICY_HELP =
  "adaptive: propose as many as pay off, given each sequence's acceptance and the measured costs, none when speculation does not pay; fixed: always --draft-tokens after a first plain step (env RMLX_DRAFT_POLICY; default adaptive)";

export function addDraftOptions(cmd: Command): Command {
  return cmd
    .option("--draft-model <dir>", "a smaller model with the same tokenizer that proposes tokens for this one to verify (env RMLX_DRAFT_MODEL)")
    .option("--draft-kind <kind>", DRAFT_KIND_HELP)
    .option("--draft-tokens <k>", DRAFT_TOKENS_HELP)
    .option("--draft-policy <p>", DRAFT_POLICY_HELP);
}

/** What drafts: a model directory, or the model's own MTP head. */
export type DraftSetting = ({ kind: "model"; dir: string } | { kind: "mtp" }) & { tokens: number; fixed: boolean };

/** The draft of the flags and environment, checked; undefined without one. */
export function draftSettings(f: DraftFlags): DraftSetting | undefined {
  const dir = pick(f.draftModel, "RMLX_DRAFT_MODEL");
  const kindFlag = pick(f.draftKind, "RMLX_DRAFT_KIND");
  const k = pick(f.draftTokens, "RMLX_DRAFT_TOKENS");
  const tokens = k === undefined ? DEFAULT_DRAFT_TOKENS : parseInteger(k, "--draft-tokens", 1);
  const policy = pick(f.draftPolicy, "RMLX_DRAFT_POLICY", "adaptive");
  if (policy !== "adaptive" && policy !== "fixed") throw new RmlxError("invalid_argument", `--draft-policy must be adaptive or fixed (got '${policy}')`);
  const fixed = policy === "fixed";
  if (kindFlag !== undefined && kindFlag !== "model" && kindFlag !== "mtp") throw new RmlxError("invalid_argument", `--draft-kind must be model or mtp (got '${kindFlag}')`);
  if (kindFlag === "mtp") {
    if (dir !== undefined) throw new RmlxError("invalid_argument", "--draft-kind mtp drafts with the model's own MTP head: leave out --draft-model");
    return { kind: "mtp", tokens, fixed };
  }
  if (dir === undefined) {
    if (kindFlag === "model") throw new RmlxError("invalid_argument", "--draft-kind model needs --draft-model");
    return undefined;
  }
  return { kind: "model", dir, tokens, fixed };
}

/** The draft loaded for `target`, or undefined without one. */
export function draftFrom(f: DraftFlags, target: Session): { model: DraftSource; tokens: number; fixed: boolean } | undefined {
  const d = draftSettings(f);
  if (!d) return undefined;
  return { model: d.kind === "mtp" ? loadMtpDraft(target) : loadDraft(target, d.dir), tokens: d.tokens, fixed: d.fixed };
}
