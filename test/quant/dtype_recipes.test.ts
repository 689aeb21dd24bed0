import { describe, expect, test } from "bun:test";
import { decodeFloats, encodeFloats, f32ToBf16Bits, roundArrayTo, roundTo } from "../../src/quant/dtype.ts";
import { recipePredicate, useMoreBits } from "../../src/quant/recipes.ts";

describe("float formats", () => {
  test("bf16 rounds to nearest even on the dropped 16 bits", () => {
    expect(f32ToBf16Bits(1)).toBe(0x3f80);
    // 1 + 2^-8 is exactly halfway between bf16 1 and 1 + 2^-7: ties to even (1)
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80);
    // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(f32ToBf16Bits(Number.NaN)).toBe(0x7fc0);
    expect(roundTo("BF16", 0.1)).toBe(0.10009765625);
  });

  test("f16 rounds to nearest even, subnormals included", () => {
    expect(roundTo("F16", 1 + 2 ** -11)).toBe(1); // tie -> even
    expect(roundTo("F16", 2 ** -25)).toBe(0); // tie between 0 and the smallest subnormal 2^-24
    expect(roundTo("F16", 70000)).toBe(Infinity);
  });

  test("encode and decode are inverse on representable values, for every dtype", () => {
    const v = new Float32Array([0, -0, 1, -2.5, 0.10009765625, 65504, 2 ** -14]);
    for (const d of ["F32", "F16", "BF16"] as const) {
      const r = roundArrayTo(d, v.slice());
      expect(Array.from(decodeFloats(d, encodeFloats(d, r)))).toEqual(Array.from(r));
    }
    // bf16 1.0 is 0x3F80 little-endian
    expect(Array.from(encodeFloats("BF16", new Float32Array([1])))).toEqual([0x80, 0x3f]);
  });
});

describe("mixed recipes", () => {
  test("layers with more bits: first and last eighth, and every third between", () => {
    // 16 layers: eighth = 2, 7L/8 = 14 -> 0, 1, 14, 15 and (i - 2) % 3 == 2: 4, 7, 10, 13
    const more = Array.from({ length: 16 }, (_, i) => i).filter((i) => useMoreBits(i, 16));
    expect(more).toEqual([0, 1, 4, 7, 10, 13, 14, 15]);
  });

  test("v_proj and down_proj of those layers and lm_head get the high bits, everything else low", () => {
    const paths = ["model.embed_tokens", "model.layers.0.mlp.down_proj", "lm_head"];
    const p = recipePredicate("mixed_3_6", paths, 16, 64);
    expect(p("model.layers.4.self_attn.v_proj").bits).toBe(6);
    expect(p("model.layers.4.mlp.down_proj").bits).toBe(6);
    expect(p("model.layers.5.mlp.down_proj").bits).toBe(3);
    expect(p("model.layers.4.self_attn.q_proj").bits).toBe(3);
    expect(p("lm_head")).toEqual({ mode: "affine", bits: 6, groupSize: 64 });
    // embed_tokens has no layer index: index 0, which is in the first eighth, but it is neither v nor down
    expect(p("model.embed_tokens").bits).toBe(3);
    expect(recipePredicate("mixed_2_6", paths, 16, 32)("model.layers.15.mlp.switch_mlp.down_proj")).toEqual({
      mode: "affine",
      bits: 6,
      groupSize: 32,
    });
  });
});
