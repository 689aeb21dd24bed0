import type { Command } from "commander";
import { notYet } from "./action.ts";

export function register(program: Command): void {
  program
    .command("metrics")
    .description("Read per-request and benchmark figures (not built yet)")
    .allowUnknownOption()
    .action(() => notYet("metrics"));
}
