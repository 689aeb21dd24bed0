import { describe, expect, test } from "bun:test";
import { closeSync, ftruncateSync, openSync, statSync, writeFileSync, writeSync } from "node:fs";
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

describe("files larger than one mapping", () => {
  test("tensors are mapped in windows with the right bytes", () => {
    const sizes = [70000, 3, 100000, 0, 65536, 131000];
    const tensors: Record<string, { dtype: "U8"; shape: number[]; data: Uint8Array }> = {};
    sizes.forEach((n, i) => {
      const data = new Uint8Array(n);
      for (let k = 0; k < n; k++) data[k] = (k * 7 + i * 13) & 255;
      tensors[`t${i}`] = { dtype: "U8", shape: [n], data };
    });
    const p = write(safetensorsBytes(tensors));
    const f = SafetensorsFile.open(p, 200_000);
    sizes.forEach((n, i) => {
      const got = f.tensors.get(`t${i}`)!.bytes;
      expect(got.length).toBe(n);
      expect(Buffer.from(got).equals(Buffer.from(tensors[`t${i}`]!.data))).toBe(true);
    });
  });

  test("a single tensor larger than one mapping is refused", () => {
    const p = write(safetensorsBytes({ a: { dtype: "U8", shape: [10] }, big: { dtype: "F32", shape: [70000] } }));
    expect(() => SafetensorsFile.open(p, 200_000)).toThrow(`${p}: tensor 'big' of 280000 bytes is too large to map`);
  });

  test("a sparse 5 GiB file (MLX shards reach 5 GB)", () => {
    const half = 2.5 * 2 ** 30;
    const p = write(
      rawSafetensors(
        {
          a: { dtype: "U8", shape: [half], data_offsets: [0, half] },
          b: { dtype: "U8", shape: [half], data_offsets: [half, 2 * half] },
        },
        0,
      ),
    );
    const headerEnd = statSync(p).size;
    const fd = openSync(p, "r+");
    ftruncateSync(fd, headerEnd + 2 * half);
    writeSync(fd, new Uint8Array([42]), 0, 1, headerEnd + 2 * half - 1);
    closeSync(fd);
    const f = SafetensorsFile.open(p);
    const b = f.tensors.get("b")!.bytes;
    expect(b.length).toBe(half);
    expect(b[half - 1]).toBe(42);
    expect(f.tensors.get("a")!.bytes[0]).toBe(0);
  });
});
