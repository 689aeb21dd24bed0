// mlx-lm's mixed-precision recipes (in the spirit of llama.cpp's Q4_K_M): affine, more bits for v_proj and
// down_proj in the first and last eighth of the layers and every third layer between, and for lm_head.
import { RmlxError } from "../errors.ts";
import type { QSpec } from "./spec.ts";

export const RECIPES = {
  mixed_2_6: { low: 2, high: 6 },
  mixed_3_4: { low: 3, high: 4 },
  mixed_3_6: { low: 3, high: 6 },
  mixed_4_6: { low: 4, high: 6 },
} as const;

export type RecipeName = keyof typeof RECIPES;

export function parseRecipe(s: string): RecipeName {
  if (!Object.hasOwn(RECIPES, s))
    throw new RmlxError("invalid_argument", `unknown recipe '${s}' (expected ${Object.keys(RECIPES).join(", ")})`);
  return s as RecipeName;
}

/** Python's floor division and modulo, which the recipe's layer arithmetic relies on for negative numbers. */
const fdiv = (a: number, b: number) => Math.floor(a / b);
const pmod = (a: number, b: number) => ((a % b) + b) % b;

export function useMoreBits(index: number, numLayers: number): boolean {
  const eighth = fdiv(numLayers, 8);
  return index < eighth || index >= fdiv(7 * numLayers, 8) || pmod(index - eighth, 3) === 2;
}

/**
 * Builds the per-module choice. `modulePaths` are every quantizable module path of the model (in model order):
 * the first containing "down_proj" tells which path component is the layer index, as mlx-lm does.
 */
export function recipePredicate(
  name: RecipeName,
  modulePaths: readonly string[],
  numLayers: number,
  groupSize: number,
): (path: string) => QSpec {
  const { low, high } = RECIPES[name];
  const first = modulePaths.find((p) => p.includes("down_proj"));
  if (!first) throw new RmlxError("unsupported", `recipe ${name} needs a model with down_proj layers`);
  const parts = first.split(".");
  let loc = parts.findIndex((k) => /^\d+$/.test(k));
  if (loc < 0) loc = parts.length - 1;
  const spec = (bits: number): QSpec => ({ mode: "affine", bits, groupSize });
  return (path) => {
    const comps = path.split(".");
    const index = comps.length > loc ? Number.parseInt(comps[loc]!, 10) : 0;
    const more = useMoreBits(Number.isNaN(index) ? 0 : index, numLayers);
    if ((path.includes("v_proj") || path.includes("v_a_proj") || path.includes("v_b_proj")) && more) return spec(high);
    if (path.includes("down_proj") && more) return spec(high);
    if (path.includes("lm_head")) return spec(high);
    return spec(low);
  };
}
