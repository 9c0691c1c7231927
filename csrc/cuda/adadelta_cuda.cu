// The CUDA kernel of adadelta_fused::adadelta_: one pass over every element of the group, through the
// per-element update (adadelta_math.h) and the multi-tensor walk (multi_tensor.h) that the CPU kernel
// runs in CI. Nothing here syncs with the host: lr, grad_scale and found_inf are read by the kernel, so
// a step can be captured in a CUDA graph.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <memory>
#include <vector>

#include "../adadelta_math.h"
#include "../multi_tensor.h"
#include "../op_host.h"
#include "step_stream.cuh"
#include "vector_access.cuh"

namespace adadelta_fused {
namespace {

// 512 threads x 4 fp32 vectors = 2048 elements per block sweep: a 64 Ki chunk takes 32 sweeps.
constexpr int kThreadsPerBlock = 512;
static_assert(sizeof(TensorListMeta) + sizeof(StepArgs) <= 32764, "the CUDA kernel-argument limit (CUDA >= 12.1)");
// Two resident blocks per SM cap a thread at 64 registers, which every fp32-math configuration fits
// without spilling on sm_80 and sm_90 (45 to 64 registers). 1024 threads with 4 (fp32) to 7 (bf16 + fp32
// master) 16-byte loads each keep 64 KB or more in flight per SM, several times what an H100 needs to
// cover its memory latency at full bandwidth. fp64 math spills 16 to 48 bytes under that cap (its square
// root and division slow paths hold register pairs), and so does sm_100's ptxas for the unscale mode
// (4 to 8 bytes): fp64, and every configuration on sm_100 and later, keep one block per SM as the bound
// and take the registers they want. The flat kernel's grid asks the occupancy API how many blocks fit.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000
constexpr int kFp32MathMinBlocksPerSm = 1;
#else
constexpr int kFp32MathMinBlocksPerSm = 2;
#endif
template <typename ParamT>
constexpr int kMinBlocksPerSm = std::is_same_v<ParamT, double> ? 1 : kFp32MathMinBlocksPerSm;

template <typename ParamT, typename StateT>
struct Buffers {
  ParamT* param;
  ParamT* grad;
  StateT* square_avg;
  StateT* acc_delta;
  float* master;  // null without master weights
};

template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster>
struct ThreadUpdate {
  using Element = AdadeltaElement<ParamT, StateT, kGradMode, kHasMaster>;
  using M = math_t<ParamT>;
  // With master weights the fp32 master replaces the param as a 4-byte buffer in the run.
  static constexpr int kVec =
      kHasMaster ? kVectorElements<ParamT, StateT, float> : kVectorElements<ParamT, StateT>;

  // kVec elements starting at i, every buffer 16-byte aligned there: 128-bit accesses only, and only the
  // buffers the configuration reads (the param is not read under a master copy; the grad is written in
  // the unscale and zero modes).
  __device__ __forceinline__ static void vector(const Buffers<ParamT, StateT>& b, int64_t i,
                                                const StepScalars<M>& s, uint32_t tensor_key) {
    ParamT param[kVec];
    ParamT grad[kVec];
    StateT square_avg[kVec];
    StateT acc_delta[kVec];
    float master[kVec];
    if constexpr (kHasMaster) {
      load_vector(b.master + i, master);
    } else {
      load_vector(b.param + i, param);
    }
    load_vector(b.grad + i, grad);
    load_vector(b.square_avg + i, square_avg);
    load_vector(b.acc_delta + i, acc_delta);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      Element::update(param[k], grad[k], square_avg[k], acc_delta[k], master[k], s, tensor_key, i + k);
    }
    store_vector(b.param + i, param);
    if constexpr (kGradMode != GradMode::kKeep) store_vector(b.grad + i, grad);
    store_vector(b.square_avg + i, square_avg);
    store_vector(b.acc_delta + i, acc_delta);
    if constexpr (kHasMaster) store_vector(b.master + i, master);
  }

  __device__ __forceinline__ static void scalar(const Buffers<ParamT, StateT>& b, int64_t i, const StepScalars<M>& s,
                                                uint32_t tensor_key) {
    float unused = 0.0f;
    float& master = kHasMaster ? b.master[i] : unused;
    Element::update(b.param[i], b.grad[i], b.square_avg[i], b.acc_delta[i], master, s, tensor_key, i);
  }

