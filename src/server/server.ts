import type { EngineConfig } from "../engine/types.ts";
import { RmlxError } from "../errors.ts";
import { MetricsStore } from "../metrics/store.ts";
import { createApp } from "./app.ts";
import { CorsPolicy } from "./cors.ts";
import { EngineClient } from "./engine_client.ts";
import { RequestJournal } from "./journal.ts";
import { logged, Logger } from "./log.ts";
import { ModelManager } from "./models.ts";
import type { ServerDefaults } from "./sampling.ts";

export interface ServerOptions {
  host: string;
  port: number;
  apiKey?: string;
  models: Map<string, string>;
  /** Only served names select a model; otherwise a single served model answers any name or none. */
  strictModelNames?: boolean;
  idleUnloadS: number;
  engine: EngineConfig;
  /** The engine worker's entry module (the real engine unless replaced, e.g. by a test double). */
  workerUrl: string | URL;
  /** The metrics database each finished request is recorded in; null records nothing. */
  metricsDb: string | null;
  /** Origins browsers may call from ('*' for any); none: no CORS headers. */
  cors?: string[];
  /** Defaults for requests that leave sampling fields or max_tokens out (--temp, ..., --max-tokens). */
  defaults?: ServerDefaults;
  log?: Logger;
}

export interface RunningServer {
  url: string;
  /**
   * Resolves when /health turns 200: at once with several models (each loads on first use), after the load with a
   * single one, which is loaded at start; rejects with the load's error.
   */
  ready: Promise<void>;
  /** Stops taking requests, lets in-flight ones finish for up to `graceMs`, cancels the rest, stops the engine. */
  stop(graceMs?: number): Promise<void>;
}

/** Bun.serve's failure to listen as one line: the port taken, a privileged port, an address this host lacks. */
function listenError(e: unknown, host: string, port: number): Error {
  const code = (e as NodeJS.ErrnoException)?.code;
  const where = `${host}:${port}`;
  if (code === "EADDRINUSE") return new RmlxError("invalid_argument", `port ${port} is in use on ${host} (another server? choose one with --port)`);
  if (code === "EACCES") return new RmlxError("invalid_argument", `no permission to listen on ${where} (ports below 1024 need privileges; choose one with --port)`);
  if (code === "EADDRNOTAVAIL") return new RmlxError("invalid_argument", `cannot listen on ${where}: this machine has no address ${host} (see --host)`);
  return new RmlxError("invalid_argument", `cannot listen on ${where}: ${(e as Error)?.message ?? String(e)}`);
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const log = opts.log ?? new Logger();
  // Set below, before the event loop can deliver a request.
  let handle!: (req: Request) => Promise<Response>;
  let server: ReturnType<typeof Bun.serve>;
  // Listen first: a port in use fails before anything is loaded.
  try {
    server = Bun.serve({ hostname: opts.host, port: opts.port, idleTimeout: 0, fetch: (req) => logged(log, req, handle) });
  } catch (e) {
    throw listenError(e, opts.host, opts.port);
  }
  const engine = new EngineClient(opts.workerUrl, opts.engine);
  const models = new ModelManager(engine, opts.models, opts.idleUnloadS, opts.strictModelNames);
  // With a single model there is nothing to choose: load it now, and /health says 503 until it is ready.
  const single = models.models.size === 1 ? [...models.models.keys()][0]! : undefined;
  const ready = single === undefined ? Promise.resolve() : models.preload(single);
  ready.catch(() => {});
  const store = opts.metricsDb === null ? MetricsStore.disabled() : MetricsStore.open(opts.metricsDb);
  store.startRun({ kind: "serve", model: [...opts.models.keys()].join(",") });
  const app = createApp({ engine, models, journal: new RequestJournal(store), defaults: opts.defaults, log }, { apiKey: opts.apiKey });
  const cors = opts.cors?.length ? new CorsPolicy(opts.cors) : null;
  handle = async (req) => (cors ? (cors.preflight(req) ?? cors.apply(req, await app.handle(req))) : app.handle(req));
  return {
    url: `http://${opts.host.includes(":") ? `[${opts.host}]` : opts.host}:${server.port}`,
    ready,
    async stop(graceMs = 10_000) {
      const closing = server.stop(false);
      const deadline = Date.now() + graceMs;
      while (engine.active > 0 && Date.now() < deadline) await Bun.sleep(20);
      engine.cancelAll();
      await Promise.race([closing, Bun.sleep(1000)]);
      models.close();
      // The worker writes the prefix cache's RAM blocks to the SSD tier before it exits.
      await engine.shutdown(opts.engine.kvSsd ? 120_000 : undefined);
      store.close();
    },
  };
}
