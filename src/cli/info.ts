import type { Command } from "commander";
import { notYet } from "./action.ts";

export function register(program: Command): void {
  program
    .command("info")
    .description("Describe a model directory (not built yet)")
    .allowUnknownOption()
    .action(() => notYet("info"));
}
