#!/usr/bin/env bun
import { Command } from "commander";
import { VERSION } from "../version.ts";
import { EXIT_BAD_INPUT, reportAndExit } from "./action.ts";
import { register as registerServe } from "./serve.ts";
import { register as registerInfo } from "./info.ts";
import { register as registerConvert } from "./convert.ts";
import { register as registerMetrics } from "./metrics.ts";
import { register as registerGenerate } from "./generate.ts";
import { register as registerChat } from "./chat.ts";
import { register as registerBench } from "./bench.ts";

const program = new Command();
program.name("rmlx").description("Local inference server for MLX-format models").version(VERSION, "-V, --version");

for (const register of [
  registerServe,
  registerInfo,
  registerConvert,
  registerMetrics,
  registerGenerate,
  registerChat,
  registerBench,
]) {
  register(program);
}

/** "error: unknown option '--prot'\n(Did you mean --port?)" -> "unknown option '--prot'; did you mean --port?" */
function oneLine(commanderError: string): string {
  return commanderError
    .replace(/^error: /, "")
    .replace(/\s*\(Did you mean (.*?)\)/, "; did you mean $1")
    .replace(/\s*\n\s*/g, " ")
    .trim();
}

/**
 * A usage error (unknown option, missing option or argument) is one line naming the command's --help, and exit 2;
 * --help and --version exit 0.
 */
function usageErrors(cmd: Command, path: string): void {
  cmd
    .configureOutput({
      outputError: (str, write) => write(`rmlx: ${oneLine(str)} (see '${path} --help')\n`),
    })
    .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : EXIT_BAD_INPUT));
  for (const sub of cmd.commands) usageErrors(sub, `${path} ${sub.name()}`);
}
usageErrors(program, "rmlx");

program.parseAsync(process.argv).catch(reportAndExit);
