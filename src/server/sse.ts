const enc = new TextEncoder();

/** One server-sent event: `event:` line only when named (Anthropic names every event, OpenAI none). */
function sseEvent(data: unknown, event?: string): Uint8Array {
  const body = typeof data === "string" ? data : JSON.stringify(data);
  return enc.encode(event ? `event: ${event}\ndata: ${body}\n\n` : `data: ${body}\n\n`);
}

export type SseSend = (data: unknown, event?: string) => void;

/**
 * A text/event-stream response fed by `produce`. When the client goes away the stream is cancelled and `onCancel`
 * runs at once (it stops the generation and frees its cache); sends after that are dropped.
 */
export function sseResponse(
  produce: (send: SseSend) => Promise<void>,
  onCancel: () => void,
  onError: (err: unknown, send: SseSend) => void,
): Response {
  let closed = false;
  const stream = new ReadableStream<Uint8Array>({
    async start(controller) {
      const send: SseSend = (data, event) => {
        if (!closed) controller.enqueue(sseEvent(data, event));
      };
      try {
        await produce(send);
      } catch (err) {
        if (!closed) onError(err, send);
      }
      if (!closed) {
        closed = true;
        controller.close();
      }
    },
    cancel() {
      closed = true;
      onCancel();
    },
  });
  return new Response(stream, {
    headers: { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" },
  });
}
