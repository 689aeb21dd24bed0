// `rmlx chat`: a conversation in the terminal. Each turn re-renders the whole history through the model's chat
// template and runs it on the engine's Scheduler in this process. Ctrl-C stops a reply (twice at the prompt quits);
// when the history outgrows the context, the oldest turns are dropped with a notice.
import { createInterface } from "node:readline";
import { basename } from "node:path";
import type { Command } from "commander";
import { BUILTIN_MODEL_NAME, builtinModelDir } from "../builtin/index.ts";
import { encodePrompt, type Session } from "../engine/session.ts";
import type { ChatMessage } from "../engine/types.ts";
import { RmlxError } from "../errors.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { addKvOption, kvCodecFrom, type KvFlags } from "./kv_option.ts";
import { addDraftOptions, draftFrom, type DraftFlags } from "./draft_option.ts";
import { addModelOptions, openModel, type ModelFlags } from "./model_option.ts";
import { addSamplingOptions, REPLY_SPELLINGS, runGeneration, SAMPLING_SPELLINGS, samplingFrom, speedLine, type SamplingFlags } from "./generate.ts";
import { addSpellings } from "./spellings.ts";

interface ChatFlags extends SamplingFlags, BackendFlags, KvFlags, ModelFlags, DraftFlags {
  maxTokens: string;
  system?: string;
}

const HELP = `Commands:
  /help          this list
  /reset         forget the conversation (the system message stays)
  /system TEXT   set the system message (/system alone removes it)
  /exit, /quit   leave (so do Ctrl-D, and Ctrl-C twice at the prompt)
Ctrl-C during a reply stops the reply.
`;

/**
 * Drops the oldest turns (a user message and the replies after it) until the prompt leaves `reserve` tokens of
 * the context for the reply; the system message and the newest user message stay. Returns how many turns went,
 * or null when even the newest message alone does not fit.
 */
export function fitHistory(history: ChatMessage[], promptTokens: (m: ChatMessage[]) => number, contextLength: number, reserve: number): number | null {
  let dropped = 0;
  while (promptTokens(history) + reserve > contextLength) {
    const first = history.findIndex((m) => m.role !== "system");
    const next = history.findIndex((m, i) => i > first && m.role === "user");
    if (first < 0 || next < 0) return null;
    history.splice(first, next - first);
    dropped++;
  }
  return dropped;
}

function modelName(dir: string): string {
  return dir === builtinModelDir() ? `${BUILTIN_MODEL_NAME} (the built-in model)` : basename(dir);
}

export function register(program: Command): void {
  const cmd = program
    .command("chat")
    .description("Chat with a model in the terminal (/help lists the commands; Ctrl-C stops a reply)")
    .option("--max-tokens <n>", "maximum tokens per reply", "1024")
    .option("--system <text>", "system message");
  addSpellings(addDraftOptions(addKvOption(addSamplingOptions(addBackendOptions(addModelOptions(cmd))))), [...SAMPLING_SPELLINGS, ...REPLY_SPELLINGS])
    .action(
      action(async (f: ChatFlags) => {
        applyBackendFlags(f);
        const kvQuant = kvCodecFrom(f);
        const maxTokens = Number(f.maxTokens);
        if (!Number.isInteger(maxTokens) || maxTokens < 1) {
          throw new RmlxError("invalid_argument", `--max-tokens must be a positive integer (got '${f.maxTokens}')`);
        }
        const sampling = samplingFrom(f);
        const { session: s, contextLength, dir } = openModel(f);
        if (!s.template) throw new RmlxError("bad_model", `${dir}: no chat template; use 'rmlx generate --raw' instead`);
        const draft = draftFrom(f, s);
        await chatLoop(s, { name: modelName(dir), contextLength, maxTokens, run: { sampling, kvQuant, draft }, system: f.system });
      }),
    );
}

interface ChatSettings {
  name: string;
  contextLength: number;
  maxTokens: number;
  run: Pick<Parameters<typeof runGeneration>[2], "sampling" | "kvQuant" | "draft">;
  system: string | undefined;
}

async function chatLoop(s: Session, o: ChatSettings): Promise<void> {
  const out = (text: string) => process.stdout.write(text);
  let system = o.system;
  let history: ChatMessage[] = [];
  const withSystem = (h: ChatMessage[]): ChatMessage[] => (system !== undefined ? [{ role: "system", content: system }, ...h] : [...h]);
  const promptTokens = (messages: ChatMessage[]) => encodePrompt(s, { messages }).ids.length;
  // Room kept for the reply when old turns must go.
  const reserve = Math.min(o.maxTokens, Math.floor(o.contextLength / 2));

  out(`rmlx chat: ${o.name}, context ${o.contextLength} tokens. Type a message, or /help.\n`);
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: Boolean(process.stdin.isTTY) });
  rl.setPrompt(">> ");

  // Piped input may end while a reply runs: the lines already read are still answered, with no prompt after.
  let closed = false;
  rl.on("close", () => (closed = true));
  const prompt = () => closed || rl.prompt();

  let reply: AbortController | null = null;
  let armed = false;
  let quit = false;
  const interrupt = () => {
    if (reply) return reply.abort();
    if (armed) {
      quit = true;
      out("\n");
      rl.close();
      return;
    }
    armed = true;
    out("\n(Ctrl-C again or /exit to quit)\n");
    prompt();
  };
  rl.on("SIGINT", interrupt);
  process.on("SIGINT", interrupt);

  prompt();
  for await (const line of rl) {
    armed = false;
    const text = line.trim();
    const [command, ...rest] = text.split(/\s+/);
    if (command === "/exit" || command === "/quit") break;
    if (command === "/help") out(HELP);
    else if (command === "/reset") {
      history = [];
      out("(history cleared)\n");
    } else if (command === "/system") {
      const value = text.slice("/system".length).trim();
      system = value === "" ? undefined : value;
      out(system === undefined ? "(system message removed)\n" : "(system message set)\n");
    } else if (command?.startsWith("/") && !command.includes("/", 1)) {
      out(`(unknown command ${command}; /help lists them)\n`);
    } else if (text.length > 0) {
      history.push({ role: "user", content: line });
      const all = withSystem(history);
      const dropped = fitHistory(all, promptTokens, o.contextLength, reserve);
      if (dropped === null) {
        history.pop();
        out(`(that message does not fit the context of ${o.contextLength} tokens with room for a reply; shorten it or raise --ctx-size)\n`);
      } else {
        if (dropped > 0) {
          history = system !== undefined ? all.slice(1) : all;
          out(`(dropped the ${dropped === 1 ? "oldest turn" : `${dropped} oldest turns`} to fit the context of ${o.contextLength} tokens)\n`);
        }
        reply = new AbortController();
        try {
          const run = { ...o.run, maxTokens: o.maxTokens, contextLength: o.contextLength, onText: out, signal: reply.signal };
          const r = await runGeneration(s, { messages: withSystem(history) }, run);
          history.push({ role: "assistant", content: r.text });
          out(r.finishReason === "cancelled" ? "\n(stopped)\n" : "\n");
          process.stderr.write(`[${speedLine(r)}]\n`);
        } finally {
          reply = null;
        }
      }
    }
    if (quit) break;
    prompt();
  }
  process.off("SIGINT", interrupt);
  rl.close();
}
