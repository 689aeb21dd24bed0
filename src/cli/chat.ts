import type { Command } from "commander";
import { notYet } from "./action.ts";

export function register(program: Command): void {
  program
    .command("chat")
    .description("Chat with a model in the terminal (not built yet)")
    .allowUnknownOption()
    .action(() => notYet("chat"));
}
