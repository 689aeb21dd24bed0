import type { EngineEvent } from "../engine/types.ts";
import type { MetricsStore } from "../metrics/store.ts";

interface Open {
  api: string;
  model: string;
  startedAt: number;
}

/** Writes one row per finished generation into the metrics store (read back by `rmlx metrics`). */
export class RequestJournal {
  private readonly open = new Map<string, Open>();

  constructor(private readonly store: MetricsStore) {}

  begin(id: string, api: string, model: string): void {
    if (this.store.enabled) this.open.set(id, { api, model, startedAt: Date.now() });
  }

  /** A generation that ended without "done" (cancelled, refused, failed). */
  forget(id: string): void {
    this.open.delete(id);
  }

  done(ev: Extract<EngineEvent, { type: "done" }>): void {
    const o = this.open.get(ev.id);
    if (!o) return;
    this.open.delete(ev.id);
    this.store.recordRequest({
      requestId: ev.id,
      model: o.model,
      api: o.api,
      startedAt: o.startedAt,
      endedAt: Date.now(),
      promptTokens: ev.usage.promptTokens,
      cachedTokens: ev.usage.cachedTokens,
      generatedTokens: ev.usage.completionTokens,
      ttftMs: ev.timing.ttftMs,
      decodeTps: ev.timing.decodeTps,
      promptTps: ev.timing.promptTps,
      finishReason: ev.finishReason,
      status: 200,
    });
  }
}
