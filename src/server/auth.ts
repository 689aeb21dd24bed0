/** Whether a request carries the server's API key, as `Authorization: Bearer <key>` or `x-api-key: <key>`. */
export function authorized(headers: Headers, apiKey: string): boolean {
  const xKey = headers.get("x-api-key");
  if (xKey !== null) return safeEqual(xKey, apiKey);
  const auth = headers.get("authorization");
  if (auth === null) return false;
  const m = /^Bearer\s+(.+)$/i.exec(auth.trim());
  return m !== null && safeEqual(m[1]!, apiKey);
}

/** Constant-time comparison, so a key cannot be guessed a character at a time from response times. */
function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < y.length; i++) diff |= (x[i % Math.max(1, x.length)] ?? 0) ^ y[i]!;
  return diff === 0;
}
