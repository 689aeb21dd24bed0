// Other tools' spellings of our flags (mlx_lm's, llama.cpp's), taken as hidden options so that their command lines
// run unchanged: each alias's value moves onto our option before the action runs.
import { type Command, Option } from "commander";

/** An alias: its option (flags as commander takes them, e.g. "-n, --n-predict <n>"), the key it parses to, and our option's key and flag. */
export interface Spelling {
  flags: string;
  key: string;
  ours: string;
  ourFlag: string;
  /** Where our option collects repeated values (a list), the alias collects them the same way. */
  repeatable?: boolean;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

/**
 * Adds the aliases as hidden options, and a preAction hook (ahead of any the caller adds after) that moves their
 * values onto ours.
 */
export function addSpellings(cmd: Command, spellings: readonly Spelling[]): Command {
  for (const s of spellings) {
    const o = new Option(s.flags).hideHelp();
    cmd.addOption(s.repeatable ? o.argParser(collect) : o);
  }
  return cmd.hook("preAction", (c) => applySpellings(c, spellings));
}

/** Moves each given alias's value onto our option. Both given with different values is one line and exit 2; our option's default does not count as given. */
function applySpellings(cmd: Command, spellings: readonly Spelling[]): void {
  for (const s of spellings) {
    const a = cmd.getOptionValue(s.key);
    if (a === undefined) continue;
    const mine = cmd.getOptionValue(s.ours);
    const given = mine !== undefined && cmd.getOptionValueSource(s.ours) !== "default";
    const alias = s.flags.split(/[ ,]+/).find((f) => f.startsWith("--"))!;
    if (given && JSON.stringify(mine) !== JSON.stringify(a)) cmd.error(`${alias} and ${s.ourFlag} disagree`);
    cmd.setOptionValueWithSource(s.ours, a, "cli");
  }
}
