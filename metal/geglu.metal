// Body of a kernel built by mx.fast.metal_kernel: out = gelu_tanh(gate) * up, elementwise over row-contiguous
// f32 inputs, one thread per element. The tanh form is written through exp so that large |x| saturates cleanly.
uint i = thread_position_in_grid.x;
float g = gate[i];
float inner = 0.7978845608028654f * (g + 0.044715f * g * g * g);
float t = 1.0f - 2.0f / (metal::exp(2.0f * inner) + 1.0f);
out[i] = 0.5f * g * (1.0f + t) * up[i];
