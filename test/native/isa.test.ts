// RMLX_ISA names the kernel variant; a name the library does not know is an error, never a silent fallback.
import { ptr } from "bun:ffi";
import { expect, test } from "bun:test";
import { join } from "node:path";
import { native } from "../../src/backend/native/lib.ts";

const ROOT = join(import.meta.dir, "..", "..");

// The library reads RMLX_ISA once, as it starts: each case runs in a fresh process.
async function isaWith(env: string): Promise<string> {
  const code = `import { native } from "./src/backend/native/lib.ts";
try { console.log(String(native().rmlx_isa())); } catch (e) { console.log(e.name + ":" + e.code + ":" + e.message); }`;
  const proc = Bun.spawn([process.execPath, "-e", code], { cwd: ROOT, env: { ...process.env, RMLX_ISA: env }, stdout: "pipe" });
  return (await new Response(proc.stdout).text()).trim();
}

test("RMLX_ISA picks the variant; unset means the best the CPU has", async () => {
  const best = String(native().rmlx_isa());
  expect(await isaWith("")).toBe(best);
  expect(await isaWith("scalar")).toBe("scalar");
});

test("an unknown RMLX_ISA is an invalid_argument error naming the choices", async () => {
  expect(await isaWith("avx9")).toBe("RmlxError:invalid_argument:RMLX_ISA=avx9 is not one of avx512vnni, avx512, avx2, scalar");
});

test("rmlx_set_isa refuses an unknown name and keeps the variant in use", () => {
  const lib = native();
  const before = String(lib.rmlx_isa());
  expect(lib.rmlx_set_isa(ptr(Buffer.from("avx9\0")))).toBe(1);
  expect(String(lib.rmlx_last_error())).toContain("avx9 is not one of");
  expect(String(lib.rmlx_isa())).toBe(before);
});

test("the CLI reports an unknown RMLX_ISA in one line and exits 2", () => {
  const p = Bun.spawnSync([join(ROOT, "dist", "rmlx"), "generate", "--prompt", "hi", "--max-tokens", "1"], {
    env: { ...process.env, RMLX_ISA: "avx9" },
    stdout: "pipe",
    stderr: "pipe",
  });
  expect(p.exitCode).toBe(2);
  expect(p.stderr.toString().trim().split("\n")).toEqual(["rmlx: RMLX_ISA=avx9 is not one of avx512vnni, avx512, avx2, scalar"]);
});

test("rmlx serve refuses an unknown RMLX_ISA before it listens", () => {
  const p = Bun.spawnSync([join(ROOT, "dist", "rmlx"), "serve", "--port", "0"], {
    env: { ...process.env, RMLX_ISA: "avx9" },
    stdout: "pipe",
    stderr: "pipe",
    timeout: 20_000,
  });
  expect(p.exitCode).toBe(2);
  expect(p.stderr.toString().trim().split("\n")).toEqual(["rmlx: RMLX_ISA=avx9 is not one of avx512vnni, avx512, avx2, scalar"]);
});
