// Run by scope.test.ts in a process of its own: 10k steps whose result escapes its scope, then the growth of the
// JS heap and of RSS over them, as one JSON line. A fresh process, because how soon the allocators hand pages back
// to the system depends on everything the process ran before.
import { NativeBackend } from "../../src/backend/native/backend.ts";
import { randn } from "./helpers.ts";

const be = new NativeBackend();
const x = be.fromArray(randn(4096, 3), [1, 4096], "f32");
const steps = (n: number) => {
  for (let i = 0; i < n; i++) {
    const logits = be.scope(() => be.scale(x, 2));
    be.toFloat32(logits);
    if (i % 2) be.dispose(logits);
  }
};
const memory = () => {
  Bun.gc(true);
  const m = process.memoryUsage();
  return { js: m.heapUsed + m.external, rss: m.rss };
};
steps(3000);
const m0 = memory();
steps(10000);
const m1 = memory();
console.log(JSON.stringify({ js: m1.js - m0.js, rss: m1.rss - m0.rss }));
