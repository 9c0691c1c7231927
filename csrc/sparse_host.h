// Host-side plumbing of adadelta_fused::sparse_adadelta_, shared by its CPU and CUDA kernels and, through
// _C.check_sparse_args, by the Triton op and the fake kernel: the one validator of the sparse op.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

#include "adadelta_math.h"

namespace adadelta_fused {

struct SparseOpArgs {
  const at::Tensor& param;
  const at::Tensor& square_avg;
  const at::Tensor& acc_delta;
  const at::Tensor& row_step;
  const at::Tensor& rows;
  const c10::optional<at::Tensor>& values;
  double lr;
  const c10::optional<at::Tensor>& lr_tensor;
  double rho;
  double eps;
  bool maximize;
  const c10::optional<at::Tensor>& grad_scale;
  const c10::optional<at::Tensor>& found_inf;
  int64_t step;
};

// Raises, naming the argument and its value, before anything is written. The dtype pairs, lr, grad_scale
// and found_inf go through the dense op's validator (op_host.h check_op_args), so both ops accept the
// same of those and say the same words.
void check_sparse_args(const SparseOpArgs& a, c10::DeviceType expected_device);

// StepArgs for the sparse op (weight decay 0: the optimizer refuses it with sparse gradients).
StepArgs make_sparse_step_args(const SparseOpArgs& a, std::vector<at::Tensor>& keep_alive);

// After a call: every tensor the schema marks mutable gets a new version, as torch's in-place ops give.
void bump_sparse_versions(const SparseOpArgs& a);

}  // namespace adadelta_fused
