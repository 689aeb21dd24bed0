import type { EngineConfig } from "../engine/types.ts";
import { MetricsStore } from "../metrics/store.ts";
import { createApp } from "./app.ts";
import { CorsPolicy } from "./cors.ts";
import { EngineClient } from "./engine_client.ts";
import { RequestJournal } from "./journal.ts";
import { ModelManager } from "./models.ts";

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
}

export interface RunningServer {
  url: string;
  /** Stops taking requests, lets in-flight ones finish for up to `graceMs`, cancels the rest, stops the engine. */
  stop(graceMs?: number): Promise<void>;
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const engine = new EngineClient(opts.workerUrl, opts.engine);
  const models = new ModelManager(engine, opts.models, opts.idleUnloadS, opts.strictModelNames);
  const store = opts.metricsDb === null ? MetricsStore.disabled() : MetricsStore.open(opts.metricsDb);
  store.startRun({ kind: "serve", model: [...opts.models.keys()].join(",") });
  const app = createApp({ engine, models, journal: new RequestJournal(store) }, { apiKey: opts.apiKey });
  const cors = opts.cors?.length ? new CorsPolicy(opts.cors) : null;
  const server = Bun.serve({
    hostname: opts.host,
    port: opts.port,
    idleTimeout: 0,
    fetch: async (req) => (cors ? (cors.preflight(req) ?? cors.apply(req, await app.handle(req))) : app.handle(req)),
  });
  // With a single model there is nothing to choose: load it now, and /health says 503 until it is ready.
  if (models.models.size === 1) {
    const name = [...models.models.keys()][0]!;
    void models.preload(name).catch((e: Error) => process.stderr.write(`rmlx: cannot load ${name}: ${e.message}\n`));
  }
  return {
    url: `http://${opts.host.includes(":") ? `[${opts.host}]` : opts.host}:${server.port}`,
    async stop(graceMs = 10_000) {
      const closing = server.stop(false);
      const deadline = Date.now() + graceMs;
      while (engine.active > 0 && Date.now() < deadline) await Bun.sleep(20);
      engine.cancelAll();
      await Promise.race([closing, Bun.sleep(1000)]);
      models.close();
      await engine.shutdown();
      store.close();
    },
  };
}
