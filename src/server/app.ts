import { Elysia } from "elysia";
import { VERSION } from "../version.ts";
import { countTokens, messages } from "./anthropic.ts";
import { authorized } from "./auth.ts";
import { errorResponse, flavorOf, HttpError, toHttpError } from "./errors.ts";
import { withModel, type ServerContext } from "./generation.ts";
import { embeddings } from "./embeddings.ts";
import { chatCompletions, chatMessages, completions, modelObject } from "./openai.ts";
import { ServerMetrics } from "./prom.ts";
import { ChatCompletionBody, CompletionBody, CountTokensBody, DetokenizeBody, EmbeddingsBody, MessagesBody, TokenizeBody, validationMessage } from "./schemas.ts";

export interface AppOptions {
  apiKey?: string;
}

const endpointOf = (path: string) => path.replace(/^((?:\/v1)?\/models\/).+$/, "$1{id}");

/** The OpenAI routes are served under /v1 and, as llama-server does, without it. */
const OPENAI_PREFIXES = ["/v1", ""];

export function createApp(ctx: ServerContext, opts: AppOptions) {
  const metrics = new ServerMetrics();
  ctx.engine.onEnd = (id, end) => {
    if (end.kind === "done") metrics.generation(end.done.usage, end.done.timing.ttftMs);
    ctx.journal?.end(id, end);
  };
  const record = (request: Request, res: Response) => {
    metrics.request(endpointOf(new URL(request.url).pathname), res.status);
    return res;
  };
  /** Runs a handler, turning any failure into the route's own error format. */
  const handle =
    <B>(fn: (body: B, signal: AbortSignal) => Promise<Response> | Response) =>
    async ({ body, request }: { body: B; request: Request }) => {
      try {
        return record(request, await fn(body, request.signal));
      } catch (err) {
        return record(request, errorResponse(flavorOf(new URL(request.url).pathname), err));
      }
    };

  const app = new Elysia()
    .onRequest(({ request }) => {
      const path = new URL(request.url).pathname;
      if (!opts.apiKey || path === "/health" || authorized(request.headers, opts.apiKey)) return;
      return record(request, errorResponse(flavorOf(path), new HttpError(401, "invalid or missing API key", { code: "invalid_api_key" })));
    })
    .onError(({ code, error, request }) => {
      const path = new URL(request.url).pathname;
      let e: HttpError;
      if (code === "VALIDATION") e = new HttpError(400, validationMessage(error));
      else if (code === "PARSE") e = new HttpError(400, "request body is not valid JSON");
      else if (code === "NOT_FOUND") e = new HttpError(404, `no route ${request.method} ${path}`, { code: "not_found" });
      else e = toHttpError(error);
      return record(request, errorResponse(flavorOf(path), e));
    });
  for (const prefix of OPENAI_PREFIXES) {
    app
      .get(`${prefix}/models`, ({ request }) =>
        record(request, Response.json({ object: "list", data: [...ctx.models.models.values()].map(modelObject) })),
      )
      .get(`${prefix}/models/*`, ({ params, request }) => {
        try {
          return record(request, Response.json(modelObject(ctx.models.get(decodeURIComponent(params["*"])))));
        } catch (err) {
          return record(request, errorResponse("openai", err));
        }
      })
      .post(`${prefix}/chat/completions`, handle((b: typeof ChatCompletionBody.static, signal) => chatCompletions(ctx, b, signal)), {
        body: ChatCompletionBody,
        parse: "json",
      })
      .post(`${prefix}/completions`, handle((b: typeof CompletionBody.static, signal) => completions(ctx, b, signal)), { body: CompletionBody, parse: "json" })
      .post(`${prefix}/embeddings`, handle((b: typeof EmbeddingsBody.static) => embeddings(ctx, b)), { body: EmbeddingsBody, parse: "json" });
  }
  // What answers a bare GET or HEAD of the server (clients such as Claude Code probe it before their first request).
  const root = ({ request }: { request: Request }) =>
    record(request, Response.json({ name: "rmlx", version: VERSION, models: [...ctx.models.models.keys()], health: "/health" }));
  return app
    .get("/", root)
    .head("/", root)
    // vLLM's version probe.
    .get("/version", ({ request }) => record(request, Response.json({ version: VERSION })))
    .get("/health", () => {
      const loading = ctx.models.loading;
      return Response.json({ status: loading ? "loading" : "ok" }, { status: loading ? 503 : 200 });
    })
    .get(
      "/metrics",
      () =>
        new Response(
          metrics.render(
            ctx.engine.stats,
            [...ctx.models.models.values()].map((m) => ({ name: m.name, loaded: m.state === "loaded" })),
          ),
          { headers: { "content-type": "text/plain; version=0.0.4" } },
        ),
    )
    .post("/v1/messages", handle((b: typeof MessagesBody.static, signal) => messages(ctx, b, signal)), { body: MessagesBody, parse: "json" })
    .post("/v1/messages/count_tokens", handle((b: typeof CountTokensBody.static) => countTokens(ctx, b)), {
      body: CountTokensBody,
      parse: "json",
    })
    .post(
      "/tokenize",
      handle(async (b: typeof TokenizeBody.static) => {
        const text = b.prompt ?? b.content;
        if ([b.prompt, b.content, b.messages].filter((x) => x !== undefined).length !== 1) {
          throw new HttpError(400, "give exactly one of prompt (or content) and messages");
        }
        return withModel(ctx, b.model, async (m) => {
          const r = await ctx.engine.tokenize({
            model: m.name,
            text,
            messages: b.messages && chatMessages(b.messages),
            tools: b.tools?.map((t) => ({ type: "function" as const, function: t.function })),
            templateKwargs: b.chat_template_kwargs ?? undefined,
            addGenerationPrompt: b.add_generation_prompt ?? true,
          });
          return Response.json({ tokens: r.tokens, count: r.tokens.length, max_model_len: m.contextLength });
        });
      }),
      { body: TokenizeBody, parse: "json" },
    )
    .post(
      "/detokenize",
      handle((b: typeof DetokenizeBody.static) =>
        withModel(ctx, b.model, async (m) => {
          const text = await ctx.engine.detokenize(m.name, b.tokens);
          // vLLM answers `prompt`, llama.cpp `content`.
          return Response.json({ prompt: text, content: text });
        }),
      ),
      { body: DetokenizeBody, parse: "json" },
    );
}
