// The convert subcommand alone, registered the way src/cli/main.ts registers it, so these tests exercise the
// real command without loading every other subcommand.
import { Command } from "commander";
import { reportAndExit } from "../../src/cli/action.ts";
import { register } from "../../src/cli/convert.ts";

const program = new Command();
program
  .name("rmlx")
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));
register(program);
program.parseAsync(process.argv).catch(reportAndExit);
