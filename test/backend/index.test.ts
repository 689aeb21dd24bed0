import { expect, test } from "bun:test";
import { probeMlx } from "../../src/backend/mlx/lib.ts";

const MISSING_LIB = "/nonexistent/libmlxc.so";

// getBackend caches its instance, so each case runs in a fresh process.
async function pick(env: string | undefined, mlxLib = MISSING_LIB): Promise<string> {
  const code = `import { getBackend } from "./src/backend/index.ts";
try { console.log(getBackend().name); } catch (e) { console.log(e.name + ":" + e.code + ":" + e.message); }`;
  const proc = Bun.spawn([process.execPath, "-e", code], {
    cwd: `${import.meta.dir}/../..`,
    env: { ...process.env, RMLX_BACKEND: env ?? "", RMLX_MLX_C_LIB: mlxLib },
    stdout: "pipe",
  });
  return (await new Response(proc.stdout).text()).trim();
}

test("the native backend is the default where libmlxc is missing", async () => {
  expect(await pick(undefined)).toBe("native");
  expect(await pick("auto")).toBe("native");
  expect(await pick("native")).toBe("native");
});

test("RMLX_BACKEND=mlx without libmlxc is a clear unsupported error", async () => {
  expect(await pick("mlx")).toMatch(/^RmlxError:unsupported:.*mlx.*nonexistent/);
});

test("an unknown backend name is rejected", async () => {
  expect(await pick("cuda9")).toMatch(/^RmlxError:invalid_argument:.*cuda9/);
});

const probe = probeMlx();
test.skipIf(!probe.ok)("with libmlxc: mlx when asked for; auto takes mlx only on a Metal device", async () => {
  if (!probe.ok) return;
  expect(await pick("mlx", probe.lib.path)).toBe("mlx");
  expect(await pick("auto", probe.lib.path)).toBe(probe.lib.metal ? "mlx" : "native");
});

// The native library takes RMLX_GEMV and RMLX_GEMM as it loads (a Worker's process.env is not the C environment).
async function libMode(env: "RMLX_GEMV" | "RMLX_GEMM", value: string, extra: Record<string, string> = {}): Promise<string> {
  const read = env === "RMLX_GEMV" ? "rmlx_gemv_mode" : "rmlx_gemm_mode";
  const code = `import { native } from "./src/backend/native/lib.ts";
try { console.log(String(native().${read}())); } catch (e) { console.log(e.name + ":" + e.code + ":" + e.message); }`;
  const proc = Bun.spawn([process.execPath, "-e", code], {
    cwd: `${import.meta.dir}/../..`,
    env: { ...process.env, [env]: value, ...extra },
    stdout: "pipe",
  });
  return (await new Response(proc.stdout).text()).trim();
}
const gemvMode = (value: string) => libMode("RMLX_GEMV", value);
const gemmMode = (value: string) => libMode("RMLX_GEMM", value);

test("RMLX_GEMM picks the prefill-product arithmetic; auto is the default; other names are rejected", async () => {
  // auto on the AVX-512 variants (x16 for weights that allow it), else f32
  expect(["auto", "f32"]).toContain(await gemmMode(""));
  expect(await gemmMode("")).toBe(await gemmMode("auto"));
  // auto follows exact decode products
  expect(await libMode("RMLX_GEMM", "auto", { RMLX_GEMV: "f32" })).toBe("f32");
  expect(await gemmMode("f32")).toBe("f32");
  // bf16 where the CPU has AVX512-BF16, else x16 on AVX-512, else f32
  expect(["bf16", "x16", "f32"]).toContain(await gemmMode("BF16"));
  // x16 on the AVX-512 variants, else f32
  expect(["x16", "f32"]).toContain(await gemmMode("x16"));
  expect(await gemmMode("int8")).toMatch(/^RmlxError:invalid_argument:.*int8/);
});

test("RMLX_GEMV picks the decode-product arithmetic; x16 is the default; other names are rejected", async () => {
  expect(await gemvMode("")).toBe("x16");
  expect(await gemvMode("f32")).toBe("f32");
  expect(await gemvMode("X16")).toBe("x16");
  expect(await gemvMode("int8")).toMatch(/^RmlxError:invalid_argument:.*int8/);
});
