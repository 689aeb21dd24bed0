// Chooses the Backend: --backend / RMLX_BACKEND = auto (the default), native or mlx. auto takes mlx when libmlxc
// loads and MLX sees a Metal device, else native; mlx on a machine without Metal runs MLX's own CPU backend.
import { RmlxError } from "../errors.ts";
import type { Backend } from "./backend.ts";
import { MlxBackend } from "./mlx/backend.ts";
import { probeMlx } from "./mlx/lib.ts";
import { NativeBackend } from "./native/backend.ts";
import { parseBackendChoice } from "./choice.ts";

export { BACKEND_CHOICES, parseBackendChoice, type BackendChoice } from "./choice.ts";

const instances = new Map<"native" | "mlx", Backend>();

/** Which backend a choice resolves to here, and why (for `rmlx info`). Loads libmlxc when it has to look. */
export function resolveBackend(choice?: string): { name: "native" | "mlx"; reason: string } {
  const c = parseBackendChoice(choice ?? process.env.RMLX_BACKEND);
  if (c === "native") return { name: "native", reason: "asked for (--backend native)" };
  const p = probeMlx();
  if (c === "mlx") {
    if (!p.ok) throw new RmlxError("unsupported", `the mlx backend is not available: ${p.reason}`);
    return { name: "mlx", reason: `asked for (--backend mlx); ${p.lib.path}, MLX ${p.lib.version}, ${p.lib.metal ? "Metal" : "CPU only"}` };
  }
  if (!p.ok) return { name: "native", reason: `auto: ${p.reason}` };
  if (!p.lib.metal) return { name: "native", reason: `auto: ${p.lib.path} loads but MLX sees no Metal device` };
  return { name: "mlx", reason: `auto: ${p.lib.path} (MLX ${p.lib.version}) on a Metal device` };
}

/** The process-wide backend for a choice (default: RMLX_BACKEND, else auto), created on first use. */
export function getBackend(choice?: string): Backend {
  const { name } = resolveBackend(choice);
  let b = instances.get(name);
  if (!b) {
    b = name === "mlx" ? new MlxBackend() : new NativeBackend();
    instances.set(name, b);
  }
  return b;
}

export { NativeBackend };
