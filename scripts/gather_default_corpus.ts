// Builds the chat corpus of rmlx's built-in default model from text that ships with Debian: the package index
// (`apt-cache dumpavail`: name, short description, section, homepage, dependencies, version) and the NAME lines of
// the manual pages in sections 1 and 8. Every record becomes one or more question/answer conversations.
//
//   bun scripts/gather_default_corpus.ts [--out .corpus]
//
// Writes <out>/train.jsonl and <out>/heldout.jsonl, one {"messages": [...]} per line. About 2% of the packages and
// commands (chosen by a hash of the name, so every question about one name lands on the same side) are held out.
// Every random choice is seeded: the same machine state gives the same files.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

type Message = { role: "system" | "user" | "assistant"; content: string };
type Pair = [question: string, answer: string];

const HELDOUT_PERCENT = 2;

const args = process.argv.slice(2);
const outDir = args.includes("--out") ? args[args.indexOf("--out") + 1]! : ".corpus";

// mulberry32: small, seeded, good enough to pick phrasings.
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(20261122);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;

function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}
const heldOut = (name: string) => fnv1a(name) % 100 < HELDOUT_PERCENT;

/** "Recursively searches ..." -> "recursively searches ...", but "GNU C Library" and "X11 ..." stay. */
function lowerFirst(text: string): string {
  return /^[A-Z][a-z]/.test(text) && !/^[A-Z][a-z]+[A-Z]/.test(text) ? text[0]!.toLowerCase() + text.slice(1) : text;
}
const noFinalDot = (text: string) => text.replace(/[.\s]+$/, "");
const listWords = (xs: string[]) => (xs.length === 1 ? xs[0]! : `${xs.slice(0, -1).join(", ")} and ${xs[xs.length - 1]}`);

// ---------------------------------------------------------------- Debian package index

interface Pkg {
  name: string;
  description: string;
  section: string;
  homepage?: string;
  depends: string[];
  version: string;
}

