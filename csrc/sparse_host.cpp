#include "sparse_host.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "op_host.h"

namespace adadelta_fused {
namespace {

void check_dense(const char* name, const at::Tensor& t, const at::Tensor& param) {
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, name, " has layout ", t.layout(), "; expected torch.strided");
  TORCH_CHECK_VALUE(t.device() == param.device(), name, " is on ", t.device(), " but param is on ", param.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous (the kernels address rows by row * row_numel)");
}

void check_written(const char* name, const at::Tensor& t) {
  TORCH_CHECK(!t.is_inference() || c10::InferenceMode::is_enabled(), name,
              " is an inference tensor; the step updates it in place, which torch allows only inside InferenceMode");
}

}  // namespace

void check_sparse_args(const SparseOpArgs& a, c10::DeviceType expected_device) {
  const at::Tensor& p = a.param;
  TORCH_CHECK_VALUE(p.layout() == at::kStrided, "param has layout ", p.layout(), "; expected torch.strided");
  TORCH_CHECK_VALUE(p.dim() >= 1, "param must have at least one dimension (its rows), got a 0-dim tensor");
  TORCH_CHECK_VALUE(p.is_contiguous(), "param must be contiguous (the kernels address rows by row * row_numel)");
  TORCH_CHECK_VALUE(p.device().type() == expected_device, "param is on ", p.device(),
                    ", which this kernel cannot run on");
  check_dense("square_avg", a.square_avg, p);
  check_dense("acc_delta", a.acc_delta, p);
  check_dense("row_step", a.row_step, p);
  check_dense("rows", a.rows, p);
  TORCH_CHECK_VALUE(a.square_avg.sizes() == p.sizes(), "square_avg has shape ", a.square_avg.sizes(),
                    " but param has ", p.sizes());
  TORCH_CHECK_VALUE(a.acc_delta.sizes() == p.sizes(), "acc_delta has shape ", a.acc_delta.sizes(),
                    " but param has ", p.sizes());
  TORCH_CHECK_TYPE(a.acc_delta.scalar_type() == a.square_avg.scalar_type(), "acc_delta has dtype ",
                   a.acc_delta.scalar_type(), " but square_avg has ", a.square_avg.scalar_type());
  TORCH_CHECK_TYPE(a.row_step.scalar_type() == at::kLong, "row_step must be int64, got ", a.row_step.scalar_type());
  TORCH_CHECK_VALUE(a.row_step.dim() == 1 && a.row_step.size(0) == p.size(0), "row_step has shape ",
                    a.row_step.sizes(), " but param has ", p.size(0), " rows (expected [", p.size(0), "])");
  TORCH_CHECK_TYPE(a.rows.scalar_type() == at::kLong, "rows must be int64, got ", a.rows.scalar_type());
  TORCH_CHECK_VALUE(a.rows.dim() == 1, "rows must be 1-dim, got shape ", a.rows.sizes());
  if (a.values.has_value()) {
    const at::Tensor& v = *a.values;
    check_dense("values", v, p);
    TORCH_CHECK_TYPE(v.scalar_type() == p.scalar_type(), "values has dtype ", v.scalar_type(), " but param has ",
                     p.scalar_type());
    std::vector<int64_t> expected(p.sizes().begin(), p.sizes().end());
    expected[0] = a.rows.size(0);
    TORCH_CHECK_VALUE(v.sizes() == at::IntArrayRef(expected), "values has shape ", v.sizes(), " but ",
                      a.rows.size(0), " rows of param ", p.sizes(), " need ", at::IntArrayRef(expected));
  }
  TORCH_CHECK_VALUE(a.step >= (a.values.has_value() ? 1 : 0), "Invalid step: ", a.step,
                    a.values.has_value() ? " (a step with values is step 1 or later)" : " (must be >= 0)");
  // The dtype pairs, lr, grad_scale and found_inf: the dense validator, on empty row slices (a 0-row slice
  // of each tensor has the shapes it checks, and no memory for it to check).
  const at::Tensor none_p = p.narrow(0, 0, 0);
  const std::vector<at::Tensor> params{none_p};
  const std::vector<at::Tensor> grads{a.values.has_value() ? a.values->narrow(0, 0, 0) : none_p};
  const std::vector<at::Tensor> square_avgs{a.square_avg.narrow(0, 0, 0)};
  const std::vector<at::Tensor> acc_deltas{a.acc_delta.narrow(0, 0, 0)};
  const OpArgs dense{params,   grads, square_avgs, acc_deltas, {},          a.lr,  a.lr_tensor, a.rho,
                     a.eps,    0.0,   a.maximize,  a.grad_scale, a.found_inf, 0, false,       0};
  check_op_args(dense, expected_device);
  if (p.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) return;  // fake tensors: no memory to check
  check_written("param", p);
  check_written("square_avg", a.square_avg);
  check_written("acc_delta", a.acc_delta);
  check_written("row_step", a.row_step);
  // (A fake tensor, the fake kernel's, has no data to read: its storage's pointer is null.)
  if (a.rows.is_cpu() && a.rows.unsafeGetTensorImpl()->storage().data() != nullptr) {
    // Rows in range and strictly increasing (as coalesce() leaves them): each row is written by one thread,
    // and never outside param. One pass over the indices (16 Ki: ~10 us); on a GPU the kernel checks the
    // range itself (reading device memory here would sync), and distinct rows are the caller's promise.
    const int64_t* rows = a.rows.const_data_ptr<int64_t>();
    const int64_t n = a.rows.numel();
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK_INDEX(rows[i] >= 0 && rows[i] < p.size(0), "rows[", i, "] is ", rows[i],
                        ", outside param's ", p.size(0), " rows");
      TORCH_CHECK_VALUE(i == 0 || rows[i] > rows[i - 1], "rows must be strictly increasing (coalesced), but rows[",
                        i, "] = ", rows[i], " follows ", rows[i - 1]);
    }
  }
}

StepArgs make_sparse_step_args(const SparseOpArgs& a, std::vector<at::Tensor>& keep_alive) {
  const OpArgs dense{{}, {}, {}, {}, {}, a.lr, a.lr_tensor, a.rho, a.eps, 0.0, a.maximize, a.grad_scale,
                     a.found_inf, 0, false, 0};
  return make_step_args(dense, a.param.device(), keep_alive);
}

void bump_sparse_versions(const SparseOpArgs& a) {
  for (const at::Tensor* t : {&a.param, &a.square_avg, &a.acc_delta, &a.row_step}) {
    t->unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace adadelta_fused
