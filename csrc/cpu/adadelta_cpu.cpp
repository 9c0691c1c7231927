// The CPU kernel of adadelta_fused::adadelta_: one pass over every element of the group, parallel over
// the group's chunks (not tensor by tensor), with the shared update vectorized per ISA chosen at run time.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <type_traits>
#include <vector>

#include "../adadelta_math.h"
#include "../multi_tensor.h"
#include "../op_host.h"
#include "cpu_isa.h"
#include "float_lanes.h"
#include "prefetch.h"
#include "tile_convert.h"

namespace adadelta_fused {
namespace {

constexpr CpuIsa kAllIsas[] = {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx2F16c, CpuIsa::kAvx512,
                               CpuIsa::kAvx512Bf16};

template <typename ParamT, typename StateT>
struct Chunk {
  ParamT* param;
  ParamT* grad;
  StateT* square_avg;
  StateT* acc_delta;
  float* master;
  int64_t begin;
  int64_t end;
  uint32_t tensor_key;
};

// The buffers' lines kPrefetchBytes past the `count` elements from `first` (prefetch.h).
template <typename ParamT, typename StateT>
__attribute__((always_inline)) inline void prefetch_chunk_ahead(const Chunk<ParamT, StateT>& c, int64_t first,
                                                                int64_t count) {
  prefetch_ahead(c.param + first, count);
  prefetch_ahead(c.grad + first, count);
  prefetch_ahead(c.square_avg + first, count);
  prefetch_ahead(c.acc_delta + first, count);
  if (c.master != nullptr) prefetch_ahead(c.master + first, count);
}

// The element loop. GCC vectorizes it once it is inlined into a function with a target ISA: the update
// is branch-free per element, and the flags it tests are loop-invariant (unswitched at -O3).
template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster, bool kScaled>
__attribute__((always_inline)) inline void update_chunk(const Chunk<ParamT, StateT>& c,
                                                        const StepScalars<math_t<ParamT>>& scalars) {
  using Element = AdadeltaElement<ParamT, StateT, kGradMode, kHasMaster, kScaled>;
  const StepScalars<math_t<ParamT>> s = scalars;  // a local copy: stores through the buffers cannot alias it
  ParamT* __restrict__ param = c.param;
  ParamT* __restrict__ grad = c.grad;
  StateT* __restrict__ square_avg = c.square_avg;
  StateT* __restrict__ acc_delta = c.acc_delta;
  float* __restrict__ master = c.master;
  // c.begin is the first element's index in its tensor (a chunk: a multiple of 64 Ki, so the chunk never
  // straddles a multiple of 2^32, see kTileElements) or, for a staged tile, 0 with fp32 params, whose update
  // has no noise.
  const uint32_t noise_high = rounding_noise_high(c.tensor_key, c.begin);
  // Two vectors per iteration give the divider and square-root unit independent work to overlap
  // (fp32 in cache, one Zen 4 core: 1.71 -> 1.84 G elements/s).
#pragma GCC ivdep
#pragma GCC unroll 2
  for (int64_t i = c.begin; i < c.end; ++i) {
    if constexpr (kHasMaster) {
      Element::update_hoisted(param[i], grad[i], square_avg[i], acc_delta[i], master[i], s, noise_high, uint32_t(i));
    } else {
      float unused = 0.0f;
      Element::update_hoisted(param[i], grad[i], square_avg[i], acc_delta[i], unused, s, noise_high, uint32_t(i));
    }
  }
}

template <typename T>
constexpr bool is_16_bit_v = std::is_same_v<T, bfloat16_bits> || std::is_same_v<T, float16_bits>;

template <typename P, typename S>
constexpr bool kHasFp16 = std::is_same_v<P, float16_bits> || std::is_same_v<S, float16_bits>;

// Four fp32 tiles of 256 elements take 4 KiB of a Zen core's 32 KiB L1D, leaving it to the lines streaming
// in (and to a second thread, where the host shares a core between two vCPUs); in cache, 128 to 2048
// elements time the same. A tile starts at a multiple of its size in its tensor (chunks do: 64 Ki
// elements), so it never straddles a multiple of 2^32 elements (narrow_stochastic hoists the high word).
constexpr int kTileElements = 256;
static_assert(kChunkElements % kTileElements == 0, "a chunk must hold whole tiles");
static_assert((int64_t(1) << 32) % kChunkElements == 0,
              "update_chunk hoists the noise's high word: a chunk must not straddle a multiple of 2^32");
static_assert((int64_t(1) << 16) % kChunkElements == 0,
              "update_chunk_lanes keys the noise once per chunk (rounding_run_key): a chunk must not straddle a "
              "multiple of 2^16");

// The fp32 view of buffer[first, first + n): the buffer itself when it holds fp32, else the tile, widened.
template <TileConversion kConversion, typename T>
__attribute__((always_inline)) inline float* widen_tile(T* buffer, float* tile, int n) {
  if constexpr (std::is_same_v<T, float>) {
    return buffer;
  } else {
    widen<kConversion>(buffer, tile, n);
    return tile;
  }
}

template <TileConversion kConversion, typename T>
__attribute__((always_inline)) inline void narrow_tile(const float* tile, T* buffer, int n) {
  if constexpr (!std::is_same_v<T, float>) narrow<kConversion>(tile, buffer, n);
}

// The staged update of a configuration with 16-bit buffers: widen a tile of each to fp32, run the fp32
// element loop on the tiles (the same AdadeltaElement, with fp32 storage), narrow the results back. Bits are
// those of the fused loop: 16-bit values widen exactly, fp32 is the math type, and each store rounds once.
// Why: GCC vectorizes the portable fp16 conversion poorly in the fused loop, and on AVX2 a stochastically
// rounded bf16 param's noise hash. One AVX2 Zen 4 core, in cache, ns per element: fp16 fused ~4.2, staged
// with F16C 1.22 (widen 0.065 and narrow 0.14 per buffer).
template <TileConversion kConversion, typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster,
          bool kScaled>
__attribute__((always_inline)) inline void update_chunk_staged(const Chunk<ParamT, StateT>& c,
                                                               const StepScalars<float>& s) {
  alignas(64) float param[kTileElements];
  alignas(64) float grad[kTileElements];
  alignas(64) float square_avg[kTileElements];
  alignas(64) float acc_delta[kTileElements];
  for (int64_t first = c.begin; first < c.end; first += kTileElements) {
    const int n = int(std::min<int64_t>(kTileElements, c.end - first));
    prefetch_chunk_ahead(c, first, n);
    // With master weights the param is written, never read.
    float* const param_tile = kHasMaster ? param : widen_tile<kConversion>(c.param + first, param, n);
    const Chunk<float, float> tile{param_tile,
                                   widen_tile<kConversion>(c.grad + first, grad, n),
                                   widen_tile<kConversion>(c.square_avg + first, square_avg, n),
                                   widen_tile<kConversion>(c.acc_delta + first, acc_delta, n),
                                   kHasMaster ? c.master + first : nullptr,
                                   0,
                                   n,
                                   c.tensor_key};
    update_chunk<float, float, kGradMode, kHasMaster, kScaled>(tile, s);
    if constexpr (is_bf16_v<ParamT> && !kHasMaster) {
      if (s.stochastic_mask != 0) {
        narrow_stochastic(tile.param, c.param + first, n, c.tensor_key, first);
      } else {
        narrow_tile<kConversion>(tile.param, c.param + first, n);
      }
    } else {
      narrow_tile<kConversion>(tile.param, c.param + first, n);
    }
    narrow_tile<kConversion>(tile.square_avg, c.square_avg + first, n);
    narrow_tile<kConversion>(tile.acc_delta, c.acc_delta + first, n);
    if constexpr (kGradMode != GradMode::kKeep) narrow_tile<kConversion>(tile.grad, c.grad + first, n);
  }
}

// The update for a vector ISA: staged when a buffer is fp16 (GCC vectorizes the portable fp16 conversion
// poorly: fused 1.66 ns per element at AVX-512, staged 0.87), else the fused loop. A bf16 param rounding to
// nearest gets a copy of the scalars whose stochastic mask is the constant 0, so the noise hash it would
// select away is dead code, not per-element work. Stochastic rounding with bf16 state stays staged on AVX2,
// whose fused loop pays its hash round's two 32-bit multiplies per element in 8 lanes. One core, in cache, ns per
// element (this project's Xeon, AVX-512): fp32 0.60-0.66; bf16 fused 0.61-0.67 (staged 0.94-1.09), with
// fp32 state 0.63-0.67 (0.85-0.90 with the hash); stochastic fused 0.88-1.08 (staged 1.13-1.22); AVX2:
// bf16 fused 0.97-1.04 (staged 1.23), stochastic fused 1.84-1.90 (staged 1.48).
template <TileConversion kConversion, typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((always_inline)) inline void update_chunk_vector(const Chunk<P, S>& c, const StepScalars<math_t<P>>& s) {
  if constexpr (kHasFp16<P, S>) {
    update_chunk_staged<kConversion, P, S, kMode, kMaster, kScaled>(c, s);
  } else if constexpr (is_bf16_v<P> && !kMaster) {
    if (s.stochastic_mask == 0) {
      StepScalars<float> nearest = s;
      nearest.stochastic_mask = 0;
      update_chunk<P, S, kMode, kMaster, kScaled>(c, nearest);
    } else if constexpr (is_16_bit_v<S> && kConversion != TileConversion::kAvx512) {
      update_chunk_staged<kConversion, P, S, kMode, kMaster, kScaled>(c, s);
    } else {
      update_chunk<P, S, kMode, kMaster, kScaled>(c, s);
    }
  } else {
    update_chunk<P, S, kMode, kMaster, kScaled>(c, s);
  }
}

#if defined(__x86_64__)
// AVX-512: 16 fp32 lanes; GCC prefers 256-bit vectors unless told, and this loop is not frequency-bound.
// Its fp16 tiles convert 16 values per instruction (F16C's 8: fp16 1.26 -> 0.87 ns per element in cache).
template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2,f16c,prefer-vector-width=512"))) void
update_chunk_avx512(const Chunk<P, S>& c, const StepScalars<math_t<P>>& s) {
  update_chunk_vector<TileConversion::kAvx512, P, S, kMode, kMaster, kScaled>(c, s);
}

// The update of fp32 math in 16-lane vectors (float_lanes.h): every storage type, rounding as kOptions says; the
// chunk's last n % 16 elements take the scalar update, whose operations round as the lanes' do.
template <LaneOptions kOptions, typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((always_inline)) inline void update_chunk_lanes(const Chunk<P, S>& c, const StepScalars<float>& scalars) {
  StepScalars<float> s = scalars;  // local copies: stores through the buffers cannot alias them
  if constexpr (!kOptions.stochastic_param) s.stochastic_mask = 0;
  P* __restrict__ param = c.param;
  P* __restrict__ grad = c.grad;
  S* __restrict__ square_avg = c.square_avg;
  S* __restrict__ acc_delta = c.acc_delta;
  float* __restrict__ master = c.master;
  // always_inline: the kernel's `flatten` does not reach into a lambda's calls, and an out-of-line call of the
  // lanes' helpers would pass vectors across a target boundary.
  const auto update_16 = [&](int64_t k, UintLanes noise) __attribute__((always_inline)) {
    prefetch_chunk_ahead(c, k, kFloatLanes);
    const UpdatedValues<FloatLanes> u = update_lanes<kScaled, kMode, kMaster, kOptions>(
        param + k, grad + k, kMaster ? master + k : nullptr, load_lanes(square_avg + k), load_lanes(acc_delta + k), s,
        noise);
    store_nearest<kOptions.bf16>(square_avg + k, u.square_avg);
    store_nearest<kOptions.bf16>(acc_delta + k, u.acc_delta);
  };
  int64_t i = c.begin;
  if constexpr (kOptions.stochastic_param) {
    // The noise's first hash round, as update_chunk hoists it (the chunk never straddles a multiple of 2^32), and
    // the second's fold, once per chunk (rounding_run_key: a chunk starts at a multiple of 64 Ki in its tensor and
    // holds at most 64 Ki elements, so its indices share their upper 16 bits); then one pair hash per two elements.
    TORCH_INTERNAL_ASSERT_DEBUG_ONLY(c.begin % kChunkElements == 0 && c.end - c.begin <= kChunkElements);
    const uint32_t noise_high = rounding_noise_high(c.tensor_key, c.begin);
    const UintLanes run_key(rounding_run_key(noise_high, uint32_t(c.begin)));
    UintLanes pairs = pair_indices(uint32_t(i));
    for (; i + 2 * kFloatLanes <= c.end; i += 2 * kFloatLanes, pairs = pairs + UintLanes(2 * kFloatLanes)) {
      const UintLanes hashes = rounding_pair_hash_in_run(run_key, pairs);
      update_16(i, pair_noises<false>(hashes));
      update_16(i + kFloatLanes, pair_noises<true>(hashes));
    }
    if (i + kFloatLanes <= c.end) {
      update_16(i, pair_noises<false>(rounding_pair_hash_in_run(run_key, pairs)));
      i += kFloatLanes;
    }
  } else {
    for (; i + kFloatLanes <= c.end; i += kFloatLanes) update_16(i, UintLanes(0u));
  }
  // The tail lies inside the chunk, so update_chunk's hoisted noise round (from tail.begin) is the chunk's.
  Chunk<P, S> tail = c;
  tail.begin = i;
  update_chunk<P, S, kMode, kMaster, kScaled>(tail, s);
}

// The lanes' options for the step's rounding: a bf16 param without a master copy rounds stochastically where the
// step asks. A step with 16-bit params and state and no master copy takes acc_delta's root on the divider: its
// loads and stores convert on the same two vector ports as the FMA root's eight operations, while the divider
// has one division (two with a grad_scale) and one root to do per vector. 32 Mi elements, 2 threads, ms, FMA
// root -> divider root: fp16 12.0-12.6 -> 10.8-10.9 (with the fp16 store's NaN patch made a branch,
// tile_convert.h; 13.1-13.3 before either); bf16 at the avx512_bf16 level 12.0-12.8 -> 11.1-11.7 (a standalone
// copy of the loop).
template <Bf16Conversion kConversion, typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((always_inline)) inline void update_chunk_lanes_rounding(const Chunk<P, S>& c,
                                                                       const StepScalars<float>& s) {
  constexpr LaneOptions kNearest{.bf16 = kConversion,
                                 .roots_on_divider = is_16_bit_v<P> && is_16_bit_v<S> && !kMaster};
  if constexpr (is_bf16_v<P> && !kMaster) {
    if (s.stochastic_mask != 0) {
      constexpr LaneOptions kStochastic{kNearest.bf16, true, kNearest.roots_on_divider};
      return update_chunk_lanes<kStochastic, P, S, kMode, kMaster, kScaled>(c, s);
    }
  }
  update_chunk_lanes<kNearest, P, S, kMode, kMaster, kScaled>(c, s);
}

// The lanes at the avx512 level, where float_lanes_run, for every configuration with fp32 math (RunCpu::run).
// One core, fp32 math, 32 Ki elements in L2, ns per element, GCC's loop -> lanes: fp32 0.57 -> 0.40, fp16 0.84 ->
// 0.62, fp16 with fp32 master 0.80 -> 0.62, bf16 params with fp32 state 0.61 -> 0.53, fp16 params with fp32 state
// 0.66 -> 0.49. With bf16 state the lanes are slower in cache, as their two bf16 stores per element (four
// integer operations, a NaN select and a 2-uop vpmovdw each) keep the two vector ports busy: bf16 0.62 -> 0.72,
// bf16 with fp32 master 0.63 -> 0.72, fp32 params with bf16 state 0.60 -> 0.62. From memory the lanes' prefetch
// wins (prefetch.h; 32 Mi elements, 2 threads, bench/results/prefetch-20261203/: bf16 with fp32 master
// 18.1-18.5 -> 16.4-16.6 ms, fp32 params with bf16 state 21.1-21.8 -> 16.2-16.8 in sweeps.md there), and with
// acc_delta's root on the divider so does the all-bf16 step (GCC's loop 15.3-16.1 ms, lanes 13.7-13.9 in
// bench/results/bf16-lanes-20261203/sweeps.md; in L2 GCC's loop stays faster, 0.046 against 0.053 ms for 64 Ki
// elements in the review of this routing, and a step's params rarely fit there) and its stochastic rounding,
// whose noise hash runs in the lanes too (18.5-18.9 -> 14.6-15.6 ms in that folder's README).
template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((flatten, target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2,f16c,prefer-vector-width=512"))) void
update_chunk_avx512_lanes(const Chunk<P, S>& c, const StepScalars<float>& s) {
  update_chunk_lanes_rounding<Bf16Conversion::kIntegerOps, P, S, kMode, kMaster, kScaled>(c, s);
}

// The lanes at the avx512_bf16 level, for configurations with a bf16 buffer: bf16 rounds to nearest with
// vcvtneps2bf16 (in inline assembly, float_lanes.h: no target attribute needed), and the all-bf16 step takes
// acc_delta's root on the divider.
template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((flatten, target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2,f16c,prefer-vector-width=512"))) void
update_chunk_avx512_bf16_lanes(const Chunk<P, S>& c, const StepScalars<float>& s) {
  update_chunk_lanes_rounding<Bf16Conversion::kInstruction, P, S, kMode, kMaster, kScaled>(c, s);
}

// Instantiated for fp16 configurations only: elsewhere avx2_f16c runs the avx2 code, which is the same.
template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((target("avx2,fma,bmi2,f16c"))) void update_chunk_avx2_f16c(const Chunk<P, S>& c,
                                                                          const StepScalars<math_t<P>>& s) {
  update_chunk_vector<TileConversion::kF16c, P, S, kMode, kMaster, kScaled>(c, s);
}

template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((target("avx2,fma,bmi2"))) void update_chunk_avx2(const Chunk<P, S>& c,
                                                                 const StepScalars<math_t<P>>& s) {
  update_chunk_vector<TileConversion::kPortable, P, S, kMode, kMaster, kScaled>(c, s);
}
#endif

template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
void update_chunk_baseline(const Chunk<P, S>& c, const StepScalars<math_t<P>>& s) {
  update_chunk<P, S, kMode, kMaster, kScaled>(c, s);
}

CpuIsa best_supported_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool f16c = __builtin_cpu_supports("f16c");
  // Every vector level's functions are compiled for FMA and BMI2 too, which a VM may hide.
  const bool fma_bmi2 = __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && f16c && fma_bmi2) {
    return __builtin_cpu_supports("avx512bf16") ? CpuIsa::kAvx512Bf16 : CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && fma_bmi2) return f16c ? CpuIsa::kAvx2F16c : CpuIsa::kAvx2;
#endif
  return CpuIsa::kBaseline;
}

std::atomic<int>& selected_isa() {
  static std::atomic<int> isa{int(best_supported_isa())};
  return isa;
}

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512Bf16:
      return "avx512_bf16";
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2F16c:
      return "avx2_f16c";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kBaseline:
      break;
  }
  return "baseline";
}

// The chunk update a configuration runs at the current level.
template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
auto chunk_update() {
  auto update = &update_chunk_baseline<P, S, kMode, kMaster, kScaled>;
#if defined(__x86_64__)
  const CpuIsa isa = current_cpu_isa();
  if (isa >= CpuIsa::kAvx512) {
    update = &update_chunk_avx512<P, S, kMode, kMaster, kScaled>;
    if constexpr (std::is_same_v<math_t<P>, float>) {
      if (float_lanes_run()) {
        update = &update_chunk_avx512_lanes<P, S, kMode, kMaster, kScaled>;
        if constexpr (is_bf16_v<P> || is_bf16_v<S>) {
          if (isa == CpuIsa::kAvx512Bf16) update = &update_chunk_avx512_bf16_lanes<P, S, kMode, kMaster, kScaled>;
        }
      }
    }
  }
  if (isa == CpuIsa::kAvx2) update = &update_chunk_avx2<P, S, kMode, kMaster, kScaled>;
  if (isa == CpuIsa::kAvx2F16c) {
    if constexpr (kHasFp16<P, S>) {
      update = &update_chunk_avx2_f16c<P, S, kMode, kMaster, kScaled>;
    } else {
      update = &update_chunk_avx2<P, S, kMode, kMaster, kScaled>;
    }
  }
#endif
  return update;
}

struct RunCpu {
  const TensorListPointers& tensors;
  const StepArgs& args;

