// Qwen2-MoE: Qwen2's attention with a mixture of SwiGLU experts beside a gated shared expert. Convert writes its
// checkpoints in mlx-lm's layout; the forward pass is not written yet.
import { stackedExpert, textModelName, type Family } from "./family.ts";

export const qwen2Moe: Family = {
  modelTypes: ["qwen2_moe"],
  /** mlx-lm's qwen2_moe sanitize: a tied head dropped, one-by-one experts stacked into switch_mlp. */
  sanitize: ({ tied }) => ({
    rename(name) {
      const n = textModelName(name, tied);
      return n === null ? null : stackedExpert(n);
    },
  }),
};
