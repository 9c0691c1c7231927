// The checks behind float_lanes.h's square root: that its bits are vsqrtps's on the CPU that runs it.
#include "float_lanes.h"

#include <c10/util/Exception.h>

#include <atomic>

namespace adadelta_fused {
namespace {

// float_lanes_bf16_mismatches checks whole blocks of this many patterns.
constexpr int kBf16CheckBlock = 4096;

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))) int64_t count_root_mismatches(uint32_t first,
                                                                                                  int64_t count) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t mismatches = 0;
  for (int64_t done = 0; done < count; done += kFloatLanes) {
    // A last, partial vector counts only its first count - done lanes.
    const __mmask16 kept = count - done >= kFloatLanes ? __mmask16(0xFFFF) : __mmask16((1u << (count - done)) - 1u);
    const __m512 x = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_set1_epi32(int32_t(first + uint32_t(done))), lane));
    const __m512i got = _mm512_castps_si512(square_root(FloatLanes(x)).v);
    mismatches += __builtin_popcount(_mm512_mask_cmpneq_epi32_mask(kept, got, _mm512_castps_si512(_mm512_sqrt_ps(x))));
  }
  return mismatches;
}

// The lanes' bf16 stores against the scalar ones of dtypes.h and rounding.h, lane by lane, in blocks whose scalar
// loops GCC vectorizes (all 2^32 inputs in about a second).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))) int64_t count_bf16_mismatches(
    uint32_t first, int64_t count, bool stochastic) {
  constexpr int kBlock = kBf16CheckBlock;
  constexpr uint32_t kKey = 0x9E3779B9u;
  const uint32_t noise_high = rounding_noise_high(kKey, 0);
  alignas(64) uint32_t bits[kBlock];
  alignas(64) bfloat16_bits got[kBlock];
  alignas(64) uint16_t expected[kBlock];
  int64_t mismatches = 0;
  for (int64_t done = 0; done < count; done += kBlock) {
    const uint32_t block_first = first + uint32_t(done);
    for (int i = 0; i < kBlock; ++i) bits[i] = block_first + uint32_t(i);
    if (stochastic) {
      for (int i = 0; i < kBlock; ++i) {
        expected[i] = bf16_round_stochastic(float_of(bits[i]), rounding_noise_low(noise_high, bits[i]));
      }
      // The noise as the kernel's lanes draw it (adadelta_cpu.cpp update_chunk_lanes): one key per 64 Ki run (a
      // block of 4096 from a multiple of 4096 lies in one), a pair hash per two elements, spread by pair_noises.
      const UintLanes run_key(rounding_run_key(noise_high, block_first));
      for (int i = 0; i < kBlock; i += 2 * kFloatLanes) {
        const UintLanes hashes = rounding_pair_hash_in_run(run_key, pair_indices(bits[i]));
        store_lanes_stochastic(got + i, _mm512_castsi512_ps(_mm512_load_si512(bits + i)), pair_noises<false>(hashes));
        store_lanes_stochastic(got + i + kFloatLanes, _mm512_castsi512_ps(_mm512_load_si512(bits + i + kFloatLanes)),
                               pair_noises<true>(hashes));
      }
    } else {
      for (int i = 0; i < kBlock; ++i) expected[i] = bf16_round_nearest(float_of(bits[i]));
      for (int i = 0; i < kBlock; i += kFloatLanes) {
        store_lanes_bf16_instruction(got + i, _mm512_castsi512_ps(_mm512_load_si512(bits + i)));
      }
    }
    int block_mismatches = 0;
    for (int i = 0; i < kBlock; ++i) block_mismatches += uint16_t(got[i]) != expected[i];
    mismatches += block_mismatches;
  }
  return mismatches;
}
#endif

bool supported() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// Whether square_root is exact on this CPU. The lanes scale exactly with x -> 4x as long as rsqrt14 does, and a
// table-driven rsqrt14 reads only the significand and the exponent's parity, which [1, 4) covers whole; the two
// binade pairs at the range's ends check that nothing leaves the normal range there, and 4096 inputs in each
// binade pair between check the scaling itself. 3 * 2^24 + 90 * 4096 inputs, about 11 ms.
bool square_root_checks_out() {
  if (!supported()) return false;
  constexpr int64_t kTwoBinades = int64_t(2) << 23;  // [2^k, 2^(k+2)): both exponent parities
  if (float_lanes_root_mismatches(0x3F800000u, kTwoBinades) != 0 ||                   // [1, 4)
      float_lanes_root_mismatches(kFastRootLowest, kTwoBinades) != 0 ||               // [2^-80, 2^-78)
      float_lanes_root_mismatches(kFastRootEnd - uint32_t(kTwoBinades), kTwoBinades) != 0) {  // [2^98, 2^100)
    return false;
  }
  constexpr uint32_t kSampleStride = uint32_t(kTwoBinades / 4096);
  for (uint32_t pair = kFastRootLowest; pair < kFastRootEnd; pair += uint32_t(kTwoBinades)) {
    for (uint32_t bits = pair; bits < pair + uint32_t(kTwoBinades); bits += kSampleStride * 16) {
      if (float_lanes_root_mismatches(bits, 16) != 0) return false;
    }
  }
  return true;
}

std::atomic<bool>& lanes_enabled() {
  static std::atomic<bool> enabled{true};
  return enabled;
}

}  // namespace

bool float_lanes_supported() { return supported(); }

bool float_lanes_are_exact() {
  static const bool exact = square_root_checks_out();
  return exact;
}

bool float_lanes_run() { return lanes_enabled().load() && float_lanes_are_exact(); }

void set_float_lanes(bool enabled) { lanes_enabled().store(enabled); }

int64_t float_lanes_root_mismatches(uint32_t first, int64_t count) {
  TORCH_CHECK(supported(), "float lanes need AVX-512 (avx512f, bw, vl, dq) with F16C and FMA, which this CPU lacks");
  TORCH_CHECK_VALUE(count >= 0 && count <= (int64_t(1) << 32), "count must be in [0, 2^32], got ", count);
#if defined(__x86_64__)
  return count_root_mismatches(first, count);
#else
  return count;
#endif
}

int64_t float_lanes_bf16_mismatches(uint32_t first, int64_t count, bool stochastic) {
  TORCH_CHECK(supported(), "float lanes need AVX-512 (avx512f, bw, vl, dq) with F16C and FMA, which this CPU lacks");
  TORCH_CHECK(stochastic || bf16_instruction_supported(),
              "the bf16 instruction store needs AVX512_BF16, which this CPU lacks");
  TORCH_CHECK_VALUE(count >= 0 && count <= (int64_t(1) << 32) && count % kBf16CheckBlock == 0,
                    "count must be a multiple of ", kBf16CheckBlock, " in [0, 2^32], got ", count);
  TORCH_CHECK_VALUE(first % kBf16CheckBlock == 0, "first must be a multiple of ", kBf16CheckBlock, ", got ", first);
#if defined(__x86_64__)
  return count_bf16_mismatches(first, count, stochastic);
#else
  return count;
#endif
}

bool bf16_instruction_supported() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return supported() && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

}  // namespace adadelta_fused
