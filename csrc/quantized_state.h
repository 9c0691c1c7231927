// 8-bit Adadelta state: the code of one accumulator value and the block walk of a step over codes, shared by
// the CPU and CUDA kernels of adadelta_fused::quantized_adadelta_. Mirrors adadelta_fused/quantized_reference.py,
// which states the format; in short:
//
// An accumulator (square_avg or acc_delta) is stored as one uint8 code per element and one fp32 scale per
// block of kQuantBlock consecutive elements (in the order the kernels walk the param). The scale is a power of
// two, 2^(F - 127), where F is the largest biased fp32 exponent among the block's finite values (at least
// kMinBlockExponent). A code is an unsigned 8-bit float relative to it: 4 exponent bits e and 4 mantissa bits m,
//   e = 1..14  ->  2^(e + F - 14 - 127) * (1 + m / 16)      (e = 14 is the block's top binade)
//   e = 0      ->  2^(F - 144) * m                          (subnormals, down to 2^-17 of the top binade)
//   0xF0       ->  +inf;  0xF1..0xFF -> NaN (0xFF written)
// Encoding rounds to nearest even and saturates at 0xEF; a negative value (which no step makes) is stored as
// NaN, -0 as 0. Every operation is an integer one or an exact multiply by a power of two, so every executor
// (C++, CUDA, Triton, torch) gets the same bits. Why this map: bench/results/quantized_state_codes.md.
#pragma once

#include <cstdint>

#include "adadelta_math.h"

namespace adadelta_fused {

// Keep equal to quantized_reference.BLOCK / MIN_BLOCK_EXPONENT (tests/test_quantized.py compares them).
constexpr int kQuantBlock = 256;
// A block whose values are all below 2^-95 encodes against 2^-95: every decoded value, subnormal codes
// included, is then a normal fp32 number (2^(32 - 144) = 2^-112 at the least), so no executor's
// denormal handling can change a bit.
constexpr uint32_t kMinBlockExponent = 32;
constexpr uint32_t kCodeInf = 0xF0u;
constexpr uint32_t kCodeNaN = 0xFFu;
constexpr uint32_t kMaxFiniteCode = 0xEFu;

// The biased fp32 exponent of v when it counts toward its block's scale (finite, sign bit clear), else 0.
ADF_HOST_DEVICE uint32_t counted_exponent(float v) {
  const uint32_t u = bits_of(v);
  return u < 0x7F800000u ? u >> 23 : 0u;
}

// The block exponent F of a block whose largest counted exponent is `largest`.
ADF_HOST_DEVICE uint32_t block_exponent(uint32_t largest) {
  return largest > kMinBlockExponent ? largest : kMinBlockExponent;
}

// The stored scale 2^(F - 127), and F back from a stored scale (only its exponent bits count; a scale that
// no step wrote is clamped into the range steps write).
ADF_HOST_DEVICE float block_scale(uint32_t exponent) { return float_of(exponent << 23); }

ADF_HOST_DEVICE uint32_t scale_exponent(float scale) {
  const uint32_t e = (bits_of(scale) >> 23) & 0xFFu;
  return e < kMinBlockExponent ? kMinBlockExponent : (e > 254u ? 254u : e);
}

ADF_HOST_DEVICE uint32_t encode_state(float v, uint32_t block_exp) {
  const uint32_t u = bits_of(v);
  // Codes with e >= 1: move the exponent so that the block's top binade lands on e = 14, then round the 19
  // dropped mantissa bits to nearest even; a carry into the exponent is the correct rounding.
  const uint32_t rebased = u - ((block_exp - 14u) << 23);
  uint32_t normal = (rebased + 0x3FFFFu + ((u >> 19) & 1u)) >> 19;
  normal = normal < kMaxFiniteCode ? normal : kMaxFiniteCode;
  // Codes with e = 0 count units of 2^(F - 144): the 24-bit significand shifted right, rounded to nearest
  // even (a result of 16 is the code 0x10, the smallest e = 1 value: the encoding is continuous there).
  const uint32_t f = u >> 23;
  const uint32_t significand = (u & 0x7FFFFFu) | (f != 0u ? 0x800000u : 0u);
  int32_t shift = int32_t(block_exp) + 6 - int32_t(f != 0u ? f : 1u);
  shift = shift < 1 ? 1 : (shift > 31 ? 31 : shift);  // (only values that take the other paths fall outside)
  const uint32_t sub = (significand + (1u << (shift - 1)) - 1u + ((significand >> shift) & 1u)) >> shift;
  uint32_t code = f + 14u > block_exp ? normal : sub;
  code = u == 0x7F800000u ? kCodeInf : code;
  code = u > 0x7F800000u ? kCodeNaN : code;  // NaN, and any value with the sign bit set
  return u == 0x80000000u ? 0u : code;       // ... except -0
}

ADF_HOST_DEVICE float decode_state(uint32_t code, uint32_t block_exp) {
  const float normal = float_of((code << 19) + ((block_exp - 14u) << 23));
  const float subnormal = float(code) * float_of((block_exp - 17u) << 23);  // m * 2^(F - 144), exact
  float v = code >= 0x10u ? normal : subnormal;
  v = code == kCodeInf ? float_of(0x7F800000u) : v;
  return code > kCodeInf ? float_of(0x7FC00000u) : v;
}

// Elements [0, count) of a run of kLanes consecutive elements of one block (count <= kLanes): decode both
// accumulators, run the dense update (AdadeltaElement, with fp32 "storage": the new values stay unrounded),
// and fold the new values' exponents into `sq_largest` / `acc_largest`, this run's share of the block's
// reduction. The caller reduces over the block's runs (a CPU tile is one run of 256; a CUDA warp, 32 runs of
// 8), then calls encode_lanes with the block exponents. Lanes past `count` are left alone.
template <typename ParamT, GradMode kGradMode, bool kHasMaster, bool kScaled, int kLanes>
struct QuantizedLanes {
  using Element = AdadeltaElement<ParamT, float, kGradMode, kHasMaster, kScaled>;

  ADF_HOST_DEVICE static void update(ParamT* param, ParamT* grad, const uint8_t* sq_codes, const uint8_t* acc_codes,
                                     float* master, int count, uint32_t sq_exp, uint32_t acc_exp,
                                     const StepScalars<float>& s, uint32_t tensor_key, int64_t first,
                                     float (&sq)[kLanes], float (&acc)[kLanes], uint32_t& sq_largest,
                                     uint32_t& acc_largest) {
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) {
      sq[l] = decode_state(sq_codes[l], sq_exp);
      acc[l] = decode_state(acc_codes[l], acc_exp);
      float no_master = 0.0f;
      Element::update(param[l], grad[l], sq[l], acc[l], kHasMaster ? master[l] : no_master, s, tensor_key,
                      first + l);
      const uint32_t a = counted_exponent(sq[l]);
      const uint32_t b = counted_exponent(acc[l]);
      sq_largest = a > sq_largest ? a : sq_largest;
      acc_largest = b > acc_largest ? b : acc_largest;
    }
  }

  ADF_HOST_DEVICE static void encode(uint8_t* sq_codes, uint8_t* acc_codes, const float (&sq)[kLanes],
                                     const float (&acc)[kLanes], int count, uint32_t sq_exp, uint32_t acc_exp) {
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) {
      sq_codes[l] = uint8_t(encode_state(sq[l], sq_exp));
      acc_codes[l] = uint8_t(encode_state(acc[l], acc_exp));
    }
  }
};

}  // namespace adadelta_fused
