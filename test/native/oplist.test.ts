// The op list is the one declaration of rmlx_exec's program format: both generated sides must be what it gives
// now, and the executor must refuse records that do not fit it.
import { ptr } from "bun:ffi";
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { CPP_PATH, TS_PATH, cppSource, tsSource } from "../../scripts/gen_oplist.ts";
import { native } from "../../src/backend/native/lib.ts";
import { OPS } from "../../src/backend/native/oplist.ts";
import * as encode from "../../src/backend/native/oplist_gen.ts";
import { ProgramWriter } from "../../src/backend/native/program.ts";

const INVALID = 1;
const lib = native();

describe("generated files", () => {
  test("oplist_gen.ts and oplist_gen.h are what the op list gives (else run bun scripts/gen_oplist.ts)", () => {
    expect(readFileSync(TS_PATH, "utf8")).toBe(tsSource());
    expect(readFileSync(CPP_PATH, "utf8")).toBe(cppSource());
  });

  test("two fields of one kind swapped in the op list change both sides, so stale files cannot pass", () => {
    const { T, H, ...rest } = OPS.rope.fields;
    const swapped = { ...OPS, rope: { code: OPS.rope.code, fields: { H, T, ...rest } } };
    expect(tsSource(swapped)).not.toBe(tsSource());
    expect(cppSource(swapped)).not.toBe(cppSource());
  });
});

describe("rmlx_exec", () => {
  const run = (w: ProgramWriter) => lib.rmlx_exec(w.buf, w.len);
  const lastError = () => String(lib.rmlx_last_error());

  test("records written by the encoders run in order, each field where its name says", () => {
    const x = Float32Array.of(1, 2, 3, 4);
    const y = new Float32Array(4);
    const out = new Float32Array(4);
    const w = new ProgramWriter();
    encode.memcpy(w, ptr(y), ptr(x), 16);
    // out = y - x^T on [2, 2]: the first operand read row-major, the second transposed
    encode.binary(w, encode.BINARY.sub, ptr(out), ptr(y), ptr(x), [2, 2], [2, 1], [1, 2]);
    expect(run(w)).toBe(0);
    expect([...out]).toEqual([0, -1, 1, 0]);
  });

  test("a record of the wrong length, an unknown op and a bad rank are refused before anything runs", () => {
    const src = Float32Array.of(7);
    const dst = new Float32Array(1);
    const w = new ProgramWriter();
    encode.memcpy(w, ptr(dst), ptr(src), 4);
    w.buf[1] = 4;
    w.buf[4] = 0;
    w.len = 4;
    expect(run(w)).toBe(INVALID);
    expect(lastError()).toMatch(/memcpy record of 4 words, expected 5/);
    expect(dst[0]).toBe(0);

    w.reset();
    w.open(99, 2);
    expect(run(w)).toBe(INVALID);
    expect(lastError()).toMatch(/unknown op code 99/);

    w.reset();
    encode.copy(w, ptr(dst), ptr(src), 4, [], [], []);
    expect(run(w)).toBe(INVALID);
    expect(lastError()).toMatch(/copy: ndim 0 out of range/);
  });
});
