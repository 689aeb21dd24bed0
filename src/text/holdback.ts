// Streaming text scanners all need the same guard: the end of what has arrived may be the start of a marker
// (a stop string, "<tool_call>", "</think>") whose rest is still to come, so it must not be shown yet.

/** Length of the longest suffix of `text` that is a proper prefix of one of `markers`. */
export function partialSuffixLength(text: string, markers: readonly string[]): number {
  let best = 0;
  for (const m of markers) {
    const max = Math.min(m.length - 1, text.length);
    for (let n = max; n > best; n--) {
      if (text.endsWith(m.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}

/** The earliest complete occurrence of any marker at or after `from`, or undefined. */
export function findFirst(text: string, markers: readonly string[], from = 0): { index: number; marker: string } | undefined {
  let found: { index: number; marker: string } | undefined;
  for (const m of markers) {
    const i = text.indexOf(m, from);
    if (i >= 0 && (!found || i < found.index || (i === found.index && m.length > found.marker.length))) {
      found = { index: i, marker: m };
    }
  }
  return found;
}
