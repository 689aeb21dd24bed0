import type { Command } from "commander";
import { notYet } from "./action.ts";

export function register(program: Command): void {
  program
    .command("serve")
    .description("Serve OpenAI- and Anthropic-compatible APIs (not built yet)")
    .allowUnknownOption()
    .action(() => notYet("serve"));
}
