// `bun run bench <name> [args...]` runs scripts/bench/<name>.ts, which sees its own arguments at process.argv[2..].
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";

const [name, ...rest] = process.argv.slice(2);
const available = readdirSync(import.meta.dir)
  .filter((f) => f.endsWith(".ts") && f !== "index.ts")
  .map((f) => f.slice(0, -3))
  .sort();
const file = name && /^[\w-]+$/.test(name) ? join(import.meta.dir, `${name}.ts`) : "";
if (!file || !existsSync(file)) {
  console.error(`usage: bun run bench <name> [args...]\navailable: ${available.join(", ")}`);
  process.exit(2);
}
process.argv = [process.argv[0]!, file, ...rest];
await import(file);
