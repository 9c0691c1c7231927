// Tiles of 16-bit storage widened to fp32 and narrowed back, for the CPU kernel's staged update
// (adadelta_cpu.cpp): portably, or with vcvtph2ps/vcvtps2ph (F16C's 8 lanes, AVX-512F's 16). CPU-only: nvcc
// never includes it.
//
// Each function gives exactly the bits of dtypes.h's to_math/store, element for element. The one place
// the instruction differs is a NaN: vcvtps2ph keeps the payload (quieted), while the portable store
// writes sign | 0x7E00, so NaN lanes are patched. Both widths checked against the portable store on all 2^32
// fp32 inputs (standalone runs while writing them); tests/test_cpu_rounding_edges.py checks ties, overflow,
// subnormals, ±0, inf and NaN at every ISA level. Widening needs no patch: vcvtph2ps quiets the 1022
// signalling NaNs where the portable load keeps them signalling, but every loaded value passes an
// arithmetic operation (which quiets it) before any store, and every 16-bit store canonicalizes a NaN.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../dtypes.h"
#include "../rounding.h"

namespace adadelta_fused {

// How a tile's 16-bit values convert: kF16c uses the F16C instructions for fp16, kAvx512 their 16-lane
// AVX-512F forms (bf16 widens with a shift and narrows with four integer operations, which GCC vectorizes
// well on its own).
enum class TileConversion { kPortable, kF16c, kAvx512 };

#define ADF_TILE_INLINE __attribute__((always_inline)) inline

template <typename T>
ADF_TILE_INLINE void widen_portable(const T* __restrict__ src, float* __restrict__ dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = to_math(src[i]);
}

template <typename T>
ADF_TILE_INLINE void narrow_portable(const float* __restrict__ src, T* __restrict__ dst, int n) {
  for (int i = 0; i < n; ++i) store(dst[i], src[i]);
}

#if defined(__x86_64__)
// 8 values per instruction; the last n % 8 take the portable loop. Called, not inlined: GCC refuses to
// inline F16C code into the target-neutral templates between it and the kernel's F16C function, and one
// call per tile of 256 elements costs little.
__attribute__((target("avx,f16c"))) inline void widen_f16c(const float16_bits* __restrict__ src,
                                                                      float* __restrict__ dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  widen_portable(src + i, dst + i, n - i);
}

__attribute__((target("avx,f16c"))) inline void narrow_f16c(const float* __restrict__ src,
                                                                       float16_bits* __restrict__ dst, int n) {
  const __m128i sign = _mm_set1_epi16(int16_t(0x8000));
  const __m128i canonical_nan = _mm_set1_epi16(0x7E00);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);  // from the immediate, not MXCSR
    // The NaN lanes' fp32 masks (all ones) narrow to 16-bit masks with a saturating pack.
    const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    const __m128i nan16 = _mm_packs_epi32(_mm_castps_si128(_mm256_castps256_ps128(is_nan)),
                                          _mm_castps_si128(_mm256_extractf128_ps(is_nan, 1)));
    const __m128i patched = _mm_or_si128(_mm_and_si128(h, sign), canonical_nan);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm_blendv_epi8(h, patched, nan16));
  }
  narrow_portable(src + i, dst + i, n - i);
}

// AVX-512F converts 16 values per instruction. The same NaN patch, with a mask register for the blend.
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) inline void widen_avx512(
    const float16_bits* __restrict__ src, float* __restrict__ dst, int n) {
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
  widen_f16c(src + i, dst + i, n - i);
}

// Also the fp16 store of float_lanes.h. The patch runs only for a vector holding a NaN, which an ordinary step
// never has: its three operations per store otherwise keep the vector ports from the update's arithmetic.
__attribute__((always_inline, target("avx512f,avx512bw,avx512vl,f16c"))) inline __m256i fp16_round_nearest_avx512(
    __m512 v) {
  const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
  const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  if (__builtin_expect(is_nan == 0, 1)) return h;
  const __m256i patched = _mm256_or_si256(_mm256_and_si256(h, _mm256_set1_epi16(int16_t(0x8000))),
                                          _mm256_set1_epi16(0x7E00));
  return _mm256_mask_blend_epi16(is_nan, h, patched);
}

__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) inline void narrow_avx512(
    const float* __restrict__ src, float16_bits* __restrict__ dst, int n) {
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), fp16_round_nearest_avx512(_mm512_loadu_ps(src + i)));
  }
  narrow_f16c(src + i, dst + i, n - i);
}
#endif

template <TileConversion kConversion, typename T>
ADF_TILE_INLINE void widen(const T* __restrict__ src, float* __restrict__ dst, int n) {
#if defined(__x86_64__)
  if constexpr (kConversion == TileConversion::kF16c && std::is_same_v<T, float16_bits>) {
    return widen_f16c(src, dst, n);
  }
  if constexpr (kConversion == TileConversion::kAvx512 && std::is_same_v<T, float16_bits>) {
    return widen_avx512(src, dst, n);
  }
#endif
  widen_portable(src, dst, n);
}

template <TileConversion kConversion, typename T>
ADF_TILE_INLINE void narrow(const float* __restrict__ src, T* __restrict__ dst, int n) {
#if defined(__x86_64__)
  if constexpr (kConversion == TileConversion::kF16c && std::is_same_v<T, float16_bits>) {
    return narrow_f16c(src, dst, n);
  }
  if constexpr (kConversion == TileConversion::kAvx512 && std::is_same_v<T, float16_bits>) {
    return narrow_avx512(src, dst, n);
  }
#endif
  narrow_portable(src, dst, n);
}

// Stochastic rounding of a bf16 param tile whose first element has index `first` in its tensor. The
// noise's first hash round depends on the index's high word only, which is the same for the whole tile
// (tiles never straddle a multiple of 2^32 elements: see the caller), so it runs once per tile.
ADF_TILE_INLINE void narrow_stochastic(const float* __restrict__ src, bfloat16_bits* __restrict__ dst, int n,
                                       uint32_t tensor_key, int64_t first) {
  const uint32_t high = rounding_noise_high(tensor_key, first);
  const uint32_t low = uint32_t(first);
  for (int i = 0; i < n; ++i) {
    dst[i] = bfloat16_bits(bf16_round_stochastic(src[i], rounding_noise_low(high, low + uint32_t(i))));
  }
}

#undef ADF_TILE_INLINE

}  // namespace adadelta_fused
