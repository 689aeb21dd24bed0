// Terminal tables: columns line up by what the terminal shows (wide characters take two columns), and long text
// columns are cut so that a table fits the terminal's width.
import { expect, test } from "bun:test";
import { displayWidth, table } from "../../src/metrics/format.ts";

test("display width: wide characters count two, combining marks none", () => {
  expect(displayWidth("abc")).toBe(3);
  expect(displayWidth("模型")).toBe(4);
  expect(displayWidth("ｑｗｅｎ")).toBe(8);
  expect(displayWidth("e\u0301")).toBe(1);
  expect(displayWidth("▁▂█")).toBe(3);
});

test("columns line up with wide characters in a cell", () => {
  const out = table(["model", "requests", "tok/s"], [["通义千问-7B", 3, 12.5], ["llama", 10, 9]], true);
  expect(out).toBe(
    ["model        requests  tok/s", "-----------  --------  -----", "通义千问-7B         3   12.5", "llama              10    9.0", ""].join("\n"),
  );
});

test("numbers of a column with fractions all show one decimal, so the points line up", () => {
  expect(table(["ms"], [[181.84], [19], [null], [9.9]], true)).toBe("   ms\n-----\n181.8\n 19.0\n    -\n  9.9\n");
  expect(table(["n"], [[3], [10]], true)).toBe(" n\n--\n 3\n10\n");
});

test("a table wider than the terminal cuts its long text columns to fit, numbers and short text whole", () => {
  const name = "kernels qlinear affine 4-bit g64 1x4096 @ 14336x4096";
  const rows = [[name, "x16", 33.2], ["short", "p512 g128", 12.5]];
  const wide = table(["benchmark", "shape", "figure"], rows, true, 200);
  expect(wide).toContain(name);
  const narrow = table(["benchmark", "shape", "figure"], rows, true, 40);
  for (const line of narrow.trimEnd().split("\n")) expect(displayWidth(line)).toBeLessThanOrEqual(40);
  expect(narrow).toBe(
    [
      "benchmark              shape      figure",
      "---------------------  ---------  ------",
      "kernels qlinear affi…  x16          33.2",
      "short                  p512 g128    12.5",
      "",
    ].join("\n"),
  );
  // Piped: tab-separated and whole, whatever the width.
  expect(table(["benchmark", "shape", "figure"], rows, false, 40)).toContain(name);
});
