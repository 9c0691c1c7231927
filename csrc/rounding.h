// Counter-based noise for stochastic rounding: a pure function of (key, tensor, element), so a step is
// reproducible from its seed on any backend and in any launch order. Mirrors reference.rounding_noise.
#pragma once

#include <cstdint>

#include "dtypes.h"

namespace adadelta_fused {

// mix32 (below) from its second line on. Its first line folds x ^ (x >> 16); a caller that knows x >> 16 ahead
// folds it itself (rounding_pair_hash_in_run).
template <typename U>
ADF_HOST_DEVICE U mix32_after_fold(U x) {
  x = x * U(0x7FEB352Du);
  x = x ^ (x >> 15);
  x = x * U(0x846CA68Bu);
  x = x ^ (x >> 16);
  return x;
}

// A 32-bit integer finalizer with low bias (two multiply-xorshift rounds): every output bit depends on
// every input bit, which is all the 16 noise bits below need. U is uint32_t, or 16 lanes of it (the AVX-512 CPU
// kernel's UintLanes, cpu/float_lanes.h), which run these lines.
template <typename U>
ADF_HOST_DEVICE U mix32(U x) {
  return mix32_after_fold(x ^ (x >> 16));
}

// Hoisted out of the element loop: depends only on the step's key and the tensor's position in the op.
ADF_HOST_DEVICE uint32_t rounding_tensor_key(uint32_t step_key, int64_t tensor_index) {
  return mix32<uint32_t>(step_key ^ (uint32_t(tensor_index) * 0x9E3779B9u));
}

// The noise's two hash rounds, the first keyed by the index's high word and the second by its low word.
// They are separate so that the CPU kernel can run the first once per chunk or tile
// (AdadeltaElement::update_hoisted, cpu/tile_convert.h): per element, one round instead of two.
ADF_HOST_DEVICE uint32_t rounding_noise_high(uint32_t tensor_key, int64_t index) {
  return mix32<uint32_t>(tensor_key ^ uint32_t(uint64_t(index) >> 32));
}

// The second round hashes a pair of neighbours: elements 2k and 2k + 1 of a tensor (k < 2^31 within a 2^32
// stretch) draw the low and the high 16 bits of one hash of the pair's index (index with bit 0 clear), so the
// AVX-512 lanes hash 16 pairs for 32 elements: the hash's two 32-bit multiplies (two uops each) and its shifts
// per 32 elements instead of per 16, which decided whether stochastic rounding stays within 10 % of the nearest
// step (bench/results/stochastic-pairs-20261203/). The halves are uncorrelated (tests/test_precision.py); a
// review measured one weak bit dependence from mix32's last fold (low bit 3 against high bit 9: 0.5 +- 1.3e-3
// over 2^24 pairs), not visible in the rounding decisions.
template <typename U>
ADF_HOST_DEVICE U rounding_pair_hash(U high, U index_low) {
  return mix32(high ^ (index_low & U(0xFFFFFFFEu)));
}

template <typename U>
ADF_HOST_DEVICE U rounding_noise_low(U high, U index_low) {
  return (rounding_pair_hash(high, index_low) >> ((index_low & U(1u)) << 4)) & U(0xFFFFu);
}

// rounding_pair_hash for a run of indices that share their upper 16 bits (64 Ki from a multiple of 64 Ki: a CPU
// chunk). mix32 first folds x ^ (x >> 16) with x = high ^ pair_index, and x >> 16 is the same for the whole run,
// so the fold is pair_index ^ run_key with one key per run: one operation instead of three.
ADF_HOST_DEVICE uint32_t rounding_run_key(uint32_t high, uint32_t index_low) {
  return high ^ ((high ^ index_low) >> 16);
}

// pair_index: the even index of the pair (index_low with its lowest bit clear).
template <typename U>
ADF_HOST_DEVICE U rounding_pair_hash_in_run(U run_key, U pair_index) {
  return mix32_after_fold(run_key ^ pair_index);
}

ADF_HOST_DEVICE uint32_t rounding_noise(uint32_t tensor_key, int64_t index) {
  return rounding_noise_low<uint32_t>(rounding_noise_high(tensor_key, index), uint32_t(uint64_t(index)));
}

// fp32 -> bf16 rounding up with probability equal to the dropped fraction: add 16 random bits under the
// kept mantissa, then truncate. Non-finite values keep round-to-nearest.
ADF_HOST_DEVICE uint16_t bf16_round_stochastic(float v, uint32_t noise) {
  const uint32_t u = bits_of(v);
  const bool finite = (u & 0x7F800000u) != 0x7F800000u;
  return finite ? uint16_t((u + noise) >> 16) : bf16_round_nearest(v);
}

}  // namespace adadelta_fused
