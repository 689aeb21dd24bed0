// One server per SSD tier directory: DIR/lock holds the pid of the process using it. A lock whose process is gone
// (killed, crashed) is stale and taken over; a live one stops the second server with a one-line error.
import { closeSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";
import { RmlxError } from "../../errors.ts";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists but belongs to someone else.
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Takes DIR's lock for this process (creating DIR); returns the function that gives it back. */
export function lockSsdDir(dir: string): () => void {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new RmlxError("invalid_argument", `--kv-ssd ${dir}: ${(e as Error).message}`);
  }
  const path = join(dir, "lock");
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = openSync(path, "wx");
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw new RmlxError("invalid_argument", `--kv-ssd ${dir}: ${(e as Error).message}`);
      let pid = Number.NaN;
      try {
        pid = Number.parseInt(readFileSync(path, "utf8"), 10);
      } catch {
        // removed meanwhile: try again
      }
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new RmlxError("invalid_argument", `--kv-ssd ${dir} is in use by another rmlx serve (pid ${pid}); give each server a directory of its own`);
      }
      if (attempt >= 3) throw new RmlxError("invalid_argument", `--kv-ssd ${dir}: cannot take the lock file ${path}`);
      try {
        unlinkSync(path);
      } catch {
        // another process took it over first: the next attempt says whose it is
      }
    }
  }
  let held = true;
  return () => {
    if (!held) return;
    held = false;
    try {
      if (Number.parseInt(readFileSync(path, "utf8"), 10) === process.pid) unlinkSync(path);
    } catch {
      // already gone
    }
  };
}
