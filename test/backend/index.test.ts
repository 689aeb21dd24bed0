import { expect, test } from "bun:test";

// getBackend caches its instance, so each case runs in a fresh process.
async function pick(env: string | undefined): Promise<string> {
  const code = `import { getBackend } from "./src/backend/index.ts";
try { console.log(getBackend().name); } catch (e) { console.log(e.name + ":" + e.code + ":" + e.message); }`;
  const proc = Bun.spawn([process.execPath, "-e", code], {
    cwd: `${import.meta.dir}/../..`,
    env: { ...process.env, RMLX_BACKEND: env ?? "" },
    stdout: "pipe",
  });
  return (await new Response(proc.stdout).text()).trim();
}

test("the native backend is the default", async () => {
  expect(await pick(undefined)).toBe("native");
  expect(await pick("native")).toBe("native");
});

test("RMLX_BACKEND=mlx is a clear unsupported error", async () => {
  expect(await pick("mlx")).toMatch(/^RmlxError:unsupported:.*mlx/);
});

test("an unknown backend name is rejected", async () => {
  expect(await pick("cuda9")).toMatch(/^RmlxError:invalid_argument:.*cuda9/);
});
