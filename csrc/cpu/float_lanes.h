// Sixteen fp32 lanes for the AVX-512 CPU kernels: the operations adadelta_values (adadelta_math.h) uses, each
// rounding exactly as the one fp32 operation it stands for, and loads and stores of every storage type.
//
// Why not GCC's vectorization of the scalar update: its square roots and divisions all queue on the one divider
// (on this project's Xeon, vsqrtps zmm issues once per 12 cycles and vdivps zmm once per 10), two roots and one
// division per element in the dense step (two divisions with a grad_scale; the 8-bit step has as many, since it
// stores sqrt(x + eps)). square_root below runs a root on the two FMA ports instead; each kernel says what it
// gains and where it puts its roots (adadelta_cpu.cpp, quantized_cpu.cpp).
#pragma once

#include <cstdint>

namespace adadelta_fused {

constexpr int kFloatLanes = 16;

// The square root's fast range, [2^-80, 2^100) (fp32 bits): every accumulator plus a usable eps lies in it, and
// no intermediate below overflows or turns subnormal. The tightest is the low end: a nonzero residual x - g1^2 is
// a multiple of ulp(g1)^2, which is 2^-126, the smallest normal, at x = 2^-80 (and x - g1^2 is exactly that for
// x = (2^23 + 2) 2^-103). Below, subnormal residuals cost microcode assists: 2^24 inputs from 2^-100 took 58 ms
// against 3.4.
constexpr uint32_t kFastRootLowest = 0x17800000u;
constexpr uint32_t kFastRootEnd = 0x71800000u;

// Whether square_root gives vsqrtps's bits on this CPU (float_lanes.cpp says over which inputs: 11 ms, once per
// process); where it does not, the kernels keep GCC's loops.
bool float_lanes_are_exact();

// Whether the kernels run the lanes: where they are exact, unless a test or benchmark turned them off with
// set_float_lanes(false) to run GCC's loops at the AVX-512 level.
bool float_lanes_run();
void set_float_lanes(bool enabled);

// For tests: how many of the `count` fp32 bit patterns from `first` (wrapping at 2^32) get other bits from
// square_root than from vsqrtps. Runs only on a CPU with AVX-512 (float_lanes_supported).
int64_t float_lanes_root_mismatches(uint32_t first, int64_t count);
bool float_lanes_supported();

// For tests: how many of the `count` fp32 bit patterns from `first` (both multiples of 4096) get other bits from
// the lanes' bf16 store than from the scalar one: store_lanes_bf16_instruction against bf16_round_nearest, or with
// `stochastic`, store_lanes_stochastic with the noise the kernel's lanes draw (pair hashes, one key per 64 Ki run)
// against bf16_round_stochastic with rounding_noise_low, for index = the bit pattern.
int64_t float_lanes_bf16_mismatches(uint32_t first, int64_t count, bool stochastic);

// Whether the CPU has the lanes and AVX512_BF16: whether float_lanes_bf16_mismatches can run the instruction store.
bool bf16_instruction_supported();

}  // namespace adadelta_fused

#if defined(__x86_64__)

#include <immintrin.h>

#include "../adadelta_math.h"
#include "../dtypes.h"
#include "tile_convert.h"

// Not always_inline: adadelta_values, a template with no target ISA, calls these, and GCC refuses to force an
// AVX-512 function into it. The kernel's AVX-512 function is `flatten`, which inlines them once
// adadelta_values is inlined there.
#define ADF_LANES_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))) inline

