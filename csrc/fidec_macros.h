// Macros shared by headers that compile under both g++ and nvcc.
#pragma once

#if defined(__CUDACC__)
#define FIDEC_HD __host__ __device__ __forceinline__
#else
#define FIDEC_HD inline __attribute__((always_inline))  // into every ISA variant (cpu_isa.h)
#endif
