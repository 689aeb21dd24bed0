// The SSD tier of the prefix cache. Block records refuse corrupt, truncated and foreign bytes; the store keeps its
// budget least recently used first across models, survives a restart, drops unsound files and stops spilling
// after a failed write (a full disk) while what it holds still serves; the directory lock refuses a live second
// server and takes over a dead one's. End to end on fixture models (a plain transformer, with f32 and q8 pages,
// and one with sliding-window layers in a space of their own): a prompt whose blocks went to disk, in the same
// process or after a restart, is served from them and gives exactly the tokens of a cold run.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getBackend } from "../../../src/backend/index.ts";
import { KvCache } from "../../../src/engine/kv/kv_cache.ts";
import { lockSsdDir } from "../../../src/engine/kv/ssd_lock.ts";
import { decodeRecord, encodeRecord } from "../../../src/engine/kv/ssd_record.ts";
import { SsdStore } from "../../../src/engine/kv/ssd_store.ts";
import { modelIdentity, SsdTier } from "../../../src/engine/kv/ssd_tier.ts";
import { Scheduler } from "../../../src/engine/scheduler.ts";
import { tokenModel } from "../../../src/engine/session.ts";
import { DEFAULT_SAMPLING, type EngineEvent } from "../../../src/engine/types.ts";
import { openModelDir } from "../../../src/io/model_dir.ts";
import type { Model } from "../../../src/models/model.ts";
import { loadModel } from "../../../src/models/registry.ts";