namespace adadelta_fused {

struct FloatLanes {
  __m512 v;
  ADF_LANES_INLINE FloatLanes(__m512 lanes) : v(lanes) {}
  ADF_LANES_INLINE explicit FloatLanes(float value) : v(_mm512_set1_ps(value)) {}
};

ADF_LANES_INLINE FloatLanes operator+(FloatLanes a, FloatLanes b) { return _mm512_add_ps(a.v, b.v); }
ADF_LANES_INLINE FloatLanes operator*(FloatLanes a, FloatLanes b) { return _mm512_mul_ps(a.v, b.v); }
ADF_LANES_INLINE FloatLanes operator/(FloatLanes a, FloatLanes b) { return _mm512_div_ps(a.v, b.v); }
ADF_LANES_INLINE FloatLanes fused_multiply_add(FloatLanes a, FloatLanes b, FloatLanes c) {
  return _mm512_fmadd_ps(a.v, b.v, c.v);
}

// sqrt(x), rounded as vsqrtps rounds it. When every lane is in the fast range: rsqrt14's estimate y0 of
// 1/sqrt(x) (relative error below 2^-14), one Goldschmidt step from g0 = x y0 (~sqrt(x)) and h0 = y0 / 2
// (~1/(2 sqrt(x))): r = 1/2 - g0 h0, g1 = g0 + g0 r, h1 = h0 + h0 r (errors ~2^-27); then one correction
// g1 + (x - g1^2) h1: eight instructions, seven of them on the FMA ports. The Newton form it replaced refined y0
// first and then formed the root, one multiply more; the 8-bit step, whose ports are full, went 21.6-23.5 ->
// 21.0-21.9 ms (32 Mi, two threads, alternating runs; within this VM's drift). Other vectors (a lane that is 0,
// subnormal, huge, negative, inf or NaN) take vsqrtps.
//
// That the correction rounds to the IEEE root is checked, not derived: its error bound (about 2^-20 of an ulp)
// does not exclude the inputs whose root lies within 2^-27 ulp of a rounding midpoint. Checked on all 2^32
// inputs (tests/test_float_lanes.py), and on the CPU it runs on when a kernel first asks (float_lanes_are_exact),
// since rsqrt14's table is the CPU's. (An earlier session's standalone "Newton step and Markstein's correction"
// rounded 0.085 % of floats wrong; its code was not kept, so which detail differed is not known. A model that
// corrects with 0.5 y0 instead of h1 also fails.)
ADF_LANES_INLINE FloatLanes square_root(FloatLanes x) {
  const __m512i offset = _mm512_sub_epi32(_mm512_castps_si512(x.v), _mm512_set1_epi32(int32_t(kFastRootLowest)));
  const __mmask16 fast = _mm512_cmp_epu32_mask(offset, _mm512_set1_epi32(int32_t(kFastRootEnd - kFastRootLowest)),
                                               _MM_CMPINT_LT);
  // kortestw sets the carry flag when every lane is fast: one mask instruction, where fast != 0xFFFF takes
  // two (kmovw to a general register, cmp).
  if (__builtin_expect(!_kortestc_mask16_u8(fast, fast), 0)) return _mm512_sqrt_ps(x.v);
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 y0 = _mm512_rsqrt14_ps(x.v);
  const __m512 g0 = _mm512_mul_ps(x.v, y0);
  const __m512 h0 = _mm512_mul_ps(half, y0);
  const __m512 r = _mm512_fnmadd_ps(g0, h0, half);
  const __m512 g1 = _mm512_fmadd_ps(g0, r, g0);
  const __m512 h1 = _mm512_fmadd_ps(h0, r, h0);
  const __m512 residual = _mm512_fnmadd_ps(g1, g1, x.v);
  return _mm512_fmadd_ps(residual, h1, g1);
}

// vsqrtps itself: for a kernel with more square roots than the FMA ports can take besides its other work, to
// give some to the divider.
ADF_LANES_INLINE FloatLanes divider_square_root(FloatLanes x) { return _mm512_sqrt_ps(x.v); }

// adadelta_math.h's choice of unit for one of the update's roots.
template <bool kOnDivider>
ADF_LANES_INLINE FloatLanes square_root_on(FloatLanes x) {
  return kOnDivider ? divider_square_root(x) : square_root(x);
}

// adadelta_math.h's at_least: vmaxps returns its second operand when either is NaN, so a NaN x stays.
ADF_LANES_INLINE FloatLanes at_least(FloatLanes x, FloatLanes floor) { return _mm512_max_ps(floor.v, x.v); }

// Sixteen uint32 lanes: the operations of rounding.h's noise hash (mix32), which runs its lines on them.
struct UintLanes {
  __m512i v;
  ADF_LANES_INLINE UintLanes(__m512i lanes) : v(lanes) {}
  ADF_LANES_INLINE explicit UintLanes(uint32_t value) : v(_mm512_set1_epi32(int32_t(value))) {}
};

ADF_LANES_INLINE UintLanes operator^(UintLanes a, UintLanes b) { return _mm512_xor_si512(a.v, b.v); }
ADF_LANES_INLINE UintLanes operator*(UintLanes a, UintLanes b) { return _mm512_mullo_epi32(a.v, b.v); }
ADF_LANES_INLINE UintLanes operator>>(UintLanes a, unsigned int shift) { return _mm512_srli_epi32(a.v, shift); }
ADF_LANES_INLINE UintLanes operator+(UintLanes a, UintLanes b) { return _mm512_add_epi32(a.v, b.v); }

// The even indices index_low + 0, 2, ..., 30 of 32 elements from an even index_low: their 16 pairs, as
// rounding_pair_hash_in_run takes them.
ADF_LANES_INLINE UintLanes pair_indices(uint32_t index_low) {
  return _mm512_add_epi32(_mm512_set1_epi32(int32_t(index_low)),
                          _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30));
}

