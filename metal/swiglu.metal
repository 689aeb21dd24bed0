// Body of a kernel built by mx.fast.metal_kernel: out = silu(gate) * up, elementwise over row-contiguous f32
// inputs, one thread per element. MLX writes the signature (gate, up, out and the thread attributes).
uint i = thread_position_in_grid.x;
float g = gate[i];
out[i] = g / (1.0f + metal::exp(-g)) * up[i];
