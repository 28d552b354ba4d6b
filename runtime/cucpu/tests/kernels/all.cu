// Every test kernel in one translation unit, for the nvcc compile check:
//   nvcc -std=c++17 -arch=sm_80 -cubin -I<repo>/templates/include all.cu
#include "reduce.cuh"
#include "decode_attn.cuh"
#include "mma_gemm.cuh"
#include "every_prim.cuh"
