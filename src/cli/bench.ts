import type { Command } from "commander";
import { notYet } from "./action.ts";

export function register(program: Command): void {
  program
    .command("bench")
    .description("Run benchmarks (not built yet)")
    .allowUnknownOption()
    .action(() => notYet("bench"));
}
