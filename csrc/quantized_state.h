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

// The fp32 bits of v when it counts toward its block's scale (finite, sign bit clear), else 0: a block's
// largest exponent is the largest of these, shifted right by 23 once per block. A mask, not a select: GCC 12
// vectorizes a max over masked values, but not over a select it folds into the max.
ADF_HOST_DEVICE uint32_t counted_bits(float v) {
  const uint32_t u = bits_of(v);
  return u & (0u - uint32_t(u < 0x7F800000u));
}

// A block is ordinary when every value in it is finite and non-negative, i.e. when the largest of its raw fp32
// bits is below inf's: then that largest value is also the largest counted one, and no code needs the special
// cases. The kernels reduce raw bits (one max per value) and take the special cases only in blocks that are not
// ordinary (kSpecials below); both paths give the same codes.
ADF_HOST_DEVICE bool ordinary_block(uint32_t largest_bits) { return largest_bits < 0x7F800000u; }

// The block exponent F of a block whose largest counted_bits value is `largest`.
ADF_HOST_DEVICE uint32_t block_exponent(uint32_t largest) {
  const uint32_t e = largest >> 23;
  return e > kMinBlockExponent ? e : kMinBlockExponent;
}

// The stored scale 2^(F - 127), and F back from a stored scale (only its exponent bits count; a scale that
// no step wrote is clamped into the range steps write).
ADF_HOST_DEVICE float block_scale(uint32_t exponent) { return float_of(exponent << 23); }

ADF_HOST_DEVICE uint32_t scale_exponent(float scale) {
  const uint32_t e = (bits_of(scale) >> 23) & 0xFFu;
  return e < kMinBlockExponent ? kMinBlockExponent : (e > 254u ? 254u : e);
}

// kSpecials = false: v is finite and non-negative (its block is ordinary). Compares are signed (fp32 bits of
// such values, and codes 0..255, are non-negative int32): AVX2 has no unsigned vector compare, and GCC spends
// two instructions on each unsigned one.
template <bool kSpecials = true>
ADF_HOST_DEVICE uint32_t encode_state(float v, uint32_t block_exp) {
  const uint32_t u = bits_of(v);
  // Codes with e >= 1: move the exponent so that the block's top binade lands on e = 14, then round the 19
  // dropped mantissa bits to nearest even; a carry into the exponent is the correct rounding.
  const uint32_t rebased = u - ((block_exp - 14u) << 23);
  uint32_t normal = (rebased + 0x3FFFFu + ((u >> 19) & 1u)) >> 19;
  normal = normal < kMaxFiniteCode ? normal : kMaxFiniteCode;
  // Codes with e = 0 count units of 2^(F - 144): v / 2^(F - 144) is below 16 there, and adding 2^23 makes the
  // FPU round it to an integer, to nearest even (a result of 16 is the code 0x10, the smallest e = 1 value: the
  // encoding is continuous there). The scaling by a power of two is exact unless it falls below 2^-126, and such
  // a value rounds to 0 either way. Three float operations instead of a variable shift's dozen integer ones: the
  // CPU kernel is bound by its instruction count (quantized_reference.encode states the same rounding with
  // integer shifts; tests/test_quantized.py checks they agree).
  const float units = v * float_of((271u - block_exp) << 23) + 8388608.0f;  // 2^(144 - F), then 2^23
  const uint32_t sub = bits_of(units) - 0x4B000000u;
  const int32_t i = int32_t(u);  // (negative for values with the sign bit set)
  const uint32_t code = i >= int32_t((block_exp - 13u) << 23) ? normal : sub;
  if constexpr (!kSpecials) return code;
  const uint32_t special = i == 0x7F800000 ? kCodeInf : (i == INT32_MIN ? 0u : kCodeNaN);  // inf; -0; NaN
  return i >= 0x7F800000 || i < 0 ? special : code;  // (and negatives, stored as NaN)
}

