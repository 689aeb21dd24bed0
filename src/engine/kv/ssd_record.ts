// One prefix-cache block as a file of the SSD tier. The file names what it holds (its namespace: model, layout and
// codec; and its chain hash), so a file copied or renamed into the wrong place is foreign and refused, and ends
// with a CRC-32 of every byte before it, so a corrupt or truncated file is refused too.
//
//   magic "RMLXKVB1" | u32 spaces | u32 extra bytes | u64 namespace | u64 chain hash | u32 bytes per space ...
//   | each space's bytes (0 where the block had been given back there) | extra | u32 crc32 of all of the above
const MAGIC = new TextEncoder().encode("RMLXKVB1");
const FIXED = MAGIC.length + 4 + 4 + 8 + 8;
/** More spaces than any cache has: a count beyond it is garbage, not a record. */
const MAX_SPACES = 16;

/** A block of every space of a KV cache, and what the model keeps with it. */
export interface BlockRecord {
  /** Per space, in the cache's order, its pools' bytes of the block (readKvBlock of each, concatenated); null where the cache had given it back. */
  spaces: (Uint8Array | null)[];
  /**
   * An opaque payload the model stores with the block (a hybrid's recurrent-state snapshot after its last token);
   * empty when it has none.
   */
  extra: Uint8Array;
}

/** A record being written in place: its file's bytes, and views into them where each space's bytes go. */
export interface RecordDraft {
  bytes: Uint8Array;
  /** Per space, the bytes to fill (null for a space of size 0). */
  spaces: (Uint8Array | null)[];
  /** Writes the checksum once every space is filled; `bytes` is then the file. */
  seal(): Uint8Array;
}

/** Bytes of the file of a record with `sizes` bytes per space and `extra` bytes of payload. */
export function recordBytes(sizes: readonly number[], extra: number): number {
  return FIXED + 4 * sizes.length + sizes.reduce((a, b) => a + b, 0) + extra + 4;
}

/**
 * The file of block `hash` in namespace `ns` with `sizes` bytes per space (0 where given back) and `extra`, each
 * space's bytes to be filled in place (a block copied out of the pools once, not once more into a record). `reuse`,
 * when it has the file's size, is written over instead of a new buffer.
 */
export function draftRecord(ns: bigint, hash: bigint, sizes: readonly number[], extra: Uint8Array, reuse?: Uint8Array): RecordDraft {
  const n = sizes.length;
  const head = FIXED + 4 * n;
  const size = recordBytes(sizes, extra.byteLength);
  const bytes = reuse?.byteLength === size ? reuse : new Uint8Array(size);
  const dv = new DataView(bytes.buffer);
  bytes.set(MAGIC, 0);
  dv.setUint32(8, n, true);
  dv.setUint32(12, extra.byteLength, true);
  dv.setBigUint64(16, BigInt.asUintN(64, ns), true);
  dv.setBigUint64(24, BigInt.asUintN(64, hash), true);
  let at = head;
  const spaces = sizes.map((size, i) => {
    dv.setUint32(FIXED + 4 * i, size, true);
    const view = size === 0 ? null : bytes.subarray(at, at + size);
    at += size;
    return view;
  });
  bytes.set(extra, at);
  const seal = () => {
    dv.setUint32(bytes.length - 4, Bun.hash.crc32(bytes.subarray(0, bytes.length - 4)) >>> 0, true);
    return bytes;
  };
  return { bytes, spaces, seal };
}

/** The file's bytes of a record of the block `hash` in namespace `ns`. */
export function encodeRecord(ns: bigint, hash: bigint, rec: BlockRecord): Uint8Array {
  const d = draftRecord(ns, hash, rec.spaces.map((b) => b?.byteLength ?? 0), rec.extra);
  rec.spaces.forEach((b, i) => {
    if (b) d.spaces[i]!.set(b);
  });
  return d.seal();
}

/** The record in a file's bytes, or why they are not a sound record of block `hash` in namespace `ns`. */
export function decodeRecord(bytes: Uint8Array, ns: bigint, hash: bigint): BlockRecord | string {
  if (bytes.length < FIXED + 4 || !MAGIC.every((b, i) => bytes[i] === b)) return "not a block file";
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const crc = dv.getUint32(bytes.length - 4, true);
  if ((Bun.hash.crc32(bytes.subarray(0, bytes.length - 4)) >>> 0) !== crc) return "checksum mismatch";
  const n = dv.getUint32(8, true);
  const extra = dv.getUint32(12, true);
  if (n > MAX_SPACES) return `${n} spaces`;
  if (dv.getBigUint64(16, true) !== BigInt.asUintN(64, ns)) return "another model, layout or codec";
  if (dv.getBigUint64(24, true) !== BigInt.asUintN(64, hash)) return "another block";
  const sizes = Array.from({ length: n }, (_, i) => dv.getUint32(FIXED + 4 * i, true));
  let at = FIXED + 4 * n;
  if (at + sizes.reduce((a, b) => a + b, 0) + extra + 4 !== bytes.length) return "wrong length";
  const spaces = sizes.map((size) => {
    const b = size === 0 ? null : bytes.subarray(at, at + size);
    at += size;
    return b;
  });
  return { spaces, extra: bytes.subarray(at, at + extra) };
}
