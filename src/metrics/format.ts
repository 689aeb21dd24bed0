// Tables for the terminal: aligned columns when stdout is a terminal, tab-separated plain text when piped,
// and CSV on request.

export type Cell = string | number | null | undefined;

export function fmt(v: Cell, digits = 1): string {
  if (v === null || v === undefined || (typeof v === "number" && Number.isNaN(v))) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits);
  return v;
}

export function table(headers: string[], rows: Cell[][], tty: boolean): string {
  const cells = rows.map((r) => r.map((c) => fmt(c)));
  if (!tty) return [headers, ...cells].map((r) => r.join("\t")).join("\n") + "\n";
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const numeric = headers.map((_, i) => cells.every((r) => /^-?[\d.]+%?$|^-$/.test(r[i]!)));
  const line = (r: string[]) =>
    r.map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join("  ").trimEnd();
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