  template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster>
  void operator()() const {
    if (args.grad_scale_ptr != nullptr) {
      run<ParamT, StateT, kGradMode, kHasMaster, true>();
    } else {
      run<ParamT, StateT, kGradMode, kHasMaster, false>();
    }
  }

  template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster, bool kScaled>
  void run() const {
    const StepScalars<math_t<ParamT>> scalars = resolve_scalars<math_t<ParamT>>(args);
    const auto update = chunk_update<ParamT, StateT, kGradMode, kHasMaster, kScaled>();

    // Pack the whole group first, then run every chunk of every launch in one parallel region, so 4096
    // small tensors keep both cores as busy as one large tensor does.
    std::vector<TensorListMeta> launches;
    std::vector<int64_t> first_block{0};
    TensorListMeta meta;
    pack_launches(tensors, meta, [&](const TensorListMeta& full, int blocks) {
      launches.push_back(full);
      first_block.push_back(first_block.back() + blocks);
    });
    at::parallel_for(0, first_block.back(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const auto launch = std::upper_bound(first_block.begin(), first_block.end(), block) - first_block.begin() - 1;
        const TensorListMeta& m = launches[launch];
        const ChunkRange r = chunk_of_block(m, int(block - first_block[launch]));
        const Chunk<ParamT, StateT> chunk{static_cast<ParamT*>(m.param[r.slot]),
                                          static_cast<ParamT*>(m.grad[r.slot]),
                                          static_cast<StateT*>(m.square_avg[r.slot]),
                                          static_cast<StateT*>(m.acc_delta[r.slot]),
                                          m.master[r.slot],
                                          r.begin,
                                          r.end,
                                          rounding_tensor_key(scalars.rounding_key, m.tensor_index[r.slot])};
        update(chunk, scalars);
      }
    });
  }
};

void adadelta_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs, at::TensorList acc_deltas,
                  at::TensorList master_params, double lr, const c10::optional<at::Tensor>& lr_tensor, double rho,
                  double eps, double weight_decay, bool maximize, const c10::optional<at::Tensor>& grad_scale,
                  const c10::optional<at::Tensor>& found_inf, int64_t grad_mode, bool stochastic_rounding,
                  int64_t rounding_key) {
  const OpArgs op{params,   grads,      square_avgs, acc_deltas, master_params, lr,        lr_tensor,           rho,
                  eps,      weight_decay, maximize,  grad_scale, found_inf,     grad_mode, stochastic_rounding, rounding_key};
  check_op_args(op, c10::DeviceType::CPU);
  if (params.empty()) return;
  std::vector<at::Tensor> keep_alive;
  const StepArgs args = make_step_args(op, params[0].device(), keep_alive);
  if (step_skipped(args)) {
    // GradScaler found inf/NaN: nothing changes, except that the "zero" mode still clears the grads.
    if (zeroes_grads_when_skipped(op)) {
      for (const at::Tensor& grad : grads) grad.zero_();
    }
  } else {
    DenseGroup group(op);
    const TensorListPointers tensors = group.pointers();
    dispatch_config(params[0].scalar_type(), square_avgs[0].scalar_type(), grad_mode, !master_params.empty(),
                    RunCpu{tensors, args});
    group.finish();
  }
  bump_versions(op);
}

}  // namespace

