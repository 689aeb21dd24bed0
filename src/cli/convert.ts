import type { Command } from "commander";
import { notYet } from "./action.ts";

export function register(program: Command): void {
  program
    .command("convert")
    .description("Convert Hugging Face checkpoints to MLX, or re-quantize MLX models (not built yet)")
    .allowUnknownOption()
    .action(() => notYet("convert"));
}
