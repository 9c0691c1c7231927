// The 8-bit state's codes in 16 lanes, for the AVX-512 level of the 8-bit CPU kernel (quantized_cpu.cpp): the
// decode and the encode of quantized_state.h (decode_root<false>, encode_root<false>) on float_lanes.h's
// vectors, each rounding as the fp32 operations there round, and a block's check for kCodeNaN.
//
// Why not GCC's loops over the shared lanes: they widen bytes to dwords through words (vpmovzxbw, vpmovzxwd,
// vinserti64x4 in the decode; vpmovwb back in the encode) and run a uint32 max to find a block's largest code.
// One core, 128 Ki fp32 params in L2, ns per element of the whole step: 1.18-1.29 with those loops beside the
// lanes' update, which took 64 % of the samples (quantized_cpu.cpp says what this header brings).
#pragma once

#if defined(__x86_64__)

#include <immintrin.h>

#include <cstdint>

#include "../quantized_state.h"
#include "float_lanes.h"

#define ADF_CODE_LANES_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2"))) inline

namespace adadelta_fused {

// Whether any of the n codes (n <= kQuantBlock) is kCodeNaN: the largest byte of the block, 64 at a time (the
// last load masked to the block's length), is kCodeNaN exactly when one is, since no code is larger.
ADF_CODE_LANES_INLINE bool has_nan_code(const uint8_t* codes, int n) {
  __m512i largest = _mm512_setzero_si512();
  for (int i = 0; i < n; i += 64) {
    // bzhi reads the low byte of its count: 256 would clear every bit.
    const __mmask64 live = _bzhi_u64(~uint64_t(0), unsigned(n - i < 64 ? n - i : 64));
    largest = _mm512_max_epu8(largest, _mm512_maskz_loadu_epi8(live, codes + i));
  }
  return _mm512_cmpeq_epi8_mask(largest, _mm512_set1_epi8(char(kCodeNaN))) != 0;
}

// decode_root<false> of 16 codes: code * step.
ADF_CODE_LANES_INLINE FloatLanes decode_lanes(const uint8_t* codes, FloatLanes step) {
  const __m512i code = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  return FloatLanes(_mm512_cvtepi32_ps(code)) * step;
}

// encode_root<false> of 16 finite roots: root * factor + 2^23 is 0x4B000000 + code, and a code fits in the low
// byte, which vpmovdb keeps (the subtraction of encode_root only clears the bits above it).
ADF_CODE_LANES_INLINE void encode_lanes(FloatLanes root, FloatLanes factor, uint8_t* codes) {
  const FloatLanes biased = root * factor + FloatLanes(8388608.0f);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm512_cvtepi32_epi8(_mm512_castps_si512(biased.v)));
}

}  // namespace adadelta_fused

#undef ADF_CODE_LANES_INLINE

#endif
