// How much memory the system can give without swapping: Linux's MemAvailable (free memory plus page cache and
// other memory the kernel can reclaim), elsewhere the free memory Node reports.
import { readFileSync } from "node:fs";
import { freemem } from "node:os";

export function availableMemory(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB$/m.exec(readFileSync("/proc/meminfo", "utf8"));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return freemem();
}