CpuIsa current_cpu_isa() { return CpuIsa(selected_isa().load()); }

std::string cpu_isa() { return isa_name(current_cpu_isa()); }

// For tests and benchmarks: run a lower ISA than the best one (never a higher one than the CPU has).
void select_cpu_isa(const std::string& name) {
  const CpuIsa best = best_supported_isa();
  for (CpuIsa isa : kAllIsas) {
    if (name == isa_name(isa)) {
      TORCH_CHECK_VALUE(int(isa) <= int(best), "cpu isa '", name, "' is not supported by this CPU (best: ",
                        isa_name(best), ")");
      selected_isa().store(int(isa));
      return;
    }
  }
  TORCH_CHECK_VALUE(false, "Invalid cpu isa: '", name, "' (expected baseline, avx2, avx2_f16c, avx512 or avx512_bf16)");
}

// How many threads at::parallel_for really runs in this extension. Its OpenMP pragma is compiled here,
// not in torch, so a build without -fopenmp silently runs every step on one thread.
int64_t parallel_workers() {
  std::vector<std::atomic<bool>> seen(size_t(at::get_num_threads()));
  at::parallel_for(0, int64_t(seen.size()) * 64, 1, [&](int64_t, int64_t) {
    seen.at(size_t(at::get_thread_num())).store(true);
  });
  return std::count_if(seen.begin(), seen.end(), [](const std::atomic<bool>& s) { return s.load(); });
}

