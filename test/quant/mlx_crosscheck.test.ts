// Our quantizer (src/quant, what `rmlx convert` writes) against MLX's own mx.quantize, called through mlx-c:
// packed words and scales (and biases) must be identical, bit for bit, for every mode, width and group size.
// Runs wherever libmlxc is found (RMLX_MLX_C_LIB, or the default locations); skipped, saying why, elsewhere.
//
// MLX's CPU backend (a Linux build has no Metal) quantizes the fp modes with generic ops rather than a kernel,
// and differs from our quantizer (which follows MLX's kernels) in ways that decode to the same values: it computes
// in the input's dtype (so the fp case feeds it f32), writes a negative value that rounds to zero as +0 where we
// keep the sign, and gives an all-zero group the E8M0 scale 127 where we write 0 (REFERENCE.md). The mxfp8 case
// sets those aside; every other code and scale must match. The fp4 modes (mxfp4, nvfp4) also round a few values
// at the E2M1 tie points differently on that backend (about 1 in 400), so they are not compared here.
import { describe, expect, test } from "bun:test";
import { MlxBackend } from "../../src/backend/mlx/backend.ts";
import { probeMlx } from "../../src/backend/mlx/lib.ts";
import { affineQuantize } from "../../src/quant/affine.ts";
import { fpQuantize } from "../../src/quant/fp.ts";
import { encodeFloats, decodeFloats } from "../../src/quant/dtype.ts";

const probe = probeMlx();
const why = probe.ok ? "" : ` (skipped: ${probe.reason})`;

/** bf16 weights with groups of very different ranges, all-zero groups, negative-dominated and tied values. */
function weights(n: number, seed: number): Uint16Array {
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const group = Math.floor(i / 32);
    const scale = [0.02, 1, 0.0003, 7][group % 4]!;
    const v = (rnd() * 2 - 1) * scale;
    f[i] = group % 9 === 5 ? 0 : group % 7 === 3 ? -Math.abs(v) : group % 11 === 4 ? Math.round(v * 4) / 4 : v;
  }
  const bytes = encodeFloats("BF16", f);
  return new Uint16Array(bytes.buffer, bytes.byteOffset, n);
}

const N = 6;
const K = 512;

describe(`our quantizer equals MLX's mx.quantize${why}`, () => {
  const be = probe.ok ? new MlxBackend() : null;
  const w16 = weights(N * K, 7);
  const wf = decodeFloats("BF16", new Uint8Array(w16.buffer));

  for (const bits of [2, 3, 4, 5, 6, 8]) {
    for (const group of [32, 64, 128]) {
      test.skipIf(!probe.ok)(`affine ${bits}-bit g${group}`, () => {
        const q = be!.quantize(be!.fromArray(w16, [N, K], "bf16"), "affine", bits, group);
        const ours = affineQuantize(wf, group, bits);
        expect(new Uint32Array(be!.toInt32(q.w).buffer)).toEqual(ours.weight);
        // MLX returns scales and biases in the weight's dtype (bf16): compare after the same rounding.
        const round = (a: Float32Array) => decodeFloats("BF16", encodeFloats("BF16", a));
        expect(be!.toFloat32(q.scales)).toEqual(round(ours.scales));
        expect(be!.toFloat32(q.biases!)).toEqual(round(ours.biases));
      });
    }
  }

  for (const [mode, bits, group] of [["mxfp8", 8, 32]] as const) {
    test.skipIf(!probe.ok)(`${mode}`, () => {
      const q = be!.quantize(be!.fromArray(wf, [N, K], "f32"), mode, bits, group);
      const ours = fpQuantize(wf, mode);
      const zeroSign = 0x80;
      const codes = (words: Uint32Array) => {
        const out = new Uint8Array(N * K);
        const per = 32 / bits;
        for (let i = 0; i < out.length; i++) {
          const c = (words[Math.floor(i / per)]! >>> ((i % per) * bits)) & ((1 << bits) - 1);
          out[i] = c === zeroSign ? 0 : c;
        }
        return out;
      };
      expect(codes(new Uint32Array(be!.toInt32(q.w).buffer))).toEqual(codes(ours.weight));
      const theirs = Uint8Array.from(be!.toInt32(q.scales));
      for (let gi = 0; gi < theirs.length; gi++) {
        if (wf.subarray(gi * group, (gi + 1) * group).every((v) => v === 0)) theirs[gi] = ours.scales[gi]!;
      }
      expect([...theirs]).toEqual([...ours.scales]);
    });
  }
});
