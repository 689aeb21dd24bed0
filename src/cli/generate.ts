import type { Command } from "commander";
import { notYet } from "./action.ts";

export function register(program: Command): void {
  program
    .command("generate")
    .description("Generate text from a prompt (not built yet)")
    .allowUnknownOption()
    .action(() => notYet("generate"));
}