  // Elements [begin, end) of one tensor, shared by the threads of a block. The vector path needs every
  // buffer 16-byte aligned at `begin` (begin is a multiple of the 64 Ki chunk, so the base pointers
  // decide); a misaligned view runs the scalar path, still coalesced.
  __device__ __forceinline__ static void range(const Buffers<ParamT, StateT>& b, int64_t begin, int64_t end,
                                               const StepScalars<M>& s, uint32_t tensor_key) {
    const bool aligned = is_16_byte_aligned(b.param + begin) && is_16_byte_aligned(b.grad + begin) &&
                         is_16_byte_aligned(b.square_avg + begin) && is_16_byte_aligned(b.acc_delta + begin) &&
                         (!kHasMaster || is_16_byte_aligned(b.master + begin));
    const int64_t vector_end = aligned ? begin + (end - begin) / kVec * kVec : begin;
    // Not unrolled: each iteration already has one 128-bit access per buffer in flight (4 for fp32),
    // and an unrolled copy would double the registers that decide how many blocks an SM holds.
#pragma unroll 1
    for (int64_t i = begin + int64_t(threadIdx.x) * kVec; i < vector_end; i += int64_t(blockDim.x) * kVec) {
      vector(b, i, s, tensor_key);
    }
#pragma unroll 1
    for (int64_t i = vector_end + threadIdx.x; i < end; i += blockDim.x) scalar(b, i, s, tensor_key);
  }
};

// One block per 64 Ki-element chunk of the packed tensor lists. __grid_constant__ lets the block index
// the 25 KB of metadata in the parameter bank directly; without it, the dynamic `slot` index forces a
// copy of the whole struct into local memory.
template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster>
__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSm<ParamT>)
    adadelta_multi_tensor_kernel(const __grid_constant__ TensorListMeta meta, const StepArgs args) {
  if (step_skipped(args)) return;  // GradScaler found inf/NaN: nothing is written
  using Update = ThreadUpdate<ParamT, StateT, kGradMode, kHasMaster>;
  const StepScalars<math_t<ParamT>> s = resolve_scalars<math_t<ParamT>>(args);
  const ChunkRange r = chunk_of_block(meta, int(blockIdx.x));
  const Buffers<ParamT, StateT> b{static_cast<ParamT*>(meta.param[r.slot]), static_cast<ParamT*>(meta.grad[r.slot]),
                                  static_cast<StateT*>(meta.square_avg[r.slot]),
                                  static_cast<StateT*>(meta.acc_delta[r.slot]), meta.master[r.slot]};
  Update::range(b, r.begin, r.end, s, rounding_tensor_key(s.rounding_key, meta.tensor_index[r.slot]));
}

// The flat-buffer fast path: a group of one tensor (a flattened optimizer's whole buffer) is one launch
// with 112 bytes of arguments instead of the 25 KB table. Blocks stride over the same 64 Ki chunks and
// run the same block loop as the multi-tensor kernel. (A thread-level grid-stride loop kept a 64-bit
// stride in local memory across the division's slow-path call on sm_90; this shape spills nothing.)
template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster>
__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSm<ParamT>)
    adadelta_flat_kernel(const Buffers<ParamT, StateT> b, const int64_t numel, const StepArgs args) {
  if (step_skipped(args)) return;
  using Update = ThreadUpdate<ParamT, StateT, kGradMode, kHasMaster>;
  const StepScalars<math_t<ParamT>> s = resolve_scalars<math_t<ParamT>>(args);
  const uint32_t tensor_key = rounding_tensor_key(s.rounding_key, 0);
  for (int64_t begin = int64_t(blockIdx.x) * kChunkElements; begin < numel;
       begin += int64_t(gridDim.x) * kChunkElements) {
    Update::range(b, begin, begin + kChunkElements < numel ? begin + kChunkElements : numel, s, tensor_key);
  }
}

// A step that GradScaler skips in the "zero" mode still clears the grads, or the next backward would add
// to the inf/NaN it found and every later step would be skipped too. A separate kernel keeps the update
// kernels' machine code (and its audit) as it is; when found_inf is zero each block reads 4 bytes and
// returns. Any element width: the all-zero bit pattern is +0 in every float format.
template <typename Word>
__global__ void __launch_bounds__(kThreadsPerBlock)
    zero_grads_if_skipped_kernel(const __grid_constant__ TensorListMeta meta, const float* found_inf) {
  if (*found_inf == 0.0f) return;
  const ChunkRange r = chunk_of_block(meta, int(blockIdx.x));
  Word* grad = static_cast<Word*>(meta.grad[r.slot]);
  for (int64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) grad[i] = Word(0);
}

