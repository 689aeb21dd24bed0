#!/usr/bin/env bun
import { Command } from "commander";
import { VERSION } from "../version.ts";
import { reportAndExit } from "./action.ts";
import { register as registerServe } from "./serve.ts";
import { register as registerInfo } from "./info.ts";
import { register as registerConvert } from "./convert.ts";
import { register as registerMetrics } from "./metrics.ts";
import { register as registerGenerate } from "./generate.ts";
import { register as registerChat } from "./chat.ts";
import { register as registerBench } from "./bench.ts";

const program = new Command();
program
  .name("rmlx")
  .description("Local inference server for MLX-format models")
  .version(VERSION, "-V, --version")
  .showHelpAfterError()
  .exitOverride((err) => {
    // commander prints its own one-line message; help and version exit 0, usage errors exit 2.
    process.exit(err.exitCode === 0 ? 0 : 2);
  });

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

program.parseAsync(process.argv).catch(reportAndExit);
