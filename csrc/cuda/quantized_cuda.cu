// The CUDA kernel of adadelta_fused::quantized_adadelta_: one pass over every element of the group, through the
// shared per-element parts of a quantized step (quantized_state.h, which the CPU kernel runs in CI) and the
// dense op's multi-tensor walk (multi_tensor.h). A warp steps one 256-element block at a time: each lane runs
// 8 consecutive elements through QuantizedLanes, and the block's reductions (the largest root, for the new
// scale) are warp reductions, so the block's roots never leave registers. Nothing here syncs with the host:
// lr, grad_scale and found_inf are read by the kernel, so a step can be captured in a CUDA graph.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <memory>
#include <type_traits>
#include <vector>

#include "../multi_tensor.h"
#include "../op_host.h"
#include "../quantized_state.h"
#include "step_stream.cuh"
#include "vector_access.cuh"

namespace adadelta_fused {
namespace {

constexpr int kWarpSize = 32;
// A lane's run: 8 elements, so that a warp covers one block and a lane's codes are one 8-byte word.
constexpr int kRun = kQuantBlock / kWarpSize;
static_assert(kRun == 8, "a lane's codes are moved as one 8-byte word");
// Chunks start at multiples of kChunkElements in their tensor, so every chunk holds whole blocks (but the last).
static_assert(kChunkElements % kQuantBlock == 0, "a chunk must hold whole quantization blocks");
// 512 threads = 16 warps, each stepping 16 of a 64 Ki chunk's 256 blocks. One resident block per SM is the
// bound: a lane holds 8 elements of every buffer, and the configurations take 93 to 116 registers on sm_80 and
// sm_90; a cap of 64 (two blocks) spills up to 120 bytes on sm_90. One block keeps 512 x 48 to 80 bytes (fp32:
// 2 x 16-byte param, 2 x grad, 2 x 8-byte codes) = 24 KB or more in flight per SM, above the ~14 KB an H100 SM
// needs (csrc/cuda/README.md). Unmeasured: no GPU was available.
constexpr int kThreadsPerBlock = 512;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;
static_assert(sizeof(QuantizedListMeta) + sizeof(StepArgs) <= 32764, "the CUDA kernel-argument limit (CUDA >= 12.1)");

template <typename ParamT>
struct QuantizedBuffers {
  ParamT* param;
  ParamT* grad;
  uint8_t* square_avg;
  uint8_t* acc_delta;
  float* master;  // null without master weights
  float* square_avg_scale;
  float* acc_delta_scale;
};

// The vector path's stores, in PTX. As plain C++ stores, NVVM merges them with the scalar path's stores to
// the same addresses (both paths end the same iteration) and splits them to match: the fp32 run took an
// STG.E.128 and four STG.E, the bf16 param under a master copy four STG.E (tests/test_quantized_sass.py).
__device__ __forceinline__ void store_words(void* dst, uint4 w) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(w.x), "r"(w.y), "r"(w.z), "r"(w.w)
               : "memory");
}
__device__ __forceinline__ void store_words(void* dst, uint2 w) {
  asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(dst), "r"(w.x), "r"(w.y) : "memory");
}

__device__ __forceinline__ uint32_t raw_bits(float v) { return bits_of(v); }
__device__ __forceinline__ uint32_t raw_bits(bfloat16_bits v) { return uint16_t(v); }
__device__ __forceinline__ uint32_t raw_bits(float16_bits v) { return uint16_t(v); }
__device__ __forceinline__ uint32_t raw_bits(uint8_t v) { return v; }

// A lane's run of 8 values as 16-byte words (fp32: two; bf16/fp16: one) or, for codes, one 8-byte word.
template <typename T>
__device__ __forceinline__ void store_run(T* dst, const T (&src)[kRun]) {
  constexpr int kPerWord = 4 / int(sizeof(T));
  constexpr int kWords = kRun / kPerWord;
  uint32_t words[kWords];
#pragma unroll
  for (int w = 0; w < kWords; ++w) {
    words[w] = 0;
#pragma unroll
    for (int k = 0; k < kPerWord; ++k) words[w] |= raw_bits(src[w * kPerWord + k]) << (32 / kPerWord * k);
  }
  if constexpr (kWords == 2) {
    store_words(dst, make_uint2(words[0], words[1]));
  } else {
#pragma unroll
    for (int q = 0; q < kWords / 4; ++q) {
      store_words(reinterpret_cast<uint4*>(dst) + q,
                  make_uint4(words[4 * q], words[4 * q + 1], words[4 * q + 2], words[4 * q + 3]));
    }
  }
}

