// The CUDA kernel of adadelta_fused::sparse_adadelta_: one warp per listed row, its lanes over the row's
// elements, each running the shared row tile (sparse_rows.h) on one element, as the CPU kernel runs it on
// 32. No host sync: lr, grad_scale and found_inf are read by the kernel.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../op_host.h"
#include "../sparse_host.h"
#include "../sparse_rows.h"

namespace adadelta_fused {
namespace {

// 8 warps, 8 rows, per block. A warp owns its row, so the row's step record is read by all of its lanes
// and then written by lane 0 after __syncwarp, with no other warp touching it; and the missed-step count
// is uniform across the warp, so the exact decay loop never diverges.
constexpr int kSparseThreads = 256;
constexpr int kRowsPerBlock = kSparseThreads / 32;

template <typename ParamT, typename StateT, bool kUpdate>
__global__ void __launch_bounds__(kSparseThreads)
    sparse_adadelta_kernel(const SparseRows<ParamT, StateT> t, const StepArgs args) {
  using M = math_t<ParamT>;
  if (step_skipped(args)) return;  // GradScaler found inf/NaN: nothing changes
  const int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (i >= t.listed) return;
  const int lane = int(threadIdx.x % 32);
  const int64_t r = t.rows[i];
  CUDA_KERNEL_ASSERT(r >= 0 && r < t.num_rows);  // the host validator cannot read device memory
  const StepScalars<M> s = resolve_scalars<M>(args);
  const RowDecay<M> d = row_decay<M>(args.rho, catch_up_target(t.step, kUpdate), t.row_step[r]);
  const int64_t n = t.row_numel;
  ParamT* param = t.param + r * n;
  StateT* square_avg = t.square_avg + r * n;
  StateT* acc_delta = t.acc_delta + r * n;
  const ParamT* grad = kUpdate ? t.values + i * n : nullptr;
  for (int64_t e = lane; e < n; e += 32) {
    SparseRowTile<ParamT, StateT, kUpdate, true, 1>::update(param + e, kUpdate ? grad + e : nullptr,
                                                            square_avg + e, acc_delta + e, 1, s, d);
  }
  __syncwarp();  // every lane has read row_step[r] (row_decay) before lane 0 overwrites it
  if (lane == 0) t.row_step[r] = t.step;
}

struct RunSparseCuda {
  const SparseOpArgs& op;
  const StepArgs& args;
  cudaStream_t stream;

  template <typename P, typename S, GradMode, bool>
  void operator()() const {
    if (op.values.has_value()) return run<P, S, true>();
    run<P, S, false>();
  }

  template <typename P, typename S, bool kUpdate>
  void run() const {
    const int64_t listed = op.rows.numel();
    const SparseRows<P, S> t{static_cast<P*>(op.param.data_ptr()),
                             static_cast<S*>(op.square_avg.data_ptr()),
                             static_cast<S*>(op.acc_delta.data_ptr()),
                             op.row_step.data_ptr<int64_t>(),
                             op.rows.const_data_ptr<int64_t>(),
                             kUpdate ? static_cast<const P*>(op.values->const_data_ptr()) : nullptr,
                             listed,
                             op.param.size(0) == 0 ? 0 : op.param.numel() / op.param.size(0),
                             op.param.size(0),
                             op.step};
    const int64_t blocks = (listed + kRowsPerBlock - 1) / kRowsPerBlock;
    TORCH_CHECK_VALUE(blocks <= int64_t(0x7FFFFFFF), "rows has ", listed, " entries, more than one launch covers");
    sparse_adadelta_kernel<P, S, kUpdate><<<unsigned(blocks), kSparseThreads, 0, stream>>>(t, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void sparse_adadelta_cuda(const at::Tensor& param, const at::Tensor& square_avg, const at::Tensor& acc_delta,
                          const at::Tensor& row_step, const at::Tensor& rows, const c10::optional<at::Tensor>& values,
                          double lr, const c10::optional<at::Tensor>& lr_tensor, double rho, double eps, bool maximize,
                          const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                          int64_t step) {
  const SparseOpArgs op{param, square_avg, acc_delta, row_step, rows, values, lr, lr_tensor, rho, eps, maximize,
                        grad_scale, found_inf, step};
  check_sparse_args(op, c10::DeviceType::CUDA);
  if (rows.numel() > 0) {
    const c10::cuda::CUDAGuard guard(param.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(param.device().index()).stream();
    std::vector<at::Tensor> keep_alive;  // the fp64 device copy of a tensor lr, read by the kernel
    const StepArgs args = make_sparse_step_args(op, keep_alive);
    dispatch_config(param.scalar_type(), square_avg.scalar_type(), 0, false, RunSparseCuda{op, args, stream});
  }
  bump_sparse_versions(op);
}

}  // namespace
}  // namespace adadelta_fused

TORCH_LIBRARY_IMPL(adadelta_fused, CUDA, m) { m.impl("sparse_adadelta_", &adadelta_fused::sparse_adadelta_cuda); }
