import { createInterface } from "node:readline";
import type { Command } from "commander";
import type { ChatMessage } from "../engine/types.ts";
import { RmlxError } from "../errors.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { addKvOption, kvDtypeFrom, type KvFlags } from "./kv_option.ts";
import { addModelOptions, openModel, type ModelFlags } from "./model_option.ts";
import { addSamplingOptions, runGeneration, samplingFrom, speedLine, type SamplingFlags } from "./generate.ts";

interface ChatFlags extends SamplingFlags, BackendFlags, KvFlags, ModelFlags {
  maxTokens: string;
  system?: string;
}

export function register(program: Command): void {
  const cmd = program
    .command("chat")
    .description("Chat with a model in the terminal (/reset clears the history, /exit quits)")
    .option("--max-tokens <n>", "maximum tokens per reply", "1024")
    .option("--system <text>", "system message");
  addKvOption(addSamplingOptions(addBackendOptions(addModelOptions(cmd)))).action(
    action(async (f: ChatFlags) => {
      applyBackendFlags(f);
      const kvDtype = kvDtypeFrom(f);
      const maxTokens = Number(f.maxTokens);
      if (!Number.isInteger(maxTokens) || maxTokens < 1) {
        throw new RmlxError("invalid_argument", `--max-tokens must be a positive integer (got '${f.maxTokens}')`);
      }
      const sampling = samplingFrom(f);
      const { session: s, contextLength, dir } = openModel(f);
      if (!s.template) throw new RmlxError("bad_model", `${dir}: no chat template; use 'rmlx generate --raw' instead`);
      const initial = (): ChatMessage[] => (f.system !== undefined ? [{ role: "system", content: f.system }] : []);
      let history = initial();
      const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY });
      rl.setPrompt(">> ");
      rl.prompt();
      for await (const line of rl) {
        const text = line.trim();
        if (text === "/exit" || text === "/quit") break;
        if (text === "/reset") {
          history = initial();
          process.stdout.write("(history cleared)\n");
        } else if (text.length > 0) {
          history.push({ role: "user", content: text });
          // The whole conversation is re-rendered each turn, so the template sees it as transformers would.
          const r = await runGeneration(s, { messages: history }, { maxTokens, sampling, contextLength, kvDtype, onText: (t) => process.stdout.write(t) });
          history.push({ role: "assistant", content: r.text });
          process.stdout.write("\n");
          process.stderr.write(`[${speedLine(r)}]\n`);
        }
        rl.prompt();
      }
      rl.close();
    }),
  );
}
