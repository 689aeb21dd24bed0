// AVX-512 (F, BW, VL, DQ) variant of the product kernels.
#define RMLX_QKERN_NS avx512_k
#define RMLX_QKERN_VNNI false
#include "qkern_avx512_body.h"