const root = mkdtempSync(join(tmpdir(), "rmlx-ssd-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const freshDir = () => join(root, `d${++dirs}`);

const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 255);
const quiet = () => {
  const warnings: string[] = [];
  return { warnings, warn: (m: string) => warnings.push(m) };
};
const files = (dir: string) => readdirSync(join(dir, "blocks"), { recursive: true }).map(String).filter((f) => f.endsWith(".kvb"));

describe("block records", () => {
  const rec = { spaces: [bytes(64, 1), null, bytes(32, 2)], extra: bytes(5, 3) };
  const file = encodeRecord(7n, 0xfedcba9876543210n, rec);

  test("a record reads back as written, given back spaces and the extra payload included", () => {
    const back = decodeRecord(file, 7n, 0xfedcba9876543210n);
    if (typeof back === "string") throw new Error(back);
    expect(back.spaces.map((b) => (b ? [...b] : null))).toEqual(rec.spaces.map((b) => (b ? [...b] : null)));
    expect([...back.extra]).toEqual([...rec.extra]);
  });

  test("a flipped byte, a cut file, another namespace or another block are refused", () => {
    for (const at of [0, 20, 100, file.length - 1]) {
      const bad = file.slice();
      bad[at]! ^= 1;
      expect(typeof decodeRecord(bad, 7n, 0xfedcba9876543210n)).toBe("string");
    }
    expect(decodeRecord(file.subarray(0, file.length - 9), 7n, 0xfedcba9876543210n)).toBe("checksum mismatch");
    expect(decodeRecord(file.subarray(0, 10), 7n, 0xfedcba9876543210n)).toBe("not a block file");
    expect(decodeRecord(file, 8n, 0xfedcba9876543210n)).toBe("another model, layout or codec");
    expect(decodeRecord(file, 7n, 1n)).toBe("another block");
  });
});

describe("SSD store", () => {
  const rec = (seed: number) => ({ spaces: [bytes(1000, seed)], extra: new Uint8Array(0) });
  /** Puts block `hash` of the store's namespace with the record of `seed`. */
  const put = (s: SsdStore, ns: bigint, hash: bigint, seed: number) => s.put(hash, encodeRecord(ns, hash, rec(seed)));

  test("what one store wrote, a new one on the same directory reads; a queued record is served before it is written", async () => {
    const dir = freshDir();
    const a = new SsdStore({ dir, budgetBytes: 1e6, ns: 1n });
    put(a, 1n, 10n, 1);
    expect(a.has(10n)).toBe(true);
    expect([...a.read(10n)!.spaces[0]!]).toEqual([...rec(1).spaces[0]]);
    await a.close();
    const b = new SsdStore({ dir, budgetBytes: 1e6, ns: 1n });
    expect(b.has(10n)).toBe(true);
    expect([...b.read(10n)!.spaces[0]!]).toEqual([...rec(1).spaces[0]]);
    const other = new SsdStore({ dir, budgetBytes: 1e6, ns: 2n });
    expect(other.has(10n)).toBe(false);
    await Promise.all([b.close(), other.close()]);
    expect(readdirSync(join(dir, "tmp"))).toEqual([]);
  });

  test("the budget holds across namespaces: the least recently used blocks leave first", async () => {
    const dir = freshDir();
    const size = encodeRecord(1n, 1n, rec(0)).byteLength;
    const a = new SsdStore({ dir, budgetBytes: 3 * size, ns: 1n });
    const b = new SsdStore({ dir, budgetBytes: 3 * size, ns: 2n });
    put(a, 1n, 1n, 1);
    put(a, 1n, 2n, 2);
    await a.flush();
    put(b, 2n, 1n, 3);
    await b.flush();
    a.touch([1n]);
    await a.flush();
    put(b, 2n, 2n, 4);
    await b.flush();
    // a's block 2 was the least recently used one.
    expect(a.read(2n)).toBeNull();
    expect(a.read(1n)).not.toBeNull();
    expect(b.read(1n)).not.toBeNull();
    expect(files(dir).length).toBe(3);
    await Promise.all([a.close(), b.close()]);
  });

  test("a corrupt or truncated file is dropped with one warning, never served", async () => {
    const dir = freshDir();
    const q = quiet();
    const s = new SsdStore({ dir, budgetBytes: 1e6, ns: 1n, warn: q.warn });
    put(s, 1n, 1n, 1);
    put(s, 1n, 2n, 2);
    await s.flush();
    const [f1, f2] = files(dir).sort().map((f) => join(dir, "blocks", f));
    const b1 = readFileSync(f1!);
    b1[500] ^= 0x40;
    writeFileSync(f1!, b1);
    writeFileSync(f2!, readFileSync(f2!).subarray(0, 700));
    expect(s.read(1n)).toBeNull();
    expect(s.read(2n)).toBeNull();
    expect(s.has(1n) || s.has(2n)).toBe(false);
    expect(existsSync(f1!) || existsSync(f2!)).toBe(false);
    expect(q.warnings.length).toBe(1);
    expect(q.warnings[0]).toContain("checksum mismatch");
    expect(s.stats.dropped).toBe(2);
    await s.close();
  });

  test("a failed write (a full disk) stops spilling with one warning; blocks already on disk still serve", async () => {
    const dir = freshDir();
    const q = quiet();
    let full = false;
    const writeFile = (p: string, b: Uint8Array) => {
      if (!full) return Bun.write(p, b);
      return Promise.reject(Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" }));
    };
    const s = new SsdStore({ dir, budgetBytes: 1e6, ns: 1n, warn: q.warn, writeFile });
    put(s, 1n, 1n, 1);
    await s.flush();
    full = true;
    for (let i = 2n; i < 6n; i++) put(s, 1n, i, Number(i));
    await s.flush();
    put(s, 1n, 9n, 9);
    await s.flush();
    expect(q.warnings).toEqual([expect.stringContaining("the disk is full")]);
    expect(s.spilling).toBe(false);
    expect(s.read(1n)).not.toBeNull();
    for (const h of [2n, 5n, 9n]) expect(s.read(h)).toBeNull();
    expect(files(dir).length).toBe(1);
    expect(readdirSync(join(dir, "tmp"))).toEqual([]);
    await s.close();
  });
});

describe("SSD directory lock", () => {
  test("a live process's lock is refused with one line; a dead one's is taken over", async () => {
    const dir = freshDir();
    const other = Bun.spawn(["sleep", "30"]);
    try {
      const first = lockSsdDir(dir);
      first();
      writeFileSync(join(dir, "lock"), `${other.pid}\n`);
      expect(() => lockSsdDir(dir)).toThrow(`--kv-ssd ${dir} is in use by another rmlx serve (pid ${other.pid}); give each server a directory of its own`);
    } finally {
      other.kill();
      await other.exited;
    }
    const release = lockSsdDir(dir);
    expect(readFileSync(join(dir, "lock"), "utf8").trim()).toBe(String(process.pid));
    release();
    expect(existsSync(join(dir, "lock"))).toBe(false);
  });
});

const FIXTURES = join(import.meta.dir, "../../fixtures/models");
const BLOCK = 16;

/** A scheduler over a fresh cache of a fixture model, with an SSD tier on dir. */
function serve(model: Model, modelDir: string, dir: string, opts: { codec?: string; numBlocks?: number; warn?: (m: string) => void; writeFile?: (p: string, b: Uint8Array) => Promise<unknown>; maxQueuedBytes?: number } = {}) {
  const cache = new KvCache(model.backend, model.layers, {
    blockSize: BLOCK,
    numBlocks: opts.numBlocks ?? 24,
    codec: opts.codec ?? "f32",
    windowed: true,
    sizing: { sequences: 2, stepTokens: 64 },
  });
  const tier = new SsdTier(cache, { dir, budgetBytes: 1e9, modelId: modelIdentity(modelDir), warn: opts.warn, writeFile: opts.writeFile, maxQueuedBytes: opts.maxQueuedBytes });
  const events: EngineEvent[] = [];
  const sched = new Scheduler({ ...tokenModel(model, cache), prefixTier: tier }, { maxRunning: 2, maxWaiting: 16, prefillChunk: 64, prefixCache: true }, (e) => events.push(e));
  let n = 0;
  const run = (prompt: number[]) => {
    const id = `r${++n}`;
    sched.submit({ id, model: "m", prompt, maxTokens: 8, sampling: { ...DEFAULT_SAMPLING, temperature: 0 }, stop: [], stopTokenIds: [], ignoreEos: true });
    while (sched.hasWork) sched.step();
    const err = events.find((e) => e.type === "error" && e.id === id);
    if (err) throw new Error(JSON.stringify(err));
    const done = events.find((e) => e.type === "done" && e.id === id) as Extract<EngineEvent, { type: "done" }>;
    return { tokens: events.flatMap((e) => (e.type === "delta" && e.id === id ? e.tokenIds : [])), cached: done.usage.cachedTokens, disk: done.usage.cachedDiskTokens ?? 0 };
  };
  /** A graceful shutdown: RAM blocks to disk, then wait for the writer. */
  const stop = async () => {
    await sched.prefix!.keepAllPaced();
    await tier.store.close();
    cache.dispose();
  };
  return { run, stop, tier, cache };
}

const prompt = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (seed * 37 + i * 11) % 300);

// The hybrid's records carry the recurrent-state snapshot of their block as the extra payload.
for (const [name, codec] of [["qwen3", "f32"], ["qwen3", "q8"], ["gemma3", "f16"], ["hybrid/qwen3_5_dense", "f32"]] as const) {
  describe(`SSD tier end to end: ${name}, ${codec} pages`, () => {
    const modelDir = join(FIXTURES, name);
    const model = loadModel(getBackend(), openModelDir(modelDir));
    const p = prompt(150, 1);
    const full = Math.floor((p.length - 1) / BLOCK) * BLOCK;

    test("blocks evicted from RAM come back from disk; a restart serves them too; same tokens as a cold run", async () => {
      const dir = freshDir();
      const cold = serve(model, modelDir, freshDir(), { codec });
      const reference = cold.run(p);
      await cold.stop();
      expect(reference.cached).toBe(0);

      const a = serve(model, modelDir, dir, { codec });
      expect(a.run(p)).toEqual(reference);
      // Two other long prompts push the first one's blocks out of the 24 in RAM.
      a.run(prompt(150, 2));
      a.run(prompt(150, 3));
      await a.tier.store.flush();
      expect(a.tier.store.stats.written).toBeGreaterThan(0);
      const again = a.run(p);
      expect(again.tokens).toEqual(reference.tokens);
      expect(again.cached).toBe(full);
      expect(again.disk).toBeGreaterThan(0);
      await a.stop();

      const b = serve(model, modelDir, dir, { codec });
      const restarted = b.run(p);
      expect(restarted).toEqual({ tokens: reference.tokens, cached: full, disk: full });
      // Now in RAM as well: a RAM hit.
      expect(b.run(p)).toEqual({ tokens: reference.tokens, cached: full, disk: 0 });
      await b.stop();
    });

    test("a graceful shutdown writes every RAM block though they exceed the write queue; a restart serves all of them", async () => {
      const dir = freshDir();
      // A queue of about one block's record: without pacing, all but the first block would be skipped.
      const a = serve(model, modelDir, dir, { codec, numBlocks: 64, maxQueuedBytes: 1 });
      const first = a.run(p);
      await a.stop();
      expect(a.tier.store.stats.skipped).toBe(0);
      const b = serve(model, modelDir, dir, { codec, numBlocks: 64 });
      expect(b.run(p)).toEqual({ tokens: first.tokens, cached: full, disk: full });
      await b.stop();
    });

    test("corrupt block files are dropped and their tokens recomputed; the output is unchanged", async () => {
      const dir = freshDir();
      const a = serve(model, modelDir, dir, { codec });
      const reference = a.run(p);
      await a.stop();
      const names = files(dir).map((f) => join(dir, "blocks", f));
      expect(names.length).toBeGreaterThan(0);
      for (const f of names) {
        const b = readFileSync(f);
        b[Math.floor(b.length / 2)] ^= 0xff;
        writeFileSync(f, b);
      }
      const q = quiet();
      const b = serve(model, modelDir, dir, { codec, warn: q.warn });
      expect(b.run(p)).toEqual({ tokens: reference.tokens, cached: 0, disk: 0 });
      expect(q.warnings.length).toBe(1);
      await b.stop();
    });
  });
}

describe("SSD tier end to end: failures and foreign files", () => {
  const modelDir = join(FIXTURES, "qwen3");
  const model = loadModel(getBackend(), openModelDir(modelDir));
  const p = prompt(150, 4);

  test("a full disk stops spilling with one warning and serving goes on with the same tokens", async () => {
    const q = quiet();
    const writeFile = () => Promise.reject(Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" }));
    const a = serve(model, modelDir, freshDir(), { warn: q.warn, writeFile });
    const first = a.run(p);
    a.run(prompt(150, 5));
    a.run(prompt(150, 6));
    await a.tier.store.flush();
    const again = a.run(p);
    a.run(prompt(150, 7));
    await a.tier.store.flush();
    expect(again.tokens).toEqual(first.tokens);
    expect(again.disk).toBe(0);
    expect(q.warnings.length).toBe(1);
    expect(q.warnings[0]).toContain("the disk is full");
    await a.stop();
  });

  test("blocks of another codec or another model in the same directory are never served", async () => {
    const dir = freshDir();
    const a = serve(model, modelDir, dir, { codec: "f32" });
    const reference = a.run(p);
    await a.stop();
    const b = serve(model, modelDir, dir, { codec: "f16" });
    expect(b.run(p).cached).toBe(0);
    await b.stop();
    const llamaDir = join(FIXTURES, "llama_gqa");
    const c = serve(loadModel(getBackend(), openModelDir(llamaDir)), llamaDir, dir, { codec: "f32" });
    expect(c.run(p).cached).toBe(0);
    await c.stop();
    const d = serve(model, modelDir, dir, { codec: "f32" });
    expect(d.run(p)).toEqual({ ...reference, cached: 144, disk: 144 });
    await d.stop();
  });
});
