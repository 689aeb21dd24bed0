// AVX-512 variant of the product kernels with AVX512-VNNI: the x16 products use vpdpwssd / vpdpbusd, which
// multiply and accumulate in one instruction.
#define RMLX_QKERN_NS avx512vnni_k
#define RMLX_QKERN_VNNI true
#include "qkern_avx512_body.h"
