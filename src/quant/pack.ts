// MLX's packing of b-bit codes: one little-endian bit stream, code i at stream bits [i*b, (i+1)*b), word k holding
// bits [32k, 32k+32). For 2/4/8 bits this is "32/b codes per word, lowest first"; for 3/5/6 codes straddle bytes
// and words, exactly as MLX's byte-wise packing of 8 (or 4) codes into 3, 5 (or 3) bytes lays them out.

function packedWords(count: number, bits: number): number {
  return (count * bits) / 32;
}

/** Pack codes (each < 2^bits) into uint32 words; count*bits must be a multiple of 32. */
export function packCodes(codes: Uint8Array, bits: number, out?: Uint32Array): Uint32Array {
  const words = packedWords(codes.length, bits);
  const res = out ?? new Uint32Array(words);
  if (bits === 8 || bits === 4 || bits === 2) {
    const per = 32 / bits;
    for (let w = 0, i = 0; w < words; w++) {
      let acc = 0;
      for (let k = 0; k < per; k++, i++) acc |= codes[i]! << (k * bits);
      res[w] = acc;
    }
    return res;
  }
  res.fill(0, 0, words);
  let pos = 0;
  for (let i = 0; i < codes.length; i++, pos += bits) {
    const w = pos >>> 5;
    const s = pos & 31;
    const c = codes[i]!;
    res[w] = res[w]! | (c << s);
    if (s + bits > 32) res[w + 1] = res[w + 1]! | (c >>> (32 - s));
  }
  return res;
}

/** Unpack `count` codes of `bits` bits from uint32 words. */
export function unpackCodes(words: Uint32Array, bits: number, count: number, out?: Uint8Array): Uint8Array {
  const res = out ?? new Uint8Array(count);
  const mask = (1 << bits) - 1;
  let pos = 0;
  for (let i = 0; i < count; i++, pos += bits) {
    const w = pos >>> 5;
    const s = pos & 31;
    let v = words[w]! >>> s;
    if (s + bits > 32) v |= words[w + 1]! << (32 - s);
    res[i] = v & mask;
  }
  return res;
}