template <typename Word>
void zero_grads_if_skipped(const TensorListPointers& tensors, const float* found_inf, cudaStream_t stream) {
  auto meta = std::make_unique<TensorListMeta>();
  pack_launches(tensors, *meta, [&](const TensorListMeta& full, int blocks) {
    zero_grads_if_skipped_kernel<Word><<<blocks, kThreadsPerBlock, 0, stream>>>(full, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Blocks of kKernel that fit on the device at once: the flat kernel's grid is one such wave, since more
// blocks would only queue behind it. Cached per kernel and device (two driver queries on first use).
template <auto kKernel>
int64_t resident_blocks(c10::DeviceIndex device) {
  static std::array<std::atomic<int64_t>, 64> cached{};
  TORCH_CHECK(device >= 0 && size_t(device) < cached.size(), "adadelta_fused supports CUDA devices 0 to ",
              cached.size() - 1, ", got device ", int(device));
  std::atomic<int64_t>& blocks = cached[size_t(device)];
  if (blocks.load(std::memory_order_relaxed) == 0) {
    int multiprocessors = 0;
    int per_multiprocessor = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, kKernel, kThreadsPerBlock, 0));
    blocks.store(int64_t(multiprocessors) * std::max(per_multiprocessor, 1), std::memory_order_relaxed);
  }
  return blocks.load(std::memory_order_relaxed);
}

struct RunCuda {
  const TensorListPointers& tensors;
  const StepArgs& args;
  c10::DeviceIndex device;
  cudaStream_t stream;

  template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster>
  void operator()() const {
    if (tensors.count == 1) {
      flat<ParamT, StateT, kGradMode, kHasMaster>();
      return;
    }
    auto meta = std::make_unique<TensorListMeta>();  // 25 KB: kept off the host stack
    pack_launches(tensors, *meta, [&](const TensorListMeta& full, int blocks) {
      adadelta_multi_tensor_kernel<ParamT, StateT, kGradMode, kHasMaster>
          <<<blocks, kThreadsPerBlock, 0, stream>>>(full, args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster>
  void flat() const {
    const int64_t numel = tensors.numel[0];
    if (numel == 0) return;
    constexpr auto kernel = adadelta_flat_kernel<ParamT, StateT, kGradMode, kHasMaster>;
    const int64_t chunks = (numel + kChunkElements - 1) / kChunkElements;
    const int64_t blocks = std::min(chunks, resident_blocks<kernel>(device));
    const Buffers<ParamT, StateT> b{static_cast<ParamT*>(tensors.param[0]), static_cast<ParamT*>(tensors.grad[0]),
                                    static_cast<StateT*>(tensors.square_avg[0]),
                                    static_cast<StateT*>(tensors.acc_delta[0]),
                                    tensors.master != nullptr ? tensors.master[0] : nullptr};
    kernel<<<unsigned(blocks), kThreadsPerBlock, 0, stream>>>(b, numel, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void adadelta_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs, at::TensorList acc_deltas,
                   at::TensorList master_params, double lr, const c10::optional<at::Tensor>& lr_tensor, double rho,
                   double eps, double weight_decay, bool maximize, const c10::optional<at::Tensor>& grad_scale,
                   const c10::optional<at::Tensor>& found_inf, int64_t grad_mode, bool stochastic_rounding,
                   int64_t rounding_key) {
  const OpArgs op{params,   grads,        square_avgs, acc_deltas, master_params, lr,        lr_tensor,
                  rho,      eps,          weight_decay, maximize,  grad_scale,    found_inf, grad_mode,
                  stochastic_rounding, rounding_key};
  check_op_args(op, c10::DeviceType::CUDA);
  if (params.empty()) return;
  const c10::Device device = params[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = step_stream(op, device);
  std::vector<at::Tensor> keep_alive;  // the fp64 device copy of a tensor lr, read by the kernels
  const StepArgs args = make_step_args(op, device, keep_alive);
  DenseGroup group(op);
  const TensorListPointers tensors = group.pointers();
  dispatch_config(params[0].scalar_type(), square_avgs[0].scalar_type(), grad_mode, !master_params.empty(),
                  RunCuda{tensors, args, device.index(), stream});
  if (zeroes_grads_when_skipped(op)) {
    switch (params[0].element_size()) {
      case 2: zero_grads_if_skipped<uint16_t>(tensors, args.found_inf_ptr, stream); break;
      case 4: zero_grads_if_skipped<uint32_t>(tensors, args.found_inf_ptr, stream); break;
      default: zero_grads_if_skipped<uint64_t>(tensors, args.found_inf_ptr, stream); break;
    }
  }
  group.finish();  // copies back into strided tensors, ordered after the kernels on this stream
  bump_versions(op);
}

}  // namespace
}  // namespace adadelta_fused

TORCH_LIBRARY_IMPL(adadelta_fused, CUDA, m) { m.impl("adadelta_", &adadelta_fused::adadelta_cuda); }
