// The model fixtures (transformers float32 references: test/models/fixtures.test.ts, gemma4.test.ts,
// hybrid_fixtures.test.ts for the Gated DeltaNet hybrids and the ternary ones of bitnet_fixtures.test.ts, with
// bitnet_float.test.ts for BitNet's float activations), the batching consistency tests, greedy decoding over an
// 8-bit KV cache (kv_greedy) and the server's end-to-end and speculative tests run with the mlx backend whenever
// libmlxc can be loaded: same tolerances, same golden tokens.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { probeMlx } from "../../src/backend/mlx/lib.ts";

const probe = probeMlx();
if (!probe.ok) console.warn(`mlx model tests skipped: ${probe.reason}`);
const skipReason = probe.ok ? "" : ` (skipped: ${probe.reason})`;

test.skipIf(!probe.ok).each([
  "models/fixtures",
  "models/consistency",
  "models/gemma4",
  "models/hybrid_fixtures",
  "models/bitnet_fixtures",
  "models/bitnet_float",
  "models/kv_greedy",
  // The server's own path: concurrent requests through the scheduler's pipelined steps, a draft model beside the
  // target on one backend.
  "server/e2e",
  "server/speculative",
])(
  `the %s tests pass on the mlx backend${skipReason}`,
  async (name) => {
    const proc = Bun.spawn([process.execPath, "test", "--timeout", "120000", `test/${name}.test.ts`], {
      cwd: join(import.meta.dir, "../.."),
      env: { ...process.env, RMLX_BACKEND: "mlx", RMLX_TEST_BACKEND: "mlx", RMLX_COMPUTE_DTYPE: "f32", RMLX_MLX_VERIFY: "1" },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [o, e] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    const code = await proc.exited;
    if (code !== 0) console.error(`${o}\n${e}`.split("\n").filter((l) => /\(fail\)|error|Error|Expected|Received/.test(l)).slice(0, 60).join("\n"));
    expect(code).toBe(0);
  },
  600_000,
);
