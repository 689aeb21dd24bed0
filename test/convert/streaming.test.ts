// Bounded memory, the DST.partial -> DST rename, --force, failures and interrupts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SafetensorsWriter, type WriteEntry } from "../../src/io/safetensors_write.ts";
import { WeightStore } from "../../src/io/weights.ts";
import { encodeFloats } from "../../src/quant/dtype.ts";
import { BUN, MAIN, makeHfModel, randomValues, runCli, tmp, cleanupScratch } from "./helpers.ts";

afterAll(cleanupScratch);

const COLS = 8192;
const ROWS = 2048;
const TENSORS = 16; // 16 x 2048 x 8192 bf16 = 512 MiB

/** A llama-shaped model of plain big Linear weights, written by repeating one random chunk. */
function makeBigModel(dir: string): number {
  mkdirSync(dir, { recursive: true });
  const entries: WriteEntry[] = [];
  for (let i = 0; i < TENSORS; i++) entries.push({ name: `model.layers.${i}.mlp.up_proj.weight`, dtype: "BF16", shape: [ROWS, COLS] });
  entries.push({ name: "model.norm.weight", dtype: "BF16", shape: [COLS] });
  const w = SafetensorsWriter.create(join(dir, "model.safetensors"), entries, { format: "pt" });
  const chunkRows = 256;
  const chunk = encodeFloats("BF16", randomValues(chunkRows * COLS, 7, 0.05));
  for (let i = 0; i < TENSORS; i++) {
    for (let r = 0; r < ROWS; r += chunkRows) w.write(`model.layers.${i}.mlp.up_proj.weight`, chunk, r * COLS * 2);
  }
  w.write("model.norm.weight", encodeFloats("BF16", new Float32Array(COLS).fill(1)));
  w.close();
  writeFileSync(
    join(dir, "config.json"),
    JSON.stringify({ model_type: "llama", num_hidden_layers: TENSORS, hidden_size: COLS, torch_dtype: "bfloat16" }),
  );
  return w.totalBytes;
}

/** Memory a process may allocate for data (heap, private mappings): the model does not fit in it. */
const DATA_LIMIT = 320 * 2 ** 20;
/**
 * The JS engine reserves its JIT code area up front, and that reservation counts against the data limit; without
 * shrinking it the engine falls back to its interpreter under the limit and runs some 50 times slower.
 */
const LIMITED_ENV = { ...process.env, BUN_JSC_jitMemoryReservationSize: String(32 * 2 ** 20) };

describe("a model larger than the memory allowed", () => {
  let big = "";
  let size = 0;
  beforeAll(() => {
    big = join(tmp(), "big");
    size = makeBigModel(big);
  });
  afterAll(() => rmSync(big, { recursive: true, force: true }));

  const hasPrlimit = Bun.which("prlimit") !== null;

  test.skipIf(!hasPrlimit)(
    "the limit binds: reading the model whole fails under it",
    () => {
      expect(size).toBeGreaterThan(DATA_LIMIT);
      const p = Bun.spawnSync(
        ["prlimit", `--data=${DATA_LIMIT}`, BUN, "-e", `const b = require("fs").readFileSync(${JSON.stringify(join(big, "model.safetensors"))}); console.log(b.length)`],
        { stdout: "pipe", stderr: "pipe", env: LIMITED_ENV },
      );
      expect(p.exitCode).not.toBe(0);
      expect(p.stderr.toString()).toContain("ENOMEM");
    },
    60_000,
  );

  test.skipIf(!hasPrlimit)(
    "convert -q streams it through under the limit",
    () => {
      const out = join(tmp(), "q");
      const p = Bun.spawnSync(["prlimit", `--data=${DATA_LIMIT}`, BUN, MAIN, "convert", "--model", big, "--out", out, "-q"], {
        stdout: "pipe",
        stderr: "pipe",
        env: LIMITED_ENV,
      });
      expect(p.stderr.toString()).toContain("bits per weight");
      expect(p.exitCode).toBe(0);
      const ws = WeightStore.open(out);
      expect(ws.require("model.layers.15.mlp.up_proj.weight").shape).toEqual([ROWS, COLS / 8]);
      rmSync(out, { recursive: true, force: true });
    },
    120_000,
  );

  test(
    "an interrupt removes DST.partial and leaves no DST",
    async () => {
      const out = join(tmp(), "int");
      const p = Bun.spawn([BUN, MAIN, "convert", "--model", big, "--out", out, "-q", "--mode", "mxfp4"], { stdout: "pipe", stderr: "pipe" });
      const partial = `${out}.partial`;
      const t0 = Date.now();
      while (!(existsSync(partial) && readdirSync(partial).length > 0) && Date.now() - t0 < 30_000) await Bun.sleep(20);
      expect(existsSync(partial)).toBe(true);
      await Bun.sleep(200);
      p.kill("SIGINT");
      const code = await p.exited;
      expect(code).toBe(130);
      expect(await new Response(p.stderr).text()).toContain("interrupted");
      expect(existsSync(partial)).toBe(false);
      expect(existsSync(out)).toBe(false);
    },
    60_000,
  );
});

describe("DST handling", () => {
  const src = join(tmp(), "hf");
  makeHfModel(src, { layers: 1 });

  test("an existing DST is refused without --force and replaced with it", () => {
    const out = join(tmp(), "o");
    mkdirSync(out);
    writeFileSync(join(out, "marker"), "x");
    const r = runCli("convert", "--model", src, "--out", out);
    expect(r.code).toBe(2);
    expect(r.err).toContain("already exists (use --force");
    expect(readFileSync(join(out, "marker"), "utf8")).toBe("x");
    expect(runCli("convert", "--model", src, "--out", out, "--force").code).toBe(0);
    expect(existsSync(join(out, "marker"))).toBe(false);
    expect(existsSync(join(out, "model.safetensors"))).toBe(true);
    expect(existsSync(`${out}.partial`)).toBe(false);
  });

  test("a failure after the weights are written leaves neither DST nor DST.partial", () => {
    const d = join(tmp(), "m");
    makeHfModel(d, { layers: 1 });
    symlinkSync(join(d, "does-not-exist"), join(d, "tokenizer.json"));
    const out = join(tmp(), "o");
    const r = runCli("convert", "--model", d, "--out", out, "-q");
    expect(r.code).not.toBe(0);
    expect(r.err.trim().split("\n")).toHaveLength(1);
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.partial`)).toBe(false);
  });

  test("a failure with --force keeps the old DST", () => {
    const d = join(tmp(), "m");
    makeHfModel(d, { layers: 1 });
    symlinkSync(join(d, "does-not-exist"), join(d, "tokenizer.json"));
    const out = join(tmp(), "o");
    mkdirSync(out);
    writeFileSync(join(out, "marker"), "x");
    expect(runCli("convert", "--model", d, "--out", out, "--force").code).not.toBe(0);
    expect(readFileSync(join(out, "marker"), "utf8")).toBe("x");
    expect(existsSync(`${out}.partial`)).toBe(false);
  });
});