// kSpecials = false: the code is below kCodeInf (no code of its block is).
template <bool kSpecials = true>
ADF_HOST_DEVICE float decode_state(uint32_t code, uint32_t block_exp) {
  const int32_t c = int32_t(code);
  const float normal = float_of((code << 19) + ((block_exp - 14u) << 23));
  const float subnormal = float(c) * float_of((block_exp - 17u) << 23);  // m * 2^(F - 144), exact
  const float v = c >= 0x10 ? normal : subnormal;
  if constexpr (!kSpecials) return v;
  const float special = float_of(c == int32_t(kCodeInf) ? 0x7F800000u : 0x7FC00000u);
  return c >= int32_t(kCodeInf) ? special : v;
}

// One run of kLanes consecutive elements of one block (elements [0, count), count <= kLanes): the per-element
// part of a step. A CPU tile is one run of 256; a CUDA warp, 32 runs of 8. The block's reductions between the
// parts are the caller's: decode (both accumulators, from the old codes) -> update (the dense update,
// AdadeltaElement with fp32 "storage", so the new values stay unrounded; folds the new values' raw bits into
// the run's largest) -> [reduce over the block's runs; ordinary_block? block_exponent] -> encode.
template <typename ParamT, GradMode kGradMode, bool kHasMaster, bool kScaled, int kLanes>
struct QuantizedLanes {
  using Element = AdadeltaElement<ParamT, float, kGradMode, kHasMaster, kScaled>;

  // The largest code of the run: a block whose largest is below kCodeInf decodes without special cases.
  ADF_HOST_DEVICE static uint32_t largest_code(const uint8_t* codes, int count) {
    uint32_t largest = 0;
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) largest = codes[l] > largest ? codes[l] : largest;
    return largest;
  }

  // Decoding has a loop of its own: a loop over bytes runs 32 lanes per AVX2 iteration, and with the update's
  // fp32 math in the same loop that is 4 vectors of every variable, which spills (73 of the fused loop's 396
  // instructions were stack moves). On a GPU the loops unroll into one.
  template <bool kSpecials>
  ADF_HOST_DEVICE static void decode(const uint8_t* codes, int count, uint32_t block_exp, float (&values)[kLanes]) {
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) values[l] = decode_state<kSpecials>(codes[l], block_exp);
  }

  ADF_HOST_DEVICE static void update(ParamT* param, ParamT* grad, float* master, int count,
                                     const StepScalars<float>& s, uint32_t tensor_key, int64_t first,
                                     float (&sq)[kLanes], float (&acc)[kLanes], uint32_t& sq_largest,
                                     uint32_t& acc_largest) {
    // Locals: GCC does not vectorize a reduction into a reference, which might alias the buffers.
    uint32_t sq_max = sq_largest;
    uint32_t acc_max = acc_largest;
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) {
      float no_master = 0.0f;
      Element::update(param[l], grad[l], sq[l], acc[l], kHasMaster ? master[l] : no_master, s, tensor_key,
                      first + l);
      const uint32_t a = bits_of(sq[l]);
      const uint32_t b = bits_of(acc[l]);
      sq_max = a > sq_max ? a : sq_max;
      acc_max = b > acc_max ? b : acc_max;
    }
    sq_largest = sq_max;
    acc_largest = acc_max;
  }

  // The run's largest counted_bits: a block that is not ordinary takes its exponent from these.
  ADF_HOST_DEVICE static uint32_t largest_counted(const float (&values)[kLanes], int count) {
    uint32_t largest = 0;
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) {
      const uint32_t b = counted_bits(values[l]);
      largest = b > largest ? b : largest;
    }
    return largest;
  }

  template <bool kSpecials>
  ADF_HOST_DEVICE static void encode(const float (&values)[kLanes], int count, uint32_t block_exp, uint8_t* codes) {
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) codes[l] = uint8_t(encode_state<kSpecials>(values[l], block_exp));
  }
};

}  // namespace adadelta_fused
