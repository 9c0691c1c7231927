// Qualifiers for code that nvcc compiles for the GPU and the host compiler for the CPU kernel, so both
// kernels execute the same lines.
#pragma once

#if defined(__CUDACC__)
#define ADF_HOST_DEVICE __host__ __device__ __forceinline__
#else
// always_inline: the CPU kernel's SIMD loops live in functions with their own target ISA, and GCC only
// vectorizes the update once it is inlined into them.
#define ADF_HOST_DEVICE inline __attribute__((always_inline))
#endif
