// Storage types and their conversions to and from the math type, for host and device alike.
//
// bf16 and fp16 are plain 16-bit words here (not c10::BFloat16/c10::Half): the conversions below are
// branch-free integer and float operations that GCC vectorizes on the CPU, and that match torch's
// round-to-nearest-even casts bit for bit (tests/test_precision.py checks every bf16 and fp16 value).
#pragma once

#include <cstdint>
#include <type_traits>

#include "host_device.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace adadelta_fused {

// Scoped enums rather than structs: distinct types for overloading that are still scalars, which GCC's
// vectorizer can load and store (it gives up on struct-typed loads).
enum class bfloat16_bits : uint16_t {};
enum class float16_bits : uint16_t {};

// fp64 params are updated in fp64; every other dtype in fp32 (reference.math_dtype).
template <typename T>
using math_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
constexpr bool is_bf16_v = std::is_same_v<T, bfloat16_bits>;

ADF_HOST_DEVICE uint32_t bits_of(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  uint32_t u;
  __builtin_memcpy(&u, &v, sizeof(u));
  return u;
#endif
}

ADF_HOST_DEVICE float float_of(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float v;
  __builtin_memcpy(&v, &u, sizeof(v));
  return v;
#endif
}

// ---- loads: storage -> math ----
ADF_HOST_DEVICE float to_math(float v) { return v; }
ADF_HOST_DEVICE double to_math(double v) { return v; }
ADF_HOST_DEVICE float to_math(bfloat16_bits v) { return float_of(uint32_t(v) << 16); }

ADF_HOST_DEVICE float to_math(float16_bits v) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(uint16_t(v)));
#else
  // Rebias the 5-bit exponent (15) to 8 bits (127) by adding 112 to it; inf/NaN (exponent 31) need
  // another 112 to reach 255. Subnormals are an integer count of 2^-24, exact in fp32.
  const uint32_t sign = (uint32_t(v) & 0x8000u) << 16;
  const uint32_t magnitude = uint32_t(v) & 0x7FFFu;
  const uint32_t rebiased = (magnitude << 13) + (112u << 23) + (magnitude >= 0x7C00u ? (112u << 23) : 0u);
  const float subnormal = float(magnitude) * 5.9604644775390625e-8f;  // 2^-24
  const uint32_t body = magnitude < 0x0400u ? bits_of(subnormal) : rebiased;
  return float_of(sign | body);
#endif
}

// ---- stores: math -> storage, round to nearest even ----
ADF_HOST_DEVICE uint16_t bf16_round_nearest(float v) {
#if defined(__CUDA_ARCH__)
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
#else
  const uint32_t u = bits_of(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return uint16_t(is_nan ? 0x7FC0u : rounded);  // torch's canonical bf16 NaN
#endif
}

ADF_HOST_DEVICE uint16_t fp16_round_nearest(float v) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(v));
#else
  const uint32_t u = bits_of(v);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normal range: rebias the exponent (-112) and round the 13 dropped mantissa bits to nearest even;
  // a carry into the exponent is the correct rounding.
  const uint32_t normal = (a - (112u << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  // Below 2^-14 the result is a multiple of 2^-24: adding 0.5 (whose ulp is 2^-24) lets the FPU round
  // to nearest even, and the low mantissa bits are the fp16 encoding (2^-14 itself lands on 0x0400).
  const uint32_t subnormal = bits_of(float_of(a) + 0.5f) - 0x3F000000u;
  uint32_t h = a < 0x38800000u ? subnormal : normal;
  h = a >= 0x477FF000u ? 0x7C00u : h;  // 65520 and above round to inf
  h = a > 0x7F800000u ? 0x7E00u : h;   // NaN stays a (quiet) NaN
  return uint16_t(sign | h);
#endif
}

ADF_HOST_DEVICE void store(float& dst, float v) { dst = v; }
ADF_HOST_DEVICE void store(double& dst, double v) { dst = v; }
ADF_HOST_DEVICE void store(bfloat16_bits& dst, float v) { dst = bfloat16_bits(bf16_round_nearest(v)); }
ADF_HOST_DEVICE void store(float16_bits& dst, float v) { dst = float16_bits(fp16_round_nearest(v)); }

}  // namespace adadelta_fused
