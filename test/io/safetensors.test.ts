import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { RmlxError } from "../../src/errors.ts";
import { SafetensorsFile } from "../../src/io/safetensors.ts";
import { rawSafetensors, safetensorsBytes, tempDir } from "./helpers.ts";

function write(bytes: Uint8Array): string {
  const p = join(tempDir(), "model.safetensors");
  writeFileSync(p, bytes);
  return p;
}

function openError(bytes: Uint8Array): RmlxError {
  const p = write(bytes);
  try {
    SafetensorsFile.open(p);
  } catch (err) {
    expect(err).toBeInstanceOf(RmlxError);
    const e = err as RmlxError;
    expect(e.code).toBe("bad_model");
    expect(e.message.startsWith(`${p}: `)).toBe(true);
    return e;
  }
  throw new Error("expected SafetensorsFile.open to fail");
}

describe("SafetensorsFile", () => {
  test("reads tensors, metadata and exact bytes as views", () => {
    const a = new Float32Array([1.5, -2, 3.25, 0]);
    const b = new Uint8Array([7, 8, 9]);
    const p = write(
      safetensorsBytes(
        {
          a: { dtype: "F32", shape: [2, 2], data: new Uint8Array(a.buffer) },
          b: { dtype: "U8", shape: [3], data: b },
          s: { dtype: "BF16", shape: [] },
          empty: { dtype: "F16", shape: [0, 4] },
        },
        { format: "mlx" },
      ),
    );
    const f = SafetensorsFile.open(p);
    expect(f.path).toBe(p);
    expect(f.metadata).toEqual({ format: "mlx" });
    expect([...f.tensors.keys()].sort()).toEqual(["a", "b", "empty", "s"]);
    const ta = f.tensors.get("a")!;
    expect(ta).toMatchObject({ name: "a", dtype: "F32", shape: [2, 2], file: p });
    expect(ta.bytes.byteLength).toBe(16);
    // Copy out: the view's offset inside the mapping need not be 4-byte aligned.
    expect([...new Float32Array(ta.bytes.slice().buffer)]).toEqual([1.5, -2, 3.25, 0]);
    expect([...f.tensors.get("b")!.bytes]).toEqual([7, 8, 9]);
    expect(f.tensors.get("s")!.bytes.byteLength).toBe(2);
    expect(f.tensors.get("empty")!.bytes.byteLength).toBe(0);
  });

  test("the header may be followed by padding spaces and tensors in any order", () => {
    const header = `${JSON.stringify({
      y: { dtype: "I32", shape: [1], data_offsets: [4, 8] },
      x: { dtype: "I32", shape: [1], data_offsets: [0, 4] },
    })}    `;
    const f = SafetensorsFile.open(write(rawSafetensors(header, 8)));
    expect(f.tensors.get("x")!.shape).toEqual([1]);
    expect(f.metadata).toEqual({});
  });

  test("a file too short for the length prefix", () => {
    expect(openError(new Uint8Array(5)).message).toContain("too short");
  });

  test("header length beyond the end of the file", () => {
    const e = openError(rawSafetensors({}, 0, 1000n));
    expect(e.message).toContain("header length 1000 runs beyond the end of the file");
  });

  test("header that is not JSON, or not an object", () => {
    expect(openError(rawSafetensors("{not json", 0)).message).toContain("header is not valid JSON");
    expect(openError(rawSafetensors("[1,2]", 0)).message).toContain("header is not a JSON object");
  });

  test("unknown dtype is reported by name", () => {
    const e = openError(rawSafetensors({ w: { dtype: "Q4_K", shape: [2], data_offsets: [0, 2] } }, 2));
    expect(e.message).toContain("tensor 'w': unknown dtype 'Q4_K'");
  });

  test("shape x dtype size must equal the byte range", () => {
    const e = openError(rawSafetensors({ w: { dtype: "F32", shape: [2, 3], data_offsets: [0, 20] } }, 24));
    expect(e.message).toContain("tensor 'w': F32 [2, 3] needs 24 bytes but data_offsets span 20");
  });

  test("offsets beyond the data section", () => {
    const e = openError(rawSafetensors({ w: { dtype: "U8", shape: [8], data_offsets: [4, 12] } }, 8));
    expect(e.message).toContain("tensor 'w': data_offsets [4, 12] beyond the data section (8 bytes)");
  });

  test("overlapping tensors", () => {
    const e = openError(
      rawSafetensors(
        {
          a: { dtype: "U8", shape: [6], data_offsets: [0, 6] },
          b: { dtype: "U8", shape: [4], data_offsets: [4, 8] },
        },
        8,
      ),
    );
    expect(e.message).toContain("tensors 'a' [0, 6] and 'b' [4, 8] overlap");
  });

  test("malformed entries", () => {
    expect(openError(rawSafetensors({ w: { dtype: "U8", shape: [2], data_offsets: [2, 0] } }, 2)).message).toContain(
      "end before begin",
    );
    expect(openError(rawSafetensors({ w: { dtype: "U8", shape: [2], data_offsets: [0] } }, 2)).message).toContain(
      "data_offsets is not [begin, end]",
    );
    expect(openError(rawSafetensors({ w: { dtype: "U8", shape: [-1], data_offsets: [0, 0] } }, 0)).message).toContain(
      "shape is not a list of sizes",
    );
    expect(openError(rawSafetensors({ w: 3 }, 0)).message).toContain("entry is not an object");
    expect(openError(rawSafetensors({ __metadata__: { n: 1 } }, 0)).message).toContain("__metadata__ value 'n'");
  });

  test("a missing file", () => {
    const p = join(tempDir(), "nope.safetensors");
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: cannot read (ENOENT)`);
  });
});
