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

// Before a loop over lanes whose pointers never alias (a run of one tensor's buffers): lets GCC vectorize it
// without runtime alias checks. nvcc's device pass unrolls such loops instead and needs no hint.
#if defined(__CUDA_ARCH__) || !defined(__GNUC__) || defined(__clang__)
#define ADF_LANES_LOOP
#else
#define ADF_LANES_LOOP _Pragma("GCC ivdep")
#endif
