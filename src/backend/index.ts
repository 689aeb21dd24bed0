// Chooses the Backend: RMLX_BACKEND=native (the default) or mlx (not built yet).
import { RmlxError } from "../errors.ts";
import type { Backend } from "./backend.ts";
import { NativeBackend } from "./native/backend.ts";

let instance: Backend | undefined;

/** The process-wide backend, created on first use. */
export function getBackend(): Backend {
  if (instance) return instance;
  const want = (process.env.RMLX_BACKEND ?? "native").trim().toLowerCase();
  if (want === "mlx") throw new RmlxError("unsupported", "the mlx backend is not available in this build (RMLX_BACKEND=mlx)");
  if (want !== "native" && want !== "") throw new RmlxError("invalid_argument", `unknown backend '${want}' (RMLX_BACKEND: native or mlx)`);
  instance = new NativeBackend();
  return instance;
}

export { NativeBackend };
