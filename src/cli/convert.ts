import { Option, type Command } from "commander";
import cliProgress from "cli-progress";
import { RmlxError } from "../errors.ts";
import { type ConvertProgress, type ConvertSummary, convert } from "../convert/convert.ts";
import { parseDTypeFlag } from "../quant/dtype.ts";
import { RECIPES, parseRecipe } from "../quant/recipes.ts";
import { QUANT_MODES, parseMode } from "../quant/spec.ts";
import { action } from "./action.ts";
import { addBackendOptions, applyBackendFlags, type BackendFlags } from "./backend_option.ts";
import { addSpellings, type Spelling } from "./spellings.ts";

interface ConvertFlags extends BackendFlags {
  model: string;
  out: string;
  quantize?: boolean;
  bits?: string;
  groupSize?: string;
  mode: string;
  recipe?: string;
  dtype?: string;
  dequantize?: boolean;
  force?: boolean;
  verify?: boolean;
  maxShardBytes?: string;
  hfPath?: string;
  mlxPath?: string;
  qBits?: string;
  qGroupSize?: string;
  qMode?: string;
}

// mlx_lm.convert's spellings of the same flags.
const MLX_LM_SPELLINGS: Spelling[] = [
  { flags: "--hf-path <dir>", key: "hfPath", ours: "model", ourFlag: "--model" },
  { flags: "--mlx-path <dir>", key: "mlxPath", ours: "out", ourFlag: "--out" },
  { flags: "--q-bits <n>", key: "qBits", ours: "bits", ourFlag: "--bits" },
  { flags: "--q-group-size <n>", key: "qGroupSize", ours: "groupSize", ourFlag: "--group-size" },
  { flags: "--q-mode <mode>", key: "qMode", ours: "mode", ourFlag: "--mode" },
];

function intFlag(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) throw new RmlxError("invalid_argument", `${name} must be a positive integer, not '${v}'`);
  return Number(v);
}

function mib(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

function progressBar(): ConvertProgress | undefined {
  if (!process.stderr.isTTY) return undefined;
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: "converting [{bar}] {percentage}% | {done}/{all} MiB | {tensors}/{jobs} tensors | eta {eta_formatted}",
      hideCursor: true,
      clearOnComplete: true,
    },
    cliProgress.Presets.shades_classic,
  );
  let value = 0;
  let jobs = 0;
  let running = false;
  return {
    start(total, n) {
      jobs = n;
      running = true;
      bar.start(total, 0, { done: "0", all: (total / 2 ** 20).toFixed(0), tensors: 0, jobs });
    },
    advance(bytes, tensors) {
      value += bytes;
      bar.update(value, { done: (value / 2 ** 20).toFixed(0), tensors, jobs });
    },
    stop() {
      if (running) bar.stop();
      running = false;
    },
  };
}

function printSummary(out: string, s: ConvertSummary): void {
  const lines = [
    `wrote ${out}: ${s.tensors} tensors in ${s.shards} file${s.shards === 1 ? "" : "s"}`,
    `size ${mib(s.sourceBytes)} -> ${mib(s.outputBytes)} (${((s.outputBytes / Math.max(1, s.sourceBytes)) * 100).toFixed(1)}%)`,
    `${s.bitsPerWeight.toFixed(3)} bits per weight over ${s.totalParameters.toLocaleString("en-US")} parameters`,
    `done in ${s.seconds.toFixed(1)} s`,
  ];
  process.stderr.write(`${lines.join("\n")}\n`);
}

export function register(program: Command): void {
  const cmd = addBackendOptions(program.command("convert"))
    .description("Convert a Hugging Face checkpoint to MLX, or re-quantize / dequantize an MLX model")
    .option("-m, --model <dir>", "source model directory (Hugging Face safetensors or MLX; also --hf-path)")
    .option("--out <dir>", "output directory (also --mlx-path)")
    .option("-q, --quantize", "quantize Linear, Embedding and expert weights")
    .option("--bits <n>", "bits per weight (affine: 2, 3, 4, 5, 6, 8; default per mode; also --q-bits)")
    .option("--group-size <n>", "values per scale (affine: 32, 64, 128; default per mode; also --q-group-size)")
    .option("--mode <mode>", `quantization mode: ${QUANT_MODES.join(", ")} (default: "affine"; also --q-mode)`)
    .option("--recipe <name>", `mixed-bit affine recipe: ${Object.keys(RECIPES).join(", ")} (implies -q)`)
    .option("--dtype <dtype>", "dtype of float parameters: bf16, f16, f32 (default: config torch_dtype)")
    .option("-d, --dequantize", "write a quantized model back as floats")
    .option("--force", "replace --out if it exists")
    .option("--verify", "compare next-token distributions of the output against the source")
    .addOption(new Option("--max-shard-bytes <n>").hideHelp());
  addSpellings(cmd, MLX_LM_SPELLINGS)
    .hook("preAction", (c) => {
      if (c.getOptionValue("model") === undefined) c.error("required option '-m, --model <dir>' not specified");
      if (c.getOptionValue("out") === undefined) c.error("required option '--out <dir>' not specified");
      if (c.getOptionValue("mode") === undefined) c.setOptionValue("mode", "affine");
    })
    .action(
      action(async (flags: ConvertFlags) => {
        const mode = parseMode(flags.mode);
        const recipe = flags.recipe === undefined ? undefined : parseRecipe(flags.recipe);
        const bits = intFlag("--bits", flags.bits);
        const groupSize = intFlag("--group-size", flags.groupSize);
        const quantize = Boolean(flags.quantize || recipe);
        if (!quantize && (bits !== undefined || groupSize !== undefined || flags.mode !== "affine"))
          throw new RmlxError("invalid_argument", "--bits, --group-size and --mode need -q");
        const req = {
          model: flags.model,
          out: flags.out,
          force: Boolean(flags.force),
          quantize,
          mode,
          dequantize: Boolean(flags.dequantize),
          ...(bits !== undefined ? { bits } : {}),
          ...(groupSize !== undefined ? { groupSize } : {}),
          ...(recipe ? { recipe } : {}),
          ...(flags.dtype ? { dtype: parseDTypeFlag(flags.dtype) } : {}),
          ...(flags.maxShardBytes ? { maxShardBytes: intFlag("--max-shard-bytes", flags.maxShardBytes)! } : {}),
        };
        const summary = await convert(req, progressBar());
        printSummary(flags.out, summary);
        if (flags.verify) {
          applyBackendFlags(flags);
          // loaded only when asked for: verification needs the compute backend, conversion does not
          const { verifyConversion } = await import("../convert/verify.ts");
          const v = verifyConversion(flags.model, flags.out);
          process.stderr.write(
            `verify: ${v.prompts} prompts, ${v.positions} positions: KL(source || output) mean ${v.meanKl.toExponential(3)}, ` +
              `max ${v.maxKl.toExponential(3)}; top-1 agreement ${(v.top1Agreement * 100).toFixed(1)}%\n`,
          );
        }
      }),
    );
}
