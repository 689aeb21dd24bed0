// Cross-origin access for browser clients (--cors): allowed origins get Access-Control-Allow-* headers on every
// response, and preflights (OPTIONS with Access-Control-Request-Method) are answered before authentication, since
// browsers send them without credentials.
import { RmlxError } from "../errors.ts";

const ALLOWED_METHODS = "GET, POST, OPTIONS";
/** Request headers the APIs use, offered when a preflight does not list its own. */
const DEFAULT_HEADERS = "authorization, content-type, x-api-key, anthropic-version, anthropic-beta, openai-organization, openai-project";
const MAX_AGE_S = "86400";

/** '*' or a comma-separated list of origins (scheme://host[:port]). */
export function parseCorsOrigins(text: string): string[] {
  const origins = text
    .split(",")
    .map((o) => o.trim().replace(/\/$/, ""))
    .filter(Boolean);
  if (origins.length === 0) throw new RmlxError("invalid_argument", "--cors: give '*' or a comma-separated list of origins");
  for (const o of origins) {
    if (o !== "*" && !/^[a-z][a-z0-9+.-]*:\/\/[^/\s?#]+$/i.test(o)) {
      throw new RmlxError("invalid_argument", `--cors: '${o}' is not an origin (e.g. http://localhost:3000) or '*'`);
    }
  }
  return origins;
}

export class CorsPolicy {
  private readonly any: boolean;
  private readonly origins: Set<string>;

  constructor(origins: readonly string[]) {
    this.any = origins.includes("*");
    this.origins = new Set(origins.map((o) => o.toLowerCase()));
  }

  /** The Access-Control-Allow-Origin value for a request's Origin, or null when it is not allowed. */
  private allowOrigin(origin: string | null): string | null {
    if (this.any) return "*";
    return origin !== null && this.origins.has(origin.toLowerCase()) ? origin : null;
  }

  /** The answer to a preflight request, or null when `req` is not one. */
  preflight(req: Request): Response | null {
    if (req.method !== "OPTIONS" || !req.headers.has("access-control-request-method")) return null;
    const allow = this.allowOrigin(req.headers.get("origin"));
    const headers = new Headers({ vary: "Origin" });
    if (allow !== null) {
      headers.set("access-control-allow-origin", allow);
      headers.set("access-control-allow-methods", ALLOWED_METHODS);
      headers.set("access-control-allow-headers", req.headers.get("access-control-request-headers") ?? DEFAULT_HEADERS);
      headers.set("access-control-max-age", MAX_AGE_S);
    }
    return new Response(null, { status: 204, headers });
  }

  /** Adds the allow headers to a response for an allowed origin. */
  apply(req: Request, res: Response): Response {
    const allow = this.allowOrigin(req.headers.get("origin"));
    if (!this.any) res.headers.append("vary", "Origin");
    if (allow !== null) {
      res.headers.set("access-control-allow-origin", allow);
      res.headers.set("access-control-expose-headers", "retry-after");
    }
    return res;
  }
}
