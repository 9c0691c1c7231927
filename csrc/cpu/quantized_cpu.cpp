// The CPU kernel of adadelta_fused::quantized_adadelta_: one pass over every element of the group, parallel over
// the group's chunks (the dense kernel's walk, multi_tensor.h), each chunk stepped block by block: a block of 256
// elements is decoded, updated and reduced into two L1 tiles of new roots, then encoded, so the block's scale
// never costs a second pass over memory. The shared lanes (quantized_state.h) run every step; at the AVX-512 level
// the update runs on float_lanes.h's vectors, decoding the codes as it loads them, and the encode on
// quantized_lanes.h's, spread over the next block's loop (update_block_lanes says why).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "../multi_tensor.h"
#include "../op_host.h"
#include "../quantized_state.h"
#include "cpu_isa.h"
#include "float_lanes.h"
#include "prefetch.h"
#include "quantized_lanes.h"

namespace adadelta_fused {
namespace {

// Chunks start at multiples of kChunkElements in their tensor, so every chunk holds whole blocks (but the last).
static_assert(kChunkElements % kQuantBlock == 0, "a chunk must hold whole quantization blocks");

template <typename ParamT>
struct QuantizedChunk {
  ParamT* param;
  ParamT* grad;
  uint8_t* square_avg;
  uint8_t* acc_delta;
  float* master;
  float* square_avg_scale;
  float* acc_delta_scale;
  int64_t begin;
  int64_t end;
  uint32_t tensor_key;
};

// One accumulator's codes of a block -> its fp32 values; and its new roots -> codes and the block's new scale.
template <typename Lanes>
__attribute__((always_inline)) inline void decode_block(const uint8_t* codes, const float* scale, int n,
                                                        float (&values)[kQuantBlock]) {
  const float step = decode_step(*scale);
  if (Lanes::largest_code(codes, n) < kCodeNaN) {
    Lanes::template decode<false>(codes, n, step, values);
  } else {
    Lanes::template decode<true>(codes, n, step, values);
  }
}

template <typename Lanes, bool kUseFloatLanes>
__attribute__((always_inline)) inline void encode_block(const float (&roots)[kQuantBlock], int n,
                                                        uint32_t largest_bits, uint8_t* codes, float* scale) {
  if (ordinary_block(largest_bits)) {
    const float new_scale = block_scale(largest_bits);
#if defined(__x86_64__)
    if constexpr (kUseFloatLanes) {
      if (n % kFloatLanes == 0) {
        const FloatLanes factor(encode_factor(new_scale));
        for (int l = 0; l < n; l += kFloatLanes) encode_lanes(load_lanes(roots + l), factor, codes + l);
        *scale = new_scale;
        return;
      }
    }
#endif
    Lanes::template encode<false>(roots, n, encode_factor(new_scale), codes);
    *scale = new_scale;
  } else {
    const float new_scale = block_scale(Lanes::largest_counted(roots, n));
    Lanes::template encode<true>(roots, n, encode_factor(new_scale), codes);
    *scale = new_scale;
  }
}

// Software prefetch, kPrefetchBlocks blocks ahead (2 KiB of fp32 params) in every per-element buffer.
constexpr int64_t kPrefetchBlocks = 2;

#if defined(__x86_64__)
// Where the lanes find a block's old accumulators: with kFromCodes, decoded from the codes as they are loaded (no
// code of the block is kCodeNaN); else in the tiles decode_block filled. The codes' addresses are given either
// way: the lanes prefetch ahead of them.
struct BlockCodes {
  const uint8_t* square_avg;
  const uint8_t* acc_delta;
  float square_avg_step;
  float acc_delta_step;
};

// The line of `run` (a run of 16 elements in one buffer) kPrefetchBlocks blocks ahead, where that line starts:
// one prefetch per 64 bytes, so every run for fp32, every other for 16-bit params, every fourth for codes. Past
// a chunk's end too (prefetch.h: an address, never a pointer past the buffer).
template <typename T>
__attribute__((always_inline)) inline void prefetch_run_ahead(const T* run, int l) {
  constexpr int64_t kAheadBytes = kPrefetchBlocks * kQuantBlock * int64_t(sizeof(T));
  if ((l * int(sizeof(T))) % 64 == 0) prefetch_lines(reinterpret_cast<uintptr_t>(run) + uintptr_t(kAheadBytes), 1);
}

// The previous block's encode, spread over a block's lanes loop (update_blocks_lanes): its two tiles of roots,
// where its codes go, and each accumulator's encode factor (its scale is stored after the loop).
struct PendingEncode {
  const float* square_avg_roots;
  const float* acc_delta_roots;
  uint8_t* square_avg;
  uint8_t* acc_delta;
  float square_avg_factor;
  float acc_delta_factor;
};

// A block's dense update and new roots in 16-lane vectors (float_lanes.h), for the AVX-512 level: the operations
// of QuantizedLanes::update. Decoding as they load (where no code of the block is kCodeNaN) spares the tiles a
// store and a load of each accumulator and GCC's decode loops: with quantized_lanes.h's encode, 1.24-1.40 ->
// 1.06-1.19 ns per element (alternating runs, 48 Ki and 128 Ki elements, the Xeon).
//
// Where the two square roots per element run: std's, which is square_avg's new R, and acc_delta's new R (the
// update's numerator is the decoded R, quantized_state.h). A Zen 4 core issues one 512-bit FMA-unit instruction
// per cycle, and its divider takes about 10 cycles a vsqrtps and 6 a vdivps. When the format stored sqrt(x) (until
// 2026-12-05) an element took four roots, three on the divider and std's on the FMA ports, and the loop was bound
// by both units (the divider's 36 cycles per 16 elements, the loop body 38). With two, both go to the divider (26
// of its cycles per 16 elements), which takes a root's eight instructions off the FMA ports: one thread, ns per
// element at 1 Mi / 32 Mi elements, std's root on the FMA ports 0.70-0.75 / 0.72-0.97, both on the divider
// 0.585-0.589 / 0.585-0.654 (the sqrt(x) format, the same runs: 0.76-1.08 / 0.76-1.01;
// bench/results/quantized-rms-format-20261205/). With a grad_scale the divider also divides by it, and both roots
// stay on the FMA ports (not measured).
//
// The time lost is at the block boundaries (measured with the sqrt(x) format): a block's encode waits on its last root,
// the max reductions, the scale and a scalar division, and the divider idles meanwhile, about 145 cycles per block of
// 256. So the loop of block k also encodes block k-1 (kEncodePrevious), one vector of each of its two tiles at the end
// of each pass: one core, fp32 params, a standalone copy of these loops (Zen 4, the block loop study), ns per element,
// 32 Ki elements in L2 / 32 Mi: 0.801 / 0.883 -> 0.709 / 0.847, the same bits. Encoding at the start of each pass
// measured 0.716 in L2; encoding block k-1 after block k's loop (two tile pairs, no spreading) 0.775; pipelining or
// unrolling the loop within a block 0.793-0.817 (out-of-order execution already covers its dependence chain).
//
// The prefetch runs inside this loop, a line per 64 bytes of each buffer kPrefetchBlocks blocks ahead, rather
// than the 40 prefetches at the start of each block that the hardware then had to absorb in a burst. One core,
// fp32 params, a standalone copy of this loop (bench/results/quantized-zen4-prefetch-20261204/), ns per element,
// 32 Ki elements in L2 / 32 Mi: before 0.866 / 1.085; the prefetch spread 0.849 / 0.928; and acc_delta's root
// on the divider 0.801 / 0.884. Memory now adds 0.08 ns per element, where it added 0.22.
template <bool kFromCodes, bool kEncodePrevious, typename ParamT, GradMode kGradMode, bool kHasMaster, bool kScaled>
__attribute__((always_inline)) inline void update_block_lanes(ParamT* __restrict__ param, ParamT* __restrict__ grad,
                                                              float* __restrict__ master, int n,
                                                              const StepScalars<float>& s, const BlockCodes& codes,
                                                              float (&sq)[kQuantBlock], float (&acc)[kQuantBlock],
                                                              uint32_t& sq_largest, uint32_t& acc_largest,
                                                              const PendingEncode& previous = {}) {
  const FloatLanes sq_step(codes.square_avg_step);
  const FloatLanes acc_step(codes.acc_delta_step);
  const FloatLanes previous_sq_factor(previous.square_avg_factor);
  const FloatLanes previous_acc_factor(previous.acc_delta_factor);
  // Block k-1's tiles and codes: other buffers than block k's (restrict tells GCC so; the codes are bytes, which
  // alias everything else).
  const float* __restrict__ previous_sq = previous.square_avg_roots;
  const float* __restrict__ previous_acc = previous.acc_delta_roots;
  uint8_t* __restrict__ previous_sq_codes = previous.square_avg;
  uint8_t* __restrict__ previous_acc_codes = previous.acc_delta;
  LargestBits sq_max;
  LargestBits acc_max;
  // No noise: these options round to nearest (stochastic bf16 params take the shared loop).
  constexpr LaneOptions kOptions{.roots_on_divider = !kScaled, .rms_state = true};
  for (int l = 0; l < n; l += kFloatLanes) {
    prefetch_run_ahead(param + l, l);
    prefetch_run_ahead(grad + l, l);
    if (kHasMaster) prefetch_run_ahead(master + l, l);
    prefetch_run_ahead(codes.square_avg + l, l);
    prefetch_run_ahead(codes.acc_delta + l, l);
    const FloatLanes sq_old = kFromCodes ? decode_lanes(codes.square_avg + l, sq_step) : load_lanes(sq + l);
    const FloatLanes acc_old = kFromCodes ? decode_lanes(codes.acc_delta + l, acc_step) : load_lanes(acc + l);
    const UpdatedValues<FloatLanes> u = update_lanes<kScaled, kGradMode, kHasMaster, kOptions>(
        param + l, grad + l, kHasMaster ? master + l : nullptr, sq_old, acc_old, s, UintLanes(0u));
    const FloatLanes sq_root = u.square_avg;
    const FloatLanes acc_root = u.acc_delta;
    store_lanes(sq + l, sq_root);
    store_lanes(acc + l, acc_root);
    sq_max.fold(sq_root);
    acc_max.fold(acc_root);
    if constexpr (kEncodePrevious) {  // at the end of the pass: 0.709 ns per element in L2, at its start 0.716
      encode_lanes(load_lanes(previous_sq + l), previous_sq_factor, previous_sq_codes + l);
      encode_lanes(load_lanes(previous_acc + l), previous_acc_factor, previous_acc_codes + l);
    }
  }
  sq_largest = sq_max.largest();
  acc_largest = acc_max.largest();
}
#endif

// A block's decode, dense update and new roots (left in sq and acc), and the largest raw bits of each
// accumulator's roots. The lanes run a block of whole vectors (every block but a tensor's last, and that one where
// its length is a multiple of 16), decoding as they load unless a code is kCodeNaN; other blocks run the shared
// loops.
template <bool kUseFloatLanes, typename ParamT, GradMode kGradMode, bool kHasMaster, bool kScaled>
__attribute__((always_inline)) inline void update_block(const QuantizedChunk<ParamT>& c, int64_t first, int n,
                                                        const StepScalars<float>& s, float (&sq)[kQuantBlock],
                                                        float (&acc)[kQuantBlock], uint32_t& sq_largest,
                                                        uint32_t& acc_largest) {
  using Lanes = QuantizedLanes<ParamT, kGradMode, kHasMaster, kScaled, kQuantBlock>;
  const int64_t block = first / kQuantBlock;
  ParamT* param = c.param + first;
  ParamT* grad = c.grad + first;
  float* master = kHasMaster ? c.master + first : nullptr;
#if defined(__x86_64__)
  if constexpr (kUseFloatLanes) {
    if (n % kFloatLanes == 0) {
      const uint8_t* sq_codes = c.square_avg + first;
      const uint8_t* acc_codes = c.acc_delta + first;
      if (!has_nan_code(sq_codes, n) && !has_nan_code(acc_codes, n)) {
        const BlockCodes codes{sq_codes, acc_codes, decode_step(c.square_avg_scale[block]),
                               decode_step(c.acc_delta_scale[block])};
        return update_block_lanes<true, false, ParamT, kGradMode, kHasMaster, kScaled>(
            param, grad, master, n, s, codes, sq, acc, sq_largest, acc_largest);
      }
      decode_block<Lanes>(sq_codes, c.square_avg_scale + block, n, sq);
      decode_block<Lanes>(acc_codes, c.acc_delta_scale + block, n, acc);
      const BlockCodes codes{sq_codes, acc_codes, 0.0f, 0.0f};
      return update_block_lanes<false, false, ParamT, kGradMode, kHasMaster, kScaled>(
          param, grad, master, n, s, codes, sq, acc, sq_largest, acc_largest);
    }
  }
#endif
  decode_block<Lanes>(c.square_avg + first, c.square_avg_scale + block, n, sq);
  decode_block<Lanes>(c.acc_delta + first, c.acc_delta_scale + block, n, acc);
  sq_largest = 0;
  acc_largest = 0;
  Lanes::update(param, grad, master, n, s, c.tensor_key, first, sq, acc, sq_largest, acc_largest);
}

// GCC's loops prefetch whole blocks, kPrefetchBlocks ahead, at the start of each. A block visits its buffers in
// turn, in runs of 256 B (codes) to 1 KiB (params), which the hardware prefetchers follow poorly: 32 Mi fp32
// params, this project's Xeon, 34 ms a step on two threads without, 25 with (GCC's loop), 63 -> 38 ms on one;
// two to eight blocks ahead timed the same. The lanes prefetch inside their loop (update_block_lanes).
template <typename ParamT>
__attribute__((always_inline)) inline void prefetch_block(const QuantizedChunk<ParamT>& c, int64_t first) {
  if (first >= c.end) return;
  const int64_t n = std::min<int64_t>(kQuantBlock, c.end - first);
  prefetch_lines(c.param + first, n * int64_t(sizeof(ParamT)));
  prefetch_lines(c.grad + first, n * int64_t(sizeof(ParamT)));
  prefetch_lines(c.square_avg + first, n);
  prefetch_lines(c.acc_delta + first, n);
  if (c.master != nullptr) prefetch_lines(c.master + first, n * 4);
}

// The shared levels' block loop (GCC's loops over QuantizedLanes): each block decoded, updated, then encoded.
template <typename ParamT, GradMode kGradMode, bool kHasMaster, bool kScaled>
__attribute__((always_inline)) inline void update_blocks(const QuantizedChunk<ParamT>& c,
                                                         const StepScalars<float>& scalars) {
  using Lanes = QuantizedLanes<ParamT, kGradMode, kHasMaster, kScaled, kQuantBlock>;
  const StepScalars<float> s = scalars;  // a local copy: stores through the buffers cannot alias it
  // The block's fp32 accumulators (then their roots), decoded, updated and encoded in place: 2 KiB of L1.
  alignas(64) float sq[kQuantBlock];
  alignas(64) float acc[kQuantBlock];
  for (int64_t first = c.begin; first < c.end; first += kQuantBlock) {
    const int n = int(std::min<int64_t>(kQuantBlock, c.end - first));
    const int64_t block = first / kQuantBlock;
    prefetch_block(c, first + kPrefetchBlocks * kQuantBlock);
    uint32_t sq_largest;
    uint32_t acc_largest;
    update_block<false, ParamT, kGradMode, kHasMaster, kScaled>(c, first, n, s, sq, acc, sq_largest, acc_largest);
    encode_block<Lanes, false>(sq, n, sq_largest, c.square_avg + first, c.square_avg_scale + block);
    encode_block<Lanes, false>(acc, n, acc_largest, c.acc_delta + first, c.acc_delta_scale + block);
  }
}

#if defined(__x86_64__)
// The float lanes' block loop: block k's loop also encodes block k-1 (update_block_lanes says why: 0.801 -> 0.709
// ns per element in L2), so the tiles of the two alternate. It does so when both blocks are whole (every block of
// a chunk but a tensor's last), block k-1's roots are all finite (ordinary_block: its encode is the lanes' one of
// encode_block) and block k decodes as it loads (no kCodeNaN in its codes). Otherwise block k-1 is encoded on its
// own first, as the shared loop does, and block k takes update_block. The chunk's last block is encoded after the
// loop. Block k-1's codes are written while block k reads its own, other codes; nothing reads them after its
// update; its scales are stored after block k's loop, which read block k's.
template <typename ParamT, GradMode kGradMode, bool kHasMaster, bool kScaled>
__attribute__((always_inline)) inline void update_blocks_lanes(const QuantizedChunk<ParamT>& c,
                                                               const StepScalars<float>& scalars) {
  using Lanes = QuantizedLanes<ParamT, kGradMode, kHasMaster, kScaled, kQuantBlock>;
  const StepScalars<float> s = scalars;  // a local copy: stores through the buffers cannot alias it
  // Two pairs of tiles, blocks k and k-1 (tile k & 1): 4 KiB of L1.
  alignas(64) float sq[2][kQuantBlock];
  alignas(64) float acc[2][kQuantBlock];
  uint32_t sq_largest[2] = {0, 0};
  uint32_t acc_largest[2] = {0, 0};
  int64_t previous = -1;  // block k-1's first element, -1 before the chunk's first block
  int previous_n = 0;
  // Block k-1 (in tile t) encoded on its own, as the shared loop encodes each block.
  const auto encode_previous = [&](int t) {
    const int64_t previous_block = previous / kQuantBlock;
    encode_block<Lanes, true>(sq[t], previous_n, sq_largest[t], c.square_avg + previous,
                              c.square_avg_scale + previous_block);
    encode_block<Lanes, true>(acc[t], previous_n, acc_largest[t], c.acc_delta + previous,
                              c.acc_delta_scale + previous_block);
  };
  int tile = 0;
  for (int64_t first = c.begin; first < c.end; first += kQuantBlock, tile ^= 1) {
    const int n = int(std::min<int64_t>(kQuantBlock, c.end - first));
    const int64_t block = first / kQuantBlock;
    const uint8_t* sq_codes = c.square_avg + first;
    const uint8_t* acc_codes = c.acc_delta + first;
    const int p = tile ^ 1;
    if (previous >= 0 && n == kQuantBlock && previous_n == kQuantBlock && ordinary_block(sq_largest[p]) &&
        ordinary_block(acc_largest[p]) && !has_nan_code(sq_codes, n) && !has_nan_code(acc_codes, n)) {
      const float sq_scale = block_scale(sq_largest[p]);
      const float acc_scale = block_scale(acc_largest[p]);
      const BlockCodes codes{sq_codes, acc_codes, decode_step(c.square_avg_scale[block]),
                             decode_step(c.acc_delta_scale[block])};
      const PendingEncode pending{sq[p],
                                  acc[p],
                                  c.square_avg + previous,
                                  c.acc_delta + previous,
                                  encode_factor(sq_scale),
                                  encode_factor(acc_scale)};
      float* master = kHasMaster ? c.master + first : nullptr;
      update_block_lanes<true, true, ParamT, kGradMode, kHasMaster, kScaled>(
          c.param + first, c.grad + first, master, n, s, codes, sq[tile], acc[tile], sq_largest[tile],
          acc_largest[tile], pending);
      c.square_avg_scale[previous / kQuantBlock] = sq_scale;
      c.acc_delta_scale[previous / kQuantBlock] = acc_scale;
    } else {
      if (previous >= 0) encode_previous(p);
      update_block<true, ParamT, kGradMode, kHasMaster, kScaled>(c, first, n, s, sq[tile], acc[tile],
                                                                 sq_largest[tile], acc_largest[tile]);
    }
    previous = first;
    previous_n = n;
  }
  if (previous >= 0) encode_previous(tile ^ 1);  // the chunk's last block
}

template <typename P, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2,f16c,prefer-vector-width=512"))) void
update_blocks_avx512(const QuantizedChunk<P>& c, const StepScalars<float>& s) {
  update_blocks<P, kMode, kMaster, kScaled>(c, s);
}

// Where float_lanes_run; a stochastically rounded bf16 param (its noise is the shared loop's) excepted.
template <typename P, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((flatten, target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2,f16c,prefer-vector-width=512"))) void
update_blocks_avx512_lanes(const QuantizedChunk<P>& c, const StepScalars<float>& s) {
  if (is_bf16_v<P> && !kMaster && s.stochastic_mask != 0) return update_blocks<P, kMode, kMaster, kScaled>(c, s);
  StepScalars<float> nearest = s;
  nearest.stochastic_mask = 0;
  update_blocks_lanes<P, kMode, kMaster, kScaled>(c, nearest);
}

template <typename P, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((target("avx2,fma,bmi2"))) void update_blocks_avx2(const QuantizedChunk<P>& c,
                                                                  const StepScalars<float>& s) {
  update_blocks<P, kMode, kMaster, kScaled>(c, s);
}
#endif

template <typename P, GradMode kMode, bool kMaster, bool kScaled>
void update_blocks_baseline(const QuantizedChunk<P>& c, const StepScalars<float>& s) {
  update_blocks<P, kMode, kMaster, kScaled>(c, s);
}

struct RunQuantizedCpu {
  const TensorListPointers& tensors;
  const StepArgs& args;

  template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster>
  void operator()() const {
    if constexpr (std::is_same_v<ParamT, double>) {
      TORCH_CHECK(false, "quantized state has no fp64 configuration");  // (the validator refused it already)
    } else if (args.grad_scale_ptr != nullptr) {
      run<ParamT, kGradMode, kHasMaster, true>();
    } else {
      run<ParamT, kGradMode, kHasMaster, false>();
    }
  }

  template <typename ParamT, GradMode kGradMode, bool kHasMaster, bool kScaled>
  void run() const {
    const StepScalars<float> scalars = resolve_scalars<float>(args);
    auto update = &update_blocks_baseline<ParamT, kGradMode, kHasMaster, kScaled>;
#if defined(__x86_64__)
    const CpuIsa isa = current_cpu_isa();
    if (isa >= CpuIsa::kAvx512) {
      update = float_lanes_run() ? &update_blocks_avx512_lanes<ParamT, kGradMode, kHasMaster, kScaled>
                                 : &update_blocks_avx512<ParamT, kGradMode, kHasMaster, kScaled>;
    }
    if (isa == CpuIsa::kAvx2 || isa == CpuIsa::kAvx2F16c) {
      update = &update_blocks_avx2<ParamT, kGradMode, kHasMaster, kScaled>;
    }
#endif
    // As the dense kernel: pack the whole group, then run every chunk of every launch in one parallel region.
    std::vector<QuantizedListMeta> launches;
    std::vector<int64_t> first_block{0};
    auto meta = std::make_unique<QuantizedListMeta>();
    pack_launches(tensors, *meta, [&](const QuantizedListMeta& full, int blocks) {
      launches.push_back(full);
      first_block.push_back(first_block.back() + blocks);
    });
    at::parallel_for(0, first_block.back(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const auto launch = std::upper_bound(first_block.begin(), first_block.end(), block) - first_block.begin() - 1;
        const QuantizedListMeta& m = launches[launch];
        const ChunkRange r = chunk_of_block(m, int(block - first_block[launch]));
        const QuantizedChunk<ParamT> chunk{static_cast<ParamT*>(m.param[r.slot]),
                                           static_cast<ParamT*>(m.grad[r.slot]),
                                           static_cast<uint8_t*>(m.square_avg[r.slot]),
                                           static_cast<uint8_t*>(m.acc_delta[r.slot]),
                                           m.master[r.slot],
                                           m.square_avg_scale[r.slot],
                                           m.acc_delta_scale[r.slot],
                                           r.begin,
                                           r.end,
                                           rounding_tensor_key(scalars.rounding_key, m.tensor_index[r.slot])};
        update(chunk, scalars);
      }
    });
  }
};

void quantized_adadelta_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                            at::TensorList acc_deltas, at::TensorList master_params, at::TensorList square_avg_scales,
                            at::TensorList acc_delta_scales, double lr, const c10::optional<at::Tensor>& lr_tensor,
                            double rho, double eps, double weight_decay, bool maximize,
                            const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                            int64_t grad_mode, bool stochastic_rounding, int64_t rounding_key) {
  const OpArgs op{params,    grads,        square_avgs, acc_deltas, master_params, lr,
                  lr_tensor, rho,          eps,         weight_decay, maximize,    grad_scale,
                  found_inf, grad_mode,    stochastic_rounding, rounding_key, true, square_avg_scales,
                  acc_delta_scales};
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
    // The param dtype picks the configuration: fp32 stands for the state, which the lanes update in fp32.
    dispatch_config(params[0].scalar_type(), at::kFloat, grad_mode, !master_params.empty(),
                    RunQuantizedCpu{tensors, args});
    group.finish();
  }
  bump_versions(op);
}

}  // namespace
}  // namespace adadelta_fused

TORCH_LIBRARY_IMPL(adadelta_fused, CPU, m) { m.impl("quantized_adadelta_", &adadelta_fused::quantized_adadelta_cpu); }