// A lane's 8 codes as one 8-byte load (LDG.E.64); a union keeps the bytes in registers.
union CodeWord {
  uint2 word;
  uint8_t codes[kRun];
};

__device__ __forceinline__ void load_codes(const uint8_t* src, uint8_t (&dst)[kRun]) {
  CodeWord w;
  w.word = *reinterpret_cast<const uint2*>(src);
#pragma unroll
  for (int k = 0; k < kRun; ++k) dst[k] = w.codes[k];
}

// The scalar path's accesses: elements [0, count) of the run, count <= kRun. The lanes always run all kRun
// elements (a loop bounded by a runtime count would index the run's arrays dynamically, which puts them in
// local memory), so the missing ones are zeros. Their new R is sqrt(eps) or so, which would count toward the
// block's scale where no real element's R is finite (or rho is outside [0, 1], which the op does not check): the
// scale's reductions take only the first `count` lanes (largest_live), and the missing lanes' codes are never
// stored.
template <typename T>
__device__ __forceinline__ void load_masked(const T* src, int count, T (&dst)[kRun]) {
#pragma unroll
  for (int k = 0; k < kRun; ++k) dst[k] = k < count ? src[k] : T{};
}

template <typename T>
__device__ __forceinline__ void store_masked(T* dst, int count, const T (&src)[kRun]) {
#pragma unroll
  for (int k = 0; k < kRun; ++k) {
    if (k < count) dst[k] = src[k];
  }
}

template <typename ParamT, GradMode kGradMode, bool kHasMaster>
struct WarpStep {
  // kScaled: a GPU's arithmetic is far ahead of its bandwidth, and it always divides (adadelta_values).
  using Lanes = QuantizedLanes<ParamT, kGradMode, kHasMaster, true, kRun>;

  // The largest raw bits (kCounted: counted_bits) of the run's first `count` roots. Every lane is visited and the
  // others masked off: a loop to a runtime count would index the run's array dynamically (local memory).
  template <bool kCounted>
  __device__ __forceinline__ static uint32_t largest_live(const float (&roots)[kRun], int count) {
    uint32_t largest = 0;
#pragma unroll
    for (int k = 0; k < kRun; ++k) {
      const uint32_t b = kCounted ? counted_bits(roots[k]) : bits_of(roots[k]);
      largest = k < count && b > largest ? b : largest;
    }
    return largest;
  }

  // One accumulator's new roots -> codes, and the block's new scale (stored by lane 0), from the run's first
  // `count` roots. The branch is warp-uniform: every lane sees the block's largest raw bits.
  __device__ __forceinline__ static void encode(const float (&roots)[kRun], int count, uint8_t (&codes)[kRun],
                                                float* scale) {
    const uint32_t block_largest = __reduce_max_sync(0xFFFFFFFFu, largest_live<false>(roots, count));
    float new_scale;
    if (ordinary_block(block_largest)) {
      new_scale = block_scale(block_largest);
      Lanes::template encode<false>(roots, kRun, encode_factor(new_scale), codes);
    } else {
      new_scale = block_scale(__reduce_max_sync(0xFFFFFFFFu, largest_live<true>(roots, count)));
      Lanes::template encode<true>(roots, kRun, encode_factor(new_scale), codes);
    }
    if (threadIdx.x % kWarpSize == 0) *scale = new_scale;
  }