// The 16-bit noises of 16 of the 32 elements whose pair hashes are `hashes` (lane k: the pair of elements 2k and
// 2k + 1): elements 0-15 with kSecond false, 16-31 with it true. Element e draws 16-bit word e of the hashes (the
// low half of its pair's hash when e is even, the high half when odd: rounding_noise_low), zero-extended: one
// vpermw that zeroes the odd words.
template <bool kSecond>
ADF_LANES_INLINE UintLanes pair_noises(UintLanes hashes) {
  constexpr int32_t kFirst = kSecond ? 16 : 0;
  const __m512i words = _mm512_add_epi32(_mm512_set1_epi32(kFirst),
                                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  return _mm512_maskz_permutexvar_epi16(0x55555555u, words, hashes.v);
}

ADF_LANES_INLINE FloatLanes load_lanes(const float* src) { return _mm512_loadu_ps(src); }

ADF_LANES_INLINE FloatLanes load_lanes(const bfloat16_bits* src) {
  const __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
}

// vcvtph2ps widens exactly; it quiets a signalling NaN, which the portable load keeps, but every loaded value
// passes an arithmetic operation before any store (as in tile_convert.h).
ADF_LANES_INLINE FloatLanes load_lanes(const float16_bits* src) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}

ADF_LANES_INLINE void store_lanes(float* dst, FloatLanes value) { _mm512_storeu_ps(dst, value.v); }

// bf16_round_nearest (dtypes.h) in 16 lanes: round to nearest even, and torch's canonical NaN; each lane's bf16
// bits in its low half.
ADF_LANES_INLINE __m512i bf16_nearest_bits(FloatLanes value) {
  const __m512i u = _mm512_castps_si512(value.v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd), 16);
  const __mmask16 is_nan = _mm512_cmp_ps_mask(value.v, value.v, _CMP_UNORD_Q);
  return _mm512_mask_blend_epi32(is_nan, rounded, _mm512_set1_epi32(0x7FC0));
}

ADF_LANES_INLINE void store_bf16_bits(bfloat16_bits* dst, __m512i bits) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(bits));
}

ADF_LANES_INLINE void store_lanes(bfloat16_bits* dst, FloatLanes value) {
  store_bf16_bits(dst, bf16_nearest_bits(value));
}

ADF_LANES_INLINE void store_lanes(float16_bits* dst, FloatLanes value) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), fp16_round_nearest_avx512(value.v));
}

// vfpclassps categories (Intel SDM, VFPCLASSPS's imm8).
constexpr int kClassQuietNaN = 0x01;
constexpr int kClassPositiveInf = 0x08;
constexpr int kClassNegativeInf = 0x10;
constexpr int kClassSubnormal = 0x20;
constexpr int kClassSignallingNaN = 0x80;

// The same bits with AVX512_BF16's vcvtneps2bf16, which rounds to nearest even in one instruction where the
// integer path takes five integer operations, a NaN select and a 2-uop vpmovdw, except on two kinds of input: a
// NaN keeps its (quieted) payload and sign, where torch writes 0x7FC0, and a subnormal converts as zero (the
// instruction ignores MXCSR and treats its inputs as DAZ). A vector holding either takes the integer path: an
// ordinary step has neither, and tests/test_float_lanes.py checks all 2^32 inputs. Only for CPUs with
// AVX512_BF16 (the avx512_bf16 level).
//
// Inline assembly rather than _mm512_cvtneps_pbh: the intrinsic needs target("avx512bf16") on every function it
// is inlined through, and GCC 12 left some calls of such a function out of line in the flattened kernels (a call
// per 16 elements in the stochastic kUnscale steps). The assembler must know AVX512_BF16 (binutils 2.31, 2018).
ADF_LANES_INLINE void store_lanes_bf16_instruction(bfloat16_bits* dst, FloatLanes value) {
  constexpr int kNaNOrSubnormal = kClassQuietNaN | kClassSignallingNaN | kClassSubnormal;
  if (__builtin_expect(_mm512_fpclass_ps_mask(value.v, kNaNOrSubnormal) != 0, 0)) return store_lanes(dst, value);
  __m256i bits;
  asm("vcvtneps2bf16 %1, %0" : "=v"(bits) : "v"(value.v));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), bits);
}

