// Tables for the terminal: aligned columns when stdout is a terminal, tab-separated plain text when piped,
// and CSV on request.

export type Cell = string | number | null | undefined;

export function fmt(v: Cell, digits = 1): string {
  if (v === null || v === undefined || (typeof v === "number" && Number.isNaN(v))) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits);
  return v;
}

/** Columns on screen: East Asian wide and fullwidth characters take two, combining marks none. */
export function displayWidth(s: string): number {
  let w = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (/\p{Mark}/u.test(ch)) continue;
    const wide =
      (c >= 0x1100 && c <= 0x115f) || (c >= 0x2e80 && c <= 0xa4cf) || (c >= 0xac00 && c <= 0xd7a3) || (c >= 0xf900 && c <= 0xfaff) ||
      (c >= 0xfe30 && c <= 0xfe4f) || (c >= 0xff00 && c <= 0xff60) || (c >= 0xffe0 && c <= 0xffe6) || (c >= 0x1f300 && c <= 0x1faff) ||
      (c >= 0x20000 && c <= 0x3fffd);
    w += wide ? 2 : 1;
  }
  return w;
}

/** Cuts a cell to `width` columns, ending in "…" when cut. */
function clip(s: string, width: number): string {
  if (displayWidth(s) <= width) return s;
  let out = "";
  for (const ch of s) {
    if (displayWidth(out + ch) > width - 1) break;
    out += ch;
  }
  return `${out}…`;
}

const pad = (s: string, width: number, right: boolean) => {
  const fill = " ".repeat(Math.max(0, width - displayWidth(s)));
  return right ? fill + s : s + fill;
};

/**
 * Aligned columns for a terminal (numbers to the right), tab-separated text otherwise. Given the terminal's width,
 * long text columns are cut (with "…") so that lines fit it where they can.
 */
export function table(headers: string[], rows: Cell[][], tty: boolean, termWidth?: number): string {
  // A column holding any fraction shows every number with one decimal, so that the points line up.
  const fractional = headers.map((_, i) => rows.some((r) => typeof r[i] === "number" && Number.isFinite(r[i]) && !Number.isInteger(r[i])));
  const cells = rows.map((r) => r.map((c, i) => (fractional[i] && typeof c === "number" && Number.isInteger(c) ? c.toFixed(1) : fmt(c))));
  if (!tty) return [headers, ...cells].map((r) => r.join("\t")).join("\n") + "\n";
  const widths = headers.map((h, i) => Math.max(displayWidth(h), ...cells.map((r) => displayWidth(r[i]!))));
  const numeric = headers.map((_, i) => cells.every((r) => /^-?[\d.]+%?$|^-$/.test(r[i]!)));
  const total = () => widths.reduce((a, w) => a + w, 0) + 2 * (widths.length - 1);
  if (termWidth && termWidth > 0) {
    // Narrow the widest text column, one column at a time, but never below its header or 20 columns (a time or a
    // model name stays whole; long benchmark names and paths are what gets cut).
    const floor = headers.map((h) => Math.max(displayWidth(h), 20));
    while (total() > termWidth) {
      let widest = -1;
      for (let i = 0; i < widths.length; i++) if (!numeric[i] && widths[i]! > floor[i]! && (widest < 0 || widths[i]! > widths[widest]!)) widest = i;
      if (widest < 0) break;
      widths[widest] = Math.max(floor[widest]!, widths[widest]! - (total() - termWidth));
    }
  }
  const line = (r: string[]) => r.map((c, i) => pad(clip(c, widths[i]!), widths[i]!, numeric[i]!)).join("  ").trimEnd();
  return [line(headers), widths.map((w) => "-".repeat(w)).join("  "), ...cells.map(line)].join("\n") + "\n";
}

export function csv(headers: string[], rows: Cell[][]): string {
  const esc = (s: string) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
  return [headers, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? "" : String(c))))]
    .map((r) => r.map(esc).join(","))
    .join("\n") + "\n";
}

const BARS = "▁▂▃▄▅▆▇█";

/** One character per value, scaled between the series' min and max; gaps (NaN) print as a space. */
export function sparkline(values: number[]): string {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return "";
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  return values
    .map((v) => {
      if (!Number.isFinite(v)) return " ";
      const i = hi === lo ? BARS.length - 1 : Math.round(((v - lo) / (hi - lo)) * (BARS.length - 1));
      return BARS[i];
    })
    .join("");
}
