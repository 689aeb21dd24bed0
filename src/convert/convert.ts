// A whole conversion: plan, write everything into DST.partial, then rename it to DST. Any failure, or an
// interrupt, removes DST.partial and leaves no DST behind.
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { resolve } from "node:path";
import { RmlxError } from "../errors.ts";
import { SafetensorsWriter } from "../io/safetensors_write.ts";
import { runJob } from "./execute.ts";
import { MAX_SHARD_BYTES, copySideFiles, makeShards, writeConfig, writeIndex } from "./layout.ts";
import { type ConvertOptions, makePlan } from "./plan.ts";
import { TensorReader, openSource } from "./source.ts";

export interface ConvertRequest extends ConvertOptions {
  model: string;
  out: string;
  force: boolean;
  maxShardBytes?: number;
}

export interface ConvertProgress {
  /** Called once before data moves. */
  start(totalBytes: number, totalTensors: number): void;
  advance(bytes: number, tensorsDone: number): void;
  stop(): void;
}

export interface ConvertSummary {
  sourceBytes: number;
  outputBytes: number;
  totalParameters: number;
  bitsPerWeight: number;
  seconds: number;
  shards: number;
  tensors: number;
  copiedFiles: string[];
}

export async function convert(req: ConvertRequest, progress?: ConvertProgress): Promise<ConvertSummary> {
  const t0 = performance.now();
  const dst = resolve(req.out);
  const srcDir = resolve(req.model);
  if (dst === srcDir) throw new RmlxError("invalid_argument", "--out must differ from --model");
  if (existsSync(dst) && !req.force) throw new RmlxError("invalid_argument", `${req.out} already exists (use --force to replace it)`);
  const src = openSource(req.model);
  const plan = makePlan(src, req);
  const shards = makeShards(plan.entries, req.maxShardBytes ?? MAX_SHARD_BYTES);

  const partial = `${dst}.partial`;
  rmSync(partial, { recursive: true, force: true });
  mkdirSync(partial, { recursive: true });
  const writers: SafetensorsWriter[] = [];
  const reader = new TensorReader();
  const cleanup = () => {
    for (const w of writers) w.abort();
    reader.close();
    rmSync(partial, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals) => {
    progress?.stop();
    cleanup();
    process.stderr.write(`rmlx: interrupted (${sig}); removed ${partial}\n`);
    process.exit(130);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const byName = new Map<string, SafetensorsWriter>();
    for (const s of shards) {
      const w = SafetensorsWriter.create(`${partial}/${s.file}`, s.entries, { format: "mlx" });
      writers.push(w);
      for (const e of s.entries) byName.set(e.name, w);
    }
    const writerFor = (name: string) => {
      const w = byName.get(name);
      if (!w) throw new RmlxError("internal", `no shard holds '${name}'`);
      return w;
    };
    const inputBytes = (j: (typeof plan.jobs)[number]) => {
      const i = j.input;
      if (i.kind === "raw") return i.src.nbytes;
      if (i.kind === "float") return i.srcs.reduce((a, s) => a + s.nbytes, 0);
      return i.weight.nbytes + i.scales.nbytes + (i.biases?.nbytes ?? 0);
    };
    const total = plan.jobs.reduce((a, j) => a + inputBytes(j), 0);
    progress?.start(total, plan.jobs.length);
    let done = 0;
    for (const job of plan.jobs) {
      await runJob(job, reader, writerFor, (b) => progress?.advance(b, done));
      done++;
      progress?.advance(0, done);
    }
    for (const w of writers) w.close();
    reader.close();
    writeIndex(partial, shards, plan.totalBytes, plan.totalParameters);
    writeConfig(partial, src.config, plan.quantization);
    const copiedFiles = copySideFiles(src.dir, partial);
    progress?.stop();
    if (existsSync(dst)) rmSync(dst, { recursive: true, force: true });
    renameSync(partial, dst);
    return {
      sourceBytes: src.totalBytes,
      outputBytes: plan.totalBytes,
      totalParameters: plan.totalParameters,
      bitsPerWeight: plan.totalParameters > 0 ? (plan.totalBytes * 8) / plan.totalParameters : 0,
      seconds: (performance.now() - t0) / 1000,
      shards: shards.length,
      tensors: plan.entries.length,
      copiedFiles,
    };
  } catch (err) {
    progress?.stop();
    cleanup();
    throw err;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