// bf16_round_stochastic (rounding.h) in 16 lanes, with each lane's noise: a non-finite value rounds to nearest.
// The stored bf16 is the high half of value + noise, which one vpermw picks from the 16 lanes in place of a
// shift and vpmovdw (in a loop of each, here: vpermw issues as often as a shift, vpmovdw half as often; the
// stochastic step in L2, one core: 0.800-0.815 -> 0.792-0.804 ns per element, bench/results/
// stochastic-lanes-20261203/. The earlier vpermw loads and nearest stores gained nothing: bf16-lanes-20261203/).
ADF_LANES_INLINE void store_lanes_stochastic(bfloat16_bits* dst, FloatLanes value, UintLanes noise) {
  const __m512i sum = _mm512_add_epi32(_mm512_castps_si512(value.v), noise.v);
  constexpr int kNonFinite = kClassQuietNaN | kClassSignallingNaN | kClassPositiveInf | kClassNegativeInf;
  const __mmask16 non_finite = _mm512_fpclass_ps_mask(value.v, kNonFinite);
  if (__builtin_expect(non_finite != 0, 0)) {
    const __m512i stochastic = _mm512_srli_epi32(sum, 16);
    return store_bf16_bits(dst, _mm512_mask_blend_epi32(non_finite, stochastic, bf16_nearest_bits(value)));
  }
  // Word k of the result (k < 16) is word 2k + 1 of sum; the upper 16 words are not stored.
  const __m512i high_halves = _mm512_setr_epi32(0x00030001, 0x00070005, 0x000B0009, 0x000F000D, 0x00130011,
                                                0x00170015, 0x001B0019, 0x001F001D, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i words = _mm512_permutexvar_epi16(high_halves, sum);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_castsi512_si256(words));
}

// How the lanes round fp32 to bf16 to nearest even: with integer operations on every AVX-512 CPU, or with
// vcvtneps2bf16 at the avx512_bf16 level.
enum class Bf16Conversion { kIntegerOps, kInstruction };

template <Bf16Conversion kConversion, typename T>
ADF_LANES_INLINE void store_nearest(T* dst, FloatLanes value) {
  if constexpr (kConversion == Bf16Conversion::kInstruction && is_bf16_v<T>) {
    store_lanes_bf16_instruction(dst, value);
  } else {
    store_lanes(dst, value);
  }
}

// What update_lanes stores, and where it takes its roots.
struct LaneOptions {
  Bf16Conversion bf16 = Bf16Conversion::kIntegerOps;
  bool stochastic_param = false;     // a bf16 param without a master copy rounds stochastically (rounding.h)
  bool roots_on_divider = false;     // adadelta_values' kRootsOnDivider
  bool rms_state = false;            // adadelta_values' kRmsState: the accumulators are 8-bit state's roots
};

// The dense update of the 16 elements at param, grad (and master): loads them, runs adadelta_values on them
// and the given accumulators, and stores what AdadeltaElement stores in the grad, master and param; the new
// accumulators (roots, with kOptions.rms_state) are the caller's to store: the 8-bit kernel encodes them. With
// kOptions.stochastic_param, `noise` holds the 16 elements' rounding_noise_low (pair_noises); without, it is not
// read.
template <bool kScaled, GradMode kGradMode, bool kHasMaster, LaneOptions kOptions = LaneOptions{}, typename ParamT>
ADF_LANES_INLINE UpdatedValues<FloatLanes> update_lanes(ParamT* param, ParamT* grad, float* master, FloatLanes sq,
                                                        FloatLanes acc, const StepScalars<float>& s,
                                                        UintLanes noise) {
  const FloatLanes p = kHasMaster ? load_lanes(master) : load_lanes(param);
  const UpdatedValues<FloatLanes> u =
      adadelta_values<kScaled, kOptions.roots_on_divider, kOptions.rms_state>(load_lanes(grad), p, sq, acc, s);
  if constexpr (kGradMode == GradMode::kUnscale) store_nearest<kOptions.bf16>(grad, u.grad);
  if constexpr (kHasMaster) store_lanes(master, u.param);
  if constexpr (kOptions.stochastic_param && is_bf16_v<ParamT> && !kHasMaster) {
    store_lanes_stochastic(param, u.param, noise);
  } else {
    store_nearest<kOptions.bf16>(param, u.param);
  }
  if constexpr (kGradMode == GradMode::kZero) store_lanes(grad, FloatLanes(0.0f));
  return u;
}

// Each lane's largest raw fp32 bits so far, and the largest of all lanes: the 8-bit state's block scale
// (quantized_state.h folds a run's roots one element at a time).
struct LargestBits {
  __m512i v;
  ADF_LANES_INLINE LargestBits() : v(_mm512_setzero_si512()) {}
  ADF_LANES_INLINE void fold(FloatLanes x) { v = _mm512_max_epu32(v, _mm512_castps_si512(x.v)); }
  ADF_LANES_INLINE uint32_t largest() const { return _mm512_reduce_max_epu32(v); }
};

}  // namespace adadelta_fused

#undef ADF_LANES_INLINE

#endif
