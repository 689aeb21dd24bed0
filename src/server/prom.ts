import type { EngineStats } from "./engine_client.ts";

const TTFT_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** The server's counters, written out in the Prometheus text format for GET /metrics. */
export class ServerMetrics {
  private readonly requests = new Map<string, number>();
  promptTokens = 0;
  cachedTokens = 0;
  cachedDiskTokens = 0;
  generationTokens = 0;
  private readonly ttftCounts = new Array<number>(TTFT_BUCKETS_S.length).fill(0);
  private ttftSum = 0;
  private ttftCount = 0;

  request(endpoint: string, status: number): void {
    const key = `endpoint="${endpoint}",status="${status}"`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  generation(usage: { promptTokens: number; completionTokens: number; cachedTokens: number; cachedDiskTokens?: number }, ttftMs: number): void {
    this.promptTokens += usage.promptTokens;
    this.cachedTokens += usage.cachedTokens;
    this.cachedDiskTokens += usage.cachedDiskTokens ?? 0;
    this.generationTokens += usage.completionTokens;
    if (usage.completionTokens === 0) return;
    const s = ttftMs / 1000;
    for (let i = 0; i < TTFT_BUCKETS_S.length; i++) if (s <= TTFT_BUCKETS_S[i]!) this.ttftCounts[i]!++;
    this.ttftSum += s;
    this.ttftCount++;
  }

  render(stats: EngineStats, models: { name: string; loaded: boolean }[]): string {
    const out: string[] = [];
    const metric = (name: string, type: string, help: string, lines: string[]) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines);
    };
    metric(
      "rmlx_requests_total",
      "counter",
      "HTTP requests by endpoint and status.",
      [...this.requests].map(([k, v]) => `rmlx_requests_total{${k}} ${v}`),
    );
    metric("rmlx_prompt_tokens_total", "counter", "Prompt tokens processed.", [`rmlx_prompt_tokens_total ${this.promptTokens}`]);
    metric("rmlx_prompt_tokens_cached_total", "counter", "Prompt tokens served from the prefix cache, by where their blocks were: RAM or the SSD tier.", [
      `rmlx_prompt_tokens_cached_total{tier="ram"} ${this.cachedTokens - this.cachedDiskTokens}`,
      `rmlx_prompt_tokens_cached_total{tier="disk"} ${this.cachedDiskTokens}`,
    ]);
    metric("rmlx_generation_tokens_total", "counter", "Tokens generated.", [`rmlx_generation_tokens_total ${this.generationTokens}`]);
    metric("rmlx_time_to_first_token_seconds", "histogram", "Time from request to first generated token.", [
      ...TTFT_BUCKETS_S.map((b, i) => `rmlx_time_to_first_token_seconds_bucket{le="${b}"} ${this.ttftCounts[i]}`),
      `rmlx_time_to_first_token_seconds_bucket{le="+Inf"} ${this.ttftCount}`,
      `rmlx_time_to_first_token_seconds_sum ${this.ttftSum}`,
      `rmlx_time_to_first_token_seconds_count ${this.ttftCount}`,
    ]);
    metric("rmlx_requests_running", "gauge", "Sequences in the running batch.", [`rmlx_requests_running ${stats.running}`]);
    metric("rmlx_requests_waiting", "gauge", "Requests queued for admission.", [`rmlx_requests_waiting ${stats.waiting}`]);
    metric("rmlx_kv_blocks_used", "gauge", "KV cache blocks in use (full-attention pools).", [`rmlx_kv_blocks_used ${stats.kvUsed}`]);
    metric("rmlx_kv_blocks_total", "gauge", "KV cache blocks in the budget (full-attention pools).", [`rmlx_kv_blocks_total ${stats.kvTotal}`]);
    metric("rmlx_kv_window_blocks_used", "gauge", "KV cache blocks in use in the sliding-window layers' pools.", [
      `rmlx_kv_window_blocks_used ${stats.kvWindowUsed}`,
    ]);
    metric("rmlx_kv_window_blocks_total", "gauge", "KV cache blocks in the sliding-window layers' pools.", [
      `rmlx_kv_window_blocks_total ${stats.kvWindowTotal}`,
    ]);
    metric("rmlx_kv_bytes_used", "gauge", "Bytes of the KV cache blocks in use, in the cache's --kv-quant codec (all pools).", [
      `rmlx_kv_bytes_used ${stats.kvUsedBytes}`,
    ]);
    metric("rmlx_kv_bytes_total", "gauge", "Bytes of the KV cache budget (all pools, recurrent state slots included).", [
      `rmlx_kv_bytes_total ${stats.kvTotalBytes}`,
    ]);
    if (stats.ssd) {
      const ssd = stats.ssd;
      metric(
        "rmlx_kv_ssd_blocks_total",
        "counter",
        "Prefix-cache blocks of the SSD tier (--kv-ssd): written to disk, loaded back, dropped as corrupt or foreign, skipped (budget, queue or a failed write).",
        (["written", "loaded", "dropped", "skipped"] as const).map((k) => `rmlx_kv_ssd_blocks_total{event="${k}"} ${ssd[k]}`),
      );
    }
    metric(
      "rmlx_model_loaded",
      "gauge",
      "1 when the model is loaded.",
      models.map((m) => `rmlx_model_loaded{model="${m.name}"} ${m.loaded ? 1 : 0}`),
    );
    return `${out.join("\n")}\n`;
  }
}
