// 8-bit Adadelta state: the code of one accumulator value and the per-element parts of a step over codes,
// shared by the CPU and CUDA kernels of adadelta_fused::quantized_adadelta_. Mirrors
// adadelta_fused/quantized_reference.py, which states the format; in short:
//
// An accumulator x (square_avg or acc_delta) is stored as its RMS R = sqrt(x + eps) (the paper's RMS[x], eps the
// step's), linearly: one uint8 code per element and one fp32 scale per block of kQuantBlock consecutive elements
// (in the order the kernels walk the param). The scale s is the block's largest finite R (at least kMinScale); a
// code c in 0..254 stands for R = max(c * (s / 254), sqrt(eps)), x = R * R - eps (one fma), and 255 for NaN.
// Adadelta uses each accumulator only as sqrt(x + eps): the update takes R of acc_delta as it is and its std is
// the new R of square_avg, so a step takes two square roots an element, where storing sqrt(x) took four. Every
// operation is an IEEE-rounded fp32 operation (sqrt, multiply, fma, one division per block), so every executor
// (C++, CUDA, Triton, torch) gets the same bits. Why this map: bench/results/quantized_state_codes.md (within
// issue 13's training bounds, second to codes of sqrt(x), whose step takes four roots; a power-of-two scale stalls
// a decay x <- rho x, an fp32 absmax scale does not; codes of sqrt(x) follow it exactly, and these re-round R at
// every step where x is near eps: after 100 steps of zero gradients R is off by 1.9 % (median) at rho 0.9).
#pragma once

#include <cstdint>

#include "adadelta_math.h"

namespace adadelta_fused {

// Keep equal to quantized_reference.BLOCK / LEVELS / MIN_SCALE (tests/test_quantized.py compares them).
constexpr int kQuantBlock = 256;
constexpr uint32_t kCodeLevels = 254;  // codes 0..254 are roots; 255 is NaN
constexpr uint32_t kCodeNaN = 255u;
// The smallest scale: an all-zero block (fresh state) encodes against it instead of dividing by zero. A root
// of 2^-64 is a mean square of 2^-128, far below any useful eps.
constexpr uint32_t kMinScaleBits = 0x1F800000u;  // 2^-64

// A block is ordinary when all its new roots are finite (no NaN: a NaN or negative accumulator; no inf): then
// the largest of their raw fp32 bits is below inf's and is the largest root. The kernels reduce raw bits (one
// max per value) and take the special cases only in blocks that are not ordinary (kSpecials below); both paths
// give the same codes.
ADF_HOST_DEVICE bool ordinary_block(uint32_t largest_bits) { return largest_bits < 0x7F800000u; }

// The root's fp32 bits when it counts toward its block's scale (finite; -0 counts as 0), else 0. A mask, not a
// select: GCC 12 vectorizes a max over masked values, but not over a select it folds into the max.
ADF_HOST_DEVICE uint32_t counted_bits(float root) {
  const uint32_t u = bits_of(root);
  return u & (0u - uint32_t(u < 0x7F800000u));
}

// The block's scale from the largest counted_bits of its roots.
ADF_HOST_DEVICE float block_scale(uint32_t largest_bits) {
  return float_of(largest_bits > kMinScaleBits ? largest_bits : kMinScaleBits);
}

// Per block: what an encoding multiplies a root by, and what a decoding multiplies a code by.
ADF_HOST_DEVICE float encode_factor(float scale) { return float(kCodeLevels) / scale; }
ADF_HOST_DEVICE float decode_step(float scale) { return scale / float(kCodeLevels); }

// kSpecials = false: the root is finite (its block is ordinary). root * factor is at most 254 (plus rounding),
// and adding 2^23 makes the FPU round it to an integer, to nearest even: three float operations.
template <bool kSpecials = true>
ADF_HOST_DEVICE uint32_t encode_root(float root, float factor) {
  const uint32_t code = bits_of(root * factor + 8388608.0f) - 0x4B000000u;
  if constexpr (!kSpecials) return code;
  // Signed compare: fp32 bits of a finite root are below inf's as int32 too, and a negative one (-0) is finite
  // (AVX2 has no unsigned vector compare; GCC spends two instructions on each unsigned one).
  const int32_t i = int32_t(bits_of(root) & 0x7FFFFFFFu);
  return i >= 0x7F800000 ? kCodeNaN : code;
}

// A code's R before the floor (adadelta_values' kRmsState raises it to sqrt(eps)). kSpecials = false: the code
// is not kCodeNaN (no code of its block is).
template <bool kSpecials = true>
ADF_HOST_DEVICE float decode_root(uint32_t code, float step) {
  const float root = float(int32_t(code)) * step;
  if constexpr (!kSpecials) return root;
  return code == kCodeNaN ? float_of(0x7FC00000u) : root;
}

// One run of kLanes consecutive elements of one block (elements [0, count), count <= kLanes): the per-element
// parts of a step. A CPU tile is one run of 256; a CUDA warp, 32 runs of 8. The block's reductions between the
// parts are the caller's: decode (both accumulators' roots, from the old codes and scales) -> update (the dense
// update on the roots, AdadeltaElement with kRmsState and fp32 "storage", so the new roots stay unrounded; folds
// their raw bits into the run's largest, which the CPU kernel reduces; the CUDA kernel, whose runs may hold
// missing lanes, reduces its live lanes itself) -> [reduce over the block's runs; ordinary_block? block_scale]
// -> encode.
template <typename ParamT, GradMode kGradMode, bool kHasMaster, bool kScaled, int kLanes>
struct QuantizedLanes {
  using Element = AdadeltaElement<ParamT, float, kGradMode, kHasMaster, kScaled, /*kRmsState=*/true>;

  // The largest code of the run: a block whose largest is below kCodeNaN decodes without special cases.
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
  ADF_HOST_DEVICE static void decode(const uint8_t* codes, int count, float step, float (&roots)[kLanes]) {
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) roots[l] = decode_root<kSpecials>(codes[l], step);
  }

  // The dense update of the decoded roots, which leaves each accumulator's new root in its place and folds the
  // roots' raw bits into the run's largest.
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

  // The run's largest counted_bits: a block that is not ordinary takes its scale from these.
  ADF_HOST_DEVICE static uint32_t largest_counted(const float (&roots)[kLanes], int count) {
    uint32_t largest = 0;
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) {
      const uint32_t b = counted_bits(roots[l]);
      largest = b > largest ? b : largest;
    }
    return largest;
  }

  template <bool kSpecials>
  ADF_HOST_DEVICE static void encode(const float (&roots)[kLanes], int count, float factor, uint8_t* codes) {
    ADF_LANES_LOOP
    for (int l = 0; l < count; ++l) codes[l] = uint8_t(encode_root<kSpecials>(roots[l], factor));
  }
};

}  // namespace adadelta_fused