// For tests: the stochastically rounded bf16 params of a step over elements [first_index, first_index + n) of a
// tensor too large to allocate (first_index a multiple of a chunk, up to 2^48), at the current level, against
// AdadeltaElement::update at each element's own index: how many params differ. The buffers are n elements
// (of bf16 state or, with fp32_state, of fp32), filled from the noise hash; the chunk's pointers are offset by
// -first_index and never read there.
int64_t stochastic_params_mismatches_at(int64_t first_index, int64_t n, bool fp32_state) {
  TORCH_CHECK_VALUE(first_index >= 0 && first_index % kChunkElements == 0 && first_index <= (int64_t(1) << 48),
                    "first_index must be a multiple of ", kChunkElements, " in [0, 2^48], got ", first_index);
  TORCH_CHECK_VALUE(n >= 0 && n <= kChunkElements, "n must be in [0, ", kChunkElements, "], got ", n);
  const auto run = [&](auto state_zero) {
    using S = decltype(state_zero);
    using P = bfloat16_bits;
    std::vector<P> param(n), grad(n), expected(n);
    std::vector<S> square_avg(n), acc_delta(n);
    for (int64_t k = 0; k < n; ++k) {
      const uint32_t h = mix32<uint32_t>(uint32_t(k) + 1u);
      param[k] = P(bf16_round_nearest(float(int32_t(h % 2001u) - 1000) * 1e-3f));
      grad[k] = P(bf16_round_nearest(float(int32_t((h >> 11) % 2001u) - 1000) * 1e-4f));
      store(square_avg[k], float((h >> 22) % 100u + 1u) * 1e-6f);
      store(acc_delta[k], float((h >> 5) % 100u + 1u) * 1e-7f);
    }
    StepArgs args{1.0, nullptr, 0.9, 1e-6, 0.0, nullptr, nullptr, false, true, 0x2545F491u};
    const StepScalars<float> s = resolve_scalars<float>(args);
    const uint32_t tensor_key = rounding_tensor_key(s.rounding_key, 0);
    std::vector<S> sq_expected = square_avg;
    std::vector<S> acc_expected = acc_delta;
    for (int64_t k = 0; k < n; ++k) {
      expected[k] = param[k];
      P grad_copy = grad[k];
      float unused = 0.0f;
      AdadeltaElement<P, S, GradMode::kKeep, false, false>::update(expected[k], grad_copy, sq_expected[k],
                                                                   acc_expected[k], unused, s, tensor_key,
                                                                   first_index + k);
    }
    // The walk's chunk; the offset pointers are only ever indexed at [first_index, first_index + n).
    const Chunk<P, S> chunk{param.data() - first_index, grad.data() - first_index, square_avg.data() - first_index,
                            acc_delta.data() - first_index, nullptr, first_index, first_index + n, tensor_key};
    chunk_update<P, S, GradMode::kKeep, false, false>()(chunk, s);
    int64_t mismatches = 0;
    for (int64_t k = 0; k < n; ++k) mismatches += uint16_t(param[k]) != uint16_t(expected[k]);
    return mismatches;
  };
  return fp32_state ? run(0.0f) : run(bfloat16_bits{});
}

std::vector<std::string> supported_cpu_isas() {
  std::vector<std::string> names;
  for (CpuIsa isa : kAllIsas) {
    if (int(isa) <= int(best_supported_isa())) names.push_back(isa_name(isa));
  }
  return names;
}

}  // namespace adadelta_fused

TORCH_LIBRARY_IMPL(adadelta_fused, CPU, m) { m.impl("adadelta_", &adadelta_fused::adadelta_cpu); }
