import { CLIENT_CLOSED_STATUS, type MetricsStore } from "../metrics/store.ts";
import type { GenerationEnd } from "./engine_client.ts";
import { fromCode } from "./errors.ts";

interface Open {
  api: string;
  model: string;
  startedAt: number;
}

/**
 * Writes one row per generation into the metrics store (read back by `rmlx metrics`): finished ones with status
 * 200, cancelled ones with CLIENT_CLOSED_STATUS and what they had generated, failed ones with their HTTP status.
 */
export class RequestJournal {
  private readonly open = new Map<string, Open>();

  constructor(private readonly store: MetricsStore) {}

  begin(id: string, api: string, model: string): void {
    if (this.store.enabled) this.open.set(id, { api, model, startedAt: Date.now() });
  }

  end(id: string, end: GenerationEnd): void {
    const o = this.open.get(id);
    if (!o) return;
    this.open.delete(id);
    const row = { requestId: id, model: o.model, api: o.api, startedAt: o.startedAt, endedAt: Date.now() };
    if (end.kind === "done") {
      const ev = end.done;
      this.store.recordRequest({
        ...row,
        promptTokens: ev.usage.promptTokens,
        cachedTokens: ev.usage.cachedTokens,
        cachedDiskTokens: ev.usage.cachedDiskTokens ?? 0,
        generatedTokens: ev.usage.completionTokens,
        ttftMs: ev.timing.ttftMs,
        decodeTps: ev.timing.decodeTps,
        promptTps: ev.timing.promptTps,
        finishReason: ev.finishReason,
        status: 200,
        ...(ev.speculative ? { draftTokens: ev.speculative.draftTokens, acceptedTokens: ev.speculative.acceptedTokens } : {}),
      });
      return;
    }
    const p = end.progress;
    this.store.recordRequest({
      ...row,
      promptTokens: p.promptTokens,
      cachedTokens: p.cachedTokens,
      cachedDiskTokens: p.cachedDiskTokens ?? 0,
      generatedTokens: p.generatedTokens,
      ttftMs: p.firstTokenAt === undefined ? undefined : p.firstTokenAt - o.startedAt,
      finishReason: end.kind === "cancelled" ? "cancelled" : "error",
      status: end.kind === "cancelled" ? CLIENT_CLOSED_STATUS : fromCode(end.code, "").status,
    });
  }
}
