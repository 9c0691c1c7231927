// The SIMD level the CPU kernels run, chosen from the CPU at load time (cpu/adadelta_cpu.cpp), and lowered by
// _C.select_cpu_isa for tests and benchmarks. Every CPU kernel reads the same choice.
#pragma once

namespace adadelta_fused {

// Each level includes the ones below it. avx2_f16c adds F16C's fp16 conversions; avx512 converts 16 at a time;
// avx512_bf16 rounds fp32 to bf16 with AVX512_BF16's vcvtneps2bf16.
enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1, kAvx2F16c = 2, kAvx512 = 3, kAvx512Bf16 = 4 };

CpuIsa current_cpu_isa();

}  // namespace adadelta_fused