  // Elements [begin, end) of one tensor (begin: a multiple of the chunk), block by block, one block per warp.
  // The vector path needs every buffer aligned at `begin` to its run's width (16 bytes for the param, grad
  // and master runs, 8 for the codes; begin is a multiple of 64 Ki, so the base pointers decide); a
  // misaligned view (a tensor may start at any element) and a tensor's last, partial run take the scalar path.
  __device__ __forceinline__ static void range(const QuantizedBuffers<ParamT>& b, int64_t begin, int64_t end,
                                               const StepScalars<float>& s, uint32_t tensor_key) {
    const bool aligned = is_16_byte_aligned(b.param + begin) && is_16_byte_aligned(b.grad + begin) &&
                         (!kHasMaster || is_16_byte_aligned(b.master + begin)) &&
                         (reinterpret_cast<uintptr_t>(b.square_avg + begin) & 7u) == 0 &&
                         (reinterpret_cast<uintptr_t>(b.acc_delta + begin) & 7u) == 0;
    const int lane = int(threadIdx.x) % kWarpSize;
    // Not unrolled: one iteration has every buffer's run in flight (4 to 7 words a lane), as the dense kernel.
#pragma unroll 1
    for (int64_t first = begin + int64_t(threadIdx.x / kWarpSize) * kQuantBlock; first < end;
         first += int64_t(kWarpsPerBlock) * kQuantBlock) {
      const int64_t i = first + int64_t(lane) * kRun;
      const int count = int(end - i < kRun ? (end - i > 0 ? end - i : 0) : kRun);
      const bool vector = aligned && count == kRun;
      const int64_t block = first / kQuantBlock;
      ParamT param[kRun];
      ParamT grad[kRun];
      float master[kRun];
      uint8_t sq_codes[kRun];
      uint8_t acc_codes[kRun];
      if (vector) {
        if constexpr (kHasMaster) {
          load_vector(b.master + i, master);
        } else {
          load_vector(b.param + i, param);
        }
        load_vector(b.grad + i, grad);
        load_codes(b.square_avg + i, sq_codes);
        load_codes(b.acc_delta + i, acc_codes);
      } else {
        if constexpr (kHasMaster) {
          load_masked(b.master + i, count, master);
        } else {
          load_masked(b.param + i, count, param);
        }
        load_masked(b.grad + i, count, grad);
        load_masked(b.square_avg + i, count, sq_codes);
        load_masked(b.acc_delta + i, count, acc_codes);
      }
      // Always with the NaN-code case: one compare and select per value, where a warp-uniform check of the
      // largest code would add a reduction, a branch and a second copy of the decode for the same memory-bound
      // step (the CPU kernel checks because its fast path saves vector work).
      float sq[kRun];
      float acc[kRun];
      Lanes::template decode<true>(sq_codes, kRun, decode_step(b.square_avg_scale[block]), sq);
      Lanes::template decode<true>(acc_codes, kRun, decode_step(b.acc_delta_scale[block]), acc);
      // update's folds of all kRun lanes go unused: encode reduces the live lanes alone.
      uint32_t all_lanes_sq_largest = 0;
      uint32_t all_lanes_acc_largest = 0;
      Lanes::update(param, grad, master, kRun, s, tensor_key, i, sq, acc, all_lanes_sq_largest,
                    all_lanes_acc_largest);
      encode(sq, count, sq_codes, b.square_avg_scale + block);
      encode(acc, count, acc_codes, b.acc_delta_scale + block);
      if (vector) {
        store_run(b.param + i, param);
        if constexpr (kGradMode != GradMode::kKeep) store_run(b.grad + i, grad);
        if constexpr (kHasMaster) store_run(b.master + i, master);
        store_run(b.square_avg + i, sq_codes);
        store_run(b.acc_delta + i, acc_codes);
      } else {
        store_masked(b.param + i, count, param);
        if constexpr (kGradMode != GradMode::kKeep) store_masked(b.grad + i, count, grad);
        if constexpr (kHasMaster) store_masked(b.master + i, count, master);
        store_masked(b.square_avg + i, count, sq_codes);
        store_masked(b.acc_delta + i, count, acc_codes);
      }
    }
  }
};

