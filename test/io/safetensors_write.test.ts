import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { SafetensorsFile } from "../../src/io/safetensors.ts";
import { SafetensorsWriter, buildHeader } from "../../src/io/safetensors_write.ts";
import { tmp, cleanupScratch } from "../convert/helpers.ts";

afterAll(cleanupScratch);

describe("safetensors writer", () => {
  test("header: sorted keys, compact JSON, metadata first, padded to 8 bytes", () => {
    const { header } = buildHeader(
      [
        { name: "b", dtype: "F32", shape: [2] },
        { name: "a", dtype: "U8", shape: [3] },
      ],
      { format: "mlx" },
    );
    const len = Number(new DataView(header.buffer).getBigUint64(0, true));
    expect(header.length).toBe(8 + len);
    expect(header.length % 8).toBe(0);
    const text = new TextDecoder().decode(header.subarray(8)).trimEnd();
    expect(text).toBe(
      '{"__metadata__":{"format":"mlx"},"a":{"data_offsets":[0,3],"dtype":"U8","shape":[3]},"b":{"data_offsets":[3,11],"dtype":"F32","shape":[2]}}',
    );
  });

  test("pieces written in any order land at their offsets; the file reads back", () => {
    const dir = tmp();
    const path = join(dir, "x.safetensors");
    const w = SafetensorsWriter.create(path, [
      { name: "w", dtype: "U32", shape: [2, 2] },
      { name: "s", dtype: "U8", shape: [4] },
    ]);
    w.write("w", new Uint8Array(new Uint32Array([3, 4]).buffer), 8);
    w.write("s", new Uint8Array([9, 8, 7, 6]));
    w.write("w", new Uint8Array(new Uint32Array([1, 2]).buffer), 0);
    w.close();
    const f = SafetensorsFile.open(path);
    expect(f.metadata).toEqual({ format: "mlx" });
    const t = f.tensors.get("w")!;
    expect(Array.from(new Uint32Array(t.bytes.slice().buffer))).toEqual([1, 2, 3, 4]);
    expect(Array.from(f.tensors.get("s")!.bytes)).toEqual([9, 8, 7, 6]);
    expect(readFileSync(path).length).toBe(w.totalBytes);
  });

  test("a tensor left short is an error at close", () => {
    const w = SafetensorsWriter.create(join(tmp(), "y.safetensors"), [{ name: "a", dtype: "F32", shape: [4] }]);
    w.write("a", new Uint8Array(8));
    expect(() => w.close()).toThrow("got 8 of 16 bytes");
    w.abort();
  });

  test("writes past a tensor's end are refused", () => {
    const w = SafetensorsWriter.create(join(tmp(), "z.safetensors"), [{ name: "a", dtype: "U8", shape: [4] }]);
    expect(() => w.write("a", new Uint8Array(3), 2)).toThrow("overruns");
    w.abort();
  });
});