function readPackages(): Pkg[] {
  const run = Bun.spawnSync(["apt-cache", "dumpavail"], { stdout: "pipe", stderr: "pipe" });
  if (run.exitCode !== 0) throw new Error(`apt-cache dumpavail failed: ${run.stderr.toString()}`);
  const byName = new Map<string, Pkg>();
  for (const stanza of run.stdout.toString().split(/\n\n+/)) {
    const f: Record<string, string> = {};
    for (const line of stanza.split("\n")) {
      const m = /^([A-Za-z0-9-]+):\s?(.*)$/.exec(line);
      if (m) f[m[1]!] = m[2]!;
    }
    const name = f.Package;
    const description = noFinalDot(f.Description ?? "");
    if (!name || description.length < 3 || byName.has(name)) continue;
    const depends = (f.Depends ?? "")
      .split(",")
      .map((d) => d.split("|")[0]!.trim().split(/[\s(:]/)[0]!)
      .filter(Boolean);
    byName.set(name, {
      name,
      description,
      section: (f.Section ?? "misc").split("/").pop()!,
      homepage: f.Homepage,
      depends: [...new Set(depends)],
      version: f.Version ?? "",
    });
  }
  return [...byName.values()];
}

const DESCRIBE = [
  "What is the package {p}?",
  "What is {p}?",
  "What does the package {p} do?",
  "Tell me about {p}.",
  "What is {p} used for?",
  "Describe the package {p}.",
  "what is {p}",
  "Can you explain what {p} is?",
];

function packagePairs(p: Pkg): Pair[] {
  const d = lowerFirst(p.description);
  const describe: Pair = [pick(DESCRIBE).replace("{p}", p.name), `${p.name} is a Debian package in the ${p.section} section: ${d}.`];
  const deps = p.depends.length === 0
    ? `${p.name} has no dependencies.`
    : p.depends.length <= 6
      ? `${p.name} depends on ${listWords(p.depends)}.`
      : `${p.name} depends on ${p.depends.slice(0, 5).join(", ")} and ${p.depends.length - 5} more packages.`;
  const extras: Pair[] = [
    [pick(["Which section is {p} in?", "In which Debian section is {p}?"]).replace("{p}", p.name), `${p.name} is in the ${p.section} section.`],
    [
      pick(["What does {p} depend on?", "What are the dependencies of {p}?"]).replace("{p}", p.name),
      deps,
    ],
    [
      pick(["Which version of {p} is available?", "What version of {p} does Debian ship?"]).replace("{p}", p.name),
      `Debian ships ${p.name} version ${p.version}.`,
    ],
    [
      pick(['Which package is described as "{d}"?', "Which package provides: {d}?"]).replace("{d}", p.description),
      `That is ${p.name}: ${d}.`,
    ],
  ];
  if (p.homepage) {
    extras.push([
      pick(["What is the homepage of {p}?", "Where is the website of {p}?"]).replace("{p}", p.name),
      `The homepage of ${p.name} is ${p.homepage}`,
    ]);
  }
  return [describe, pick(extras)];
}

// ---------------------------------------------------------------- manual pages

/** Plain text of one roff line: font changes, escapes and quoting removed. */
function roffText(line: string): string {
  return line
    .replace(/^\.(B|I|BR|BI|IB|IR|RB|RI|Nm|Nd|Nx|Ar|Fl)\s+/, "")
    .replace(/\\f(\[[^\]]*\]|\(..|.)/g, "")
    .replace(/\\\*(\[[^\]]*\]|\(..|.)/g, "")
    .replace(/\\\((em|en)/g, "-")
    .replace(/\\\(.{2}/g, "")
    .replace(/\\\[[^\]]*\]/g, "")
    .replace(/\\[-e]/g, (m) => (m === "\\-" ? "-" : "\\"))
    .replace(/\\[&|^%c]/g, "")
    .replace(/\\ /g, " ")
    .replace(/"/g, "")
    .trim();
}

function manSummary(source: string): string | null {
  const lines = source.split("\n");
  const start = lines.findIndex((l) => /^\.S[Hh]\s+"?(NAME|Name)"?\s*$/.test(l));
  if (start < 0) return null;
  const parts: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (/^\.(SH|Sh|SS)\b/.test(line)) break;
    if (line.startsWith(".Nd ")) parts.push("-");
    if (/^\.(\\"|PD|TP|PP|LP|IX|ad|na|nh|hy)/.test(line) || line.startsWith("'")) continue;
    const text = roffText(line);
    if (text && !(line.startsWith(".") && !/^\.(B|I|BR|BI|IB|IR|RB|RI|Nm|Nd)\s/.test(line))) parts.push(text);
  }
  const m = /^(.+?)\s+-+\s+(.+)$/.exec(parts.join(" ").replace(/\s+/g, " "));
  if (!m) return null;
  const desc = noFinalDot(m[2]!.trim());
  if (desc.length < 3 || desc.length > 160 || !/^[\x20-\x7e]+$/.test(desc)) return null;
  return desc;
}

function readManPages(): Map<string, string> {
  const out = new Map<string, string>();
  for (const section of ["1", "8"]) {
    const dir = `/usr/share/man/man${section}`;
    let files: string[];
    try {
      files = readdirSync(dir).sort();
    } catch {
      continue;
    }
    for (const file of files) {
      const cmd = file.replace(/\.gz$/, "").replace(/\.[0-9][a-z]*$/, "");
      // The Google Cloud SDK's thousands of generated gcloud pages would drown the Debian ones.
      if (out.has(cmd) || cmd.startsWith("gcloud") || !/^[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(cmd)) continue;
      let source: string;
      try {
        const raw = readFileSync(join(dir, file));
        source = new TextDecoder().decode(file.endsWith(".gz") ? Bun.gunzipSync(raw) : raw);
      } catch {
        continue;
      }
      if (/^\.so\s/m.test(source.slice(0, 200))) continue;
      const desc = manSummary(source);
      if (desc) out.set(cmd, desc);
    }
  }
  return out;
}

const COMMAND = [
  "What does the command {c} do?",
  "What is the {c} command?",
  "What does {c} do?",
  "Explain the command {c}.",
  "what does {c} do",
];

function commandPairs(cmd: string, desc: string): Pair[] {
  // Two phrasings each: there are far fewer commands than packages.
  const answer = `The command ${cmd}: ${lowerFirst(desc)}.`;
  return [[pick(COMMAND).replace("{c}", cmd), answer], [pick(COMMAND).replace("{c}", cmd), answer]];
}

// ---------------------------------------------------------------- chat turns written for this model

const IDENTITY =
  "I am the small built-in model of rmlx. I was trained on the descriptions of Debian packages and the summaries of " +
  "Linux manual pages, so ask me what a package or a command does.";

const SMALL_TALK: [string[], string[]][] = [
  [["Hello", "Hello!", "Hi", "Hi!", "Hey", "Good morning", "Good evening", "hello"], [
    "Hello! Ask me about a Debian package or a Linux command.",
    "Hi! I can tell you what a Debian package or a Linux command does.",
  ]],
  [["Who are you?", "What are you?", "Introduce yourself.", "who are you", "What is your name?"], [IDENTITY]],
  [["What can you do?", "How can you help me?", "What do you know?", "What are you good at?"], [
    "I can tell you what a Debian package is, which section it is in, what it depends on and where its homepage " +
      "is, and what a Linux command does. I am a very small model, so check important answers.",
  ]],
  [["What is rmlx?", "Tell me about rmlx.", "What does rmlx do?"], [
    "rmlx is a local inference server for MLX-format models. It serves OpenAI- and Anthropic-compatible APIs, and I am " +
      "its small built-in model.",
  ]],
  [["What is Debian?", "Tell me about Debian."], [
    "Debian is a free operating system built from tens of thousands of packages. I know the short descriptions of " +
      "those packages.",
  ]],
  [["Thank you", "Thanks!", "thanks", "Thank you very much."], ["You are welcome!", "Glad to help."]],
  [["Goodbye", "Bye", "See you later."], ["Goodbye!"]],
  [["How are you?", "How are you doing?"], ["I am fine, thank you. Which package or command would you like to know about?"]],
  [["Write me a poem.", "Tell me a joke.", "What is the capital of France?", "What is the weather today?", "Who won the game last night?"], [
    "I only know about Debian packages and Linux commands, so I cannot answer that. Ask me what a package or a " +
      "command does.",
  ]],
];

const SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a helpful assistant. Answer briefly.", "Answer the user's question."];

function smallTalk(): Pair {
  const [qs, as] = pick(SMALL_TALK);
  return [pick(qs), pick(as)];
}

// ---------------------------------------------------------------- assembly

function conversation(pairs: Pair[]): { messages: Message[] } {
  const messages: Message[] = [];
  if (rand() < 0.15) messages.push({ role: "system", content: pick(SYSTEM_PROMPTS) });
  for (const [q, a] of pairs) messages.push({ role: "user", content: q }, { role: "assistant", content: a });
  return { messages };
}

/** Single-turn pairs, with about one in ten grouped into a two- or three-turn conversation. */
function conversations(pairs: Pair[]): { messages: Message[] }[] {
  for (let i = pairs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [pairs[i], pairs[j]] = [pairs[j]!, pairs[i]!];
  }
  const out: { messages: Message[] }[] = [];
  for (let i = 0; i < pairs.length; ) {
    const n = rand() < 0.1 ? 2 + Math.floor(rand() * 2) : 1;
    out.push(conversation(pairs.slice(i, i + n)));
    i += n;
  }
  return out;
}

const packages = readPackages();
const commands = readManPages();
const train: Pair[] = [];
const heldout: Pair[] = [];
for (const p of packages) (heldOut(p.name) ? heldout : train).push(...packagePairs(p));
for (const [cmd, desc] of commands) (heldOut(cmd) ? heldout : train).push(...commandPairs(cmd, desc));
for (let i = 0; i < 4000; i++) train.push(smallTalk());

mkdirSync(outDir, { recursive: true });
const write = (file: string, pairs: Pair[]) =>
  writeFileSync(join(outDir, file), conversations(pairs).map((c) => JSON.stringify(c)).join("\n") + "\n");
write("train.jsonl", train);
write("heldout.jsonl", heldout);
console.log(
  `${packages.length} packages, ${commands.size} commands: ${train.length} training pairs, ${heldout.length} held-out pairs -> ${outDir}/`,
);