// One block per 64 Ki-element chunk of the packed tensor lists; __grid_constant__ lets the block index the
// 29 KB of metadata in the parameter bank (a dynamic `slot` index would otherwise copy it to local memory).
// A step that GradScaler skips writes nothing, except that the "zero" mode still clears the grads (or the next
// backward would add to the inf/NaN it found): here, in the same launch, since the kernel knows its mode.
template <typename ParamT, GradMode kGradMode, bool kHasMaster>
__global__ void __launch_bounds__(kThreadsPerBlock, 1)
    quantized_adadelta_kernel(const __grid_constant__ QuantizedListMeta meta, const StepArgs args) {
  const ChunkRange r = chunk_of_block(meta, int(blockIdx.x));
  ParamT* grad = static_cast<ParamT*>(meta.grad[r.slot]);
  if (step_skipped(args)) {
    if constexpr (kGradMode == GradMode::kZero) {
      for (int64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) grad[i] = ParamT{};  // +0
    }
    return;
  }
  const StepScalars<float> s = resolve_scalars<float>(args);
  const QuantizedBuffers<ParamT> b{static_cast<ParamT*>(meta.param[r.slot]),
                                   grad,
                                   static_cast<uint8_t*>(meta.square_avg[r.slot]),
                                   static_cast<uint8_t*>(meta.acc_delta[r.slot]),
                                   meta.master[r.slot],
                                   meta.square_avg_scale[r.slot],
                                   meta.acc_delta_scale[r.slot]};
  WarpStep<ParamT, kGradMode, kHasMaster>::range(b, r.begin, r.end, s,
                                                 rounding_tensor_key(s.rounding_key, meta.tensor_index[r.slot]));
}

struct RunQuantizedCuda {
  const TensorListPointers& tensors;
  const StepArgs& args;
  cudaStream_t stream;

  template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster>
  void operator()() const {
    if constexpr (std::is_same_v<ParamT, double>) {
      TORCH_CHECK(false, "quantized state has no fp64 configuration");  // (the validator refused it already)
    } else {
      auto meta = std::make_unique<QuantizedListMeta>();  // 29 KB: kept off the host stack
      pack_launches(tensors, *meta, [&](const QuantizedListMeta& full, int blocks) {
        quantized_adadelta_kernel<ParamT, kGradMode, kHasMaster><<<blocks, kThreadsPerBlock, 0, stream>>>(full, args);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  }
};

void quantized_adadelta_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                             at::TensorList acc_deltas, at::TensorList master_params,
                             at::TensorList square_avg_scales, at::TensorList acc_delta_scales, double lr,
                             const c10::optional<at::Tensor>& lr_tensor, double rho, double eps, double weight_decay,
                             bool maximize, const c10::optional<at::Tensor>& grad_scale,
                             const c10::optional<at::Tensor>& found_inf, int64_t grad_mode, bool stochastic_rounding,
                             int64_t rounding_key) {
  const OpArgs op{params,    grads,        square_avgs, acc_deltas, master_params, lr,
                  lr_tensor, rho,          eps,         weight_decay, maximize,    grad_scale,
                  found_inf, grad_mode,    stochastic_rounding, rounding_key, true, square_avg_scales,
                  acc_delta_scales};
  check_op_args(op, c10::DeviceType::CUDA);
  if (params.empty()) return;
  const c10::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = step_stream(op, device);
  std::vector<at::Tensor> keep_alive;  // the fp64 device copy of a tensor lr, read by the kernels
  const StepArgs args = make_step_args(op, device, keep_alive);
  DenseGroup group(op);
  const TensorListPointers tensors = group.pointers();
  // The param dtype picks the configuration: fp32 stands for the state, which the lanes update in fp32.
  dispatch_config(params[0].scalar_type(), at::kFloat, grad_mode, !master_params.empty(),
                  RunQuantizedCuda{tensors, args, stream});
  group.finish();  // copies back into strided tensors, ordered after the kernels on this stream
  bump_versions(op);
}

}  // namespace
}  // namespace adadelta_fused

TORCH_LIBRARY_IMPL(adadelta_fused, CUDA, m) {
  m.impl("quantized_adadelta_", &adadelta_fused::quantized_adadelta_cuda);
}
