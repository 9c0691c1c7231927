#include "op_host.h"

#include <ATen/ATen.h>

#include <cmath>

namespace adadelta_fused {
namespace {

bool state_dtype_supported(at::ScalarType param, at::ScalarType state) {
  using ST = at::ScalarType;
  switch (param) {
    case ST::Float:
      return state == ST::Float || state == ST::BFloat16;
    case ST::Double:
      return state == ST::Double;
    case ST::BFloat16:
      return state == ST::BFloat16 || state == ST::Float;
    case ST::Half:
      return state == ST::Half || state == ST::Float || state == ST::BFloat16;
    default:
      return false;
  }
}

void check_list_length(const char* name, at::TensorList list, size_t expected) {
  TORCH_CHECK_VALUE(list.size() == expected, name, " has ", list.size(), " tensors but params has ", expected);
}

void check_scalar_tensor(const char* name, const c10::optional<at::Tensor>& t, const c10::Device& device) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->numel() == 1, name, " must be a 1-element tensor, got ", t->numel(), " elements");
  TORCH_CHECK_VALUE(t->scalar_type() == at::kFloat, name, " must be float32, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->device() == device, name, " is on ", t->device(), " but the params are on ", device);
}

void check_companion(const char* name, size_t i, const at::Tensor& t, const at::Tensor& param,
                     at::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.sizes() == param.sizes(), name, "[", i, "] has shape ", t.sizes(), " but params[", i,
                    "] has ", param.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, "[", i, "] has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK_VALUE(t.device() == param.device(), name, "[", i, "] is on ", t.device(), " but params[", i,
                    "] is on ", param.device());
}

bool dense_like(const at::Tensor& t, const at::Tensor& layout) {
  return t.is_non_overlapping_and_dense() && t.strides() == layout.strides();
}

}  // namespace

void check_op_args(const OpArgs& a, c10::DeviceType expected_device) {
  const size_t n = a.params.size();
  check_list_length("grads", a.grads, n);
  check_list_length("square_avgs", a.square_avgs, n);
  check_list_length("acc_deltas", a.acc_deltas, n);
  const bool has_master = !a.master_params.empty();
  if (has_master) check_list_length("master_params", a.master_params, n);
  TORCH_CHECK_VALUE(a.lr_tensor.has_value() || std::isfinite(a.lr), "Invalid learning rate: ", a.lr,
                    " (must be a finite number)");
  if (a.lr_tensor.has_value()) {
    TORCH_CHECK_VALUE(a.lr_tensor->numel() == 1, "Tensor lr must be 1-element");
    TORCH_CHECK_VALUE(a.lr_tensor->is_floating_point(), "Invalid lr dtype: ", a.lr_tensor->scalar_type(),
                      " (expected a floating-point tensor)");
  }
  TORCH_CHECK_VALUE(a.grad_mode >= 0 && a.grad_mode <= 2, "Invalid grad_mode: ", a.grad_mode,
                    " (expected 0 keep, 1 unscale or 2 zero)");
  if (n == 0) return;

  const at::Tensor& first = a.params[0];
  const at::ScalarType dtype = first.scalar_type();
  const at::ScalarType state_dtype = a.square_avgs[0].scalar_type();
  const c10::Device device = first.device();
  TORCH_CHECK_VALUE(device.type() == expected_device, "params[0] is on ", device, ", which this kernel cannot run on");
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "params[0] has unsupported dtype ", dtype, "; expected float32, float64, bfloat16 or float16");
  TORCH_CHECK_TYPE(state_dtype_supported(dtype, state_dtype), "square_avgs[0] has dtype ", state_dtype,
                   ", unsupported with ", dtype, " params");
  const bool low_precision = dtype == at::kBFloat16 || dtype == at::kHalf;
  TORCH_CHECK_TYPE(!has_master || low_precision, "master_params are for bf16/fp16 params, got ", dtype, " params");
  TORCH_CHECK_VALUE(!(a.stochastic_rounding && has_master),
                    "stochastic_rounding applies to bf16 params without master_params, not both");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = a.params[i];
    TORCH_CHECK(!a.grads[i].is_sparse(), "Adadelta does not support sparse gradients");
    TORCH_CHECK_TYPE(p.scalar_type() == dtype, "params[", i, "] has dtype ", p.scalar_type(), " but params[0] has ",
                     dtype);
    TORCH_CHECK_VALUE(p.device() == device, "params[", i, "] is on ", p.device(), " but params[0] is on ", device);
    check_companion("grads", i, a.grads[i], p, dtype);
    check_companion("square_avgs", i, a.square_avgs[i], p, state_dtype);
    check_companion("acc_deltas", i, a.acc_deltas[i], p, state_dtype);
    if (has_master) check_companion("master_params", i, a.master_params[i], p, at::kFloat);
  }
  check_scalar_tensor("grad_scale", a.grad_scale, device);
  check_scalar_tensor("found_inf", a.found_inf, device);
  if (a.lr_tensor.has_value()) {
    const c10::Device lr_device = a.lr_tensor->device();
    TORCH_CHECK_VALUE(lr_device == device || lr_device.is_cpu(), "lr is on ", lr_device, " but the params are on ",
                      device);
  }
}

DenseGroup::DenseGroup(const OpArgs& a) : has_master_(!a.master_params.empty()) {
  const size_t n = a.params.size();
  for (std::vector<void*>* list : {&param_, &grad_, &square_avg_, &acc_delta_}) list->reserve(n);
  numel_.reserve(n);
  const bool grad_written = a.grad_mode != int64_t(GradMode::kKeep);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = a.params[i];
    // A param that is itself not dense is staged contiguously; its companions then follow that layout.
    const at::Tensor layout = p.is_non_overlapping_and_dense() ? p : p.contiguous();
    add(p, layout, param_, true);
    add(a.grads[i], layout, grad_, grad_written);
    add(a.square_avgs[i], layout, square_avg_, true);
    add(a.acc_deltas[i], layout, acc_delta_, true);
    if (has_master_) {
      std::vector<void*> master_ptr;
      add(a.master_params[i], layout, master_ptr, true);
      master_.push_back(static_cast<float*>(master_ptr.front()));
    }
    numel_.push_back(p.numel());
  }
}

void DenseGroup::add(const at::Tensor& tensor, const at::Tensor& layout, std::vector<void*>& out, bool written) {
  if (dense_like(tensor, layout) && tensor.numel() > 0) {
    out.push_back(tensor.data_ptr());
    return;
  }
  if (tensor.numel() == 0) {
    out.push_back(nullptr);  // never dereferenced: empty tensors take no block
    return;
  }
  at::Tensor dense = at::empty_strided(layout.sizes(), layout.strides(), tensor.options());
  dense.copy_(tensor);
  out.push_back(dense.data_ptr());
  if (written) {
    staged_.emplace_back(tensor, dense);
  } else {
    staged_.emplace_back(at::Tensor(), dense);  // read-only: kept until finish(), after the launches
  }
}

TensorListPointers DenseGroup::pointers() const {
  return {param_.data(),     grad_.data(),
          square_avg_.data(), acc_delta_.data(),
          has_master_ ? master_.data() : nullptr, numel_.data(),
          int64_t(numel_.size())};
}

void DenseGroup::finish() {
  for (auto& [target, dense] : staged_) {
    if (target.defined()) target.copy_(dense);
  }
  staged_.clear();
}

StepArgs make_step_args(const OpArgs& a, const c10::Device& device, std::vector<at::Tensor>& keep_alive) {
  StepArgs s{};
  s.lr = a.lr;
  s.lr_ptr = nullptr;
  if (a.lr_tensor.has_value() && a.lr_tensor->is_cpu()) {
    s.lr = a.lr_tensor->item<double>();  // a host read: copying it to a GPU would sync with the host
  } else if (a.lr_tensor.has_value()) {
    // A device lr is read by the kernel, as fp64 like a Python-float lr: no host sync, graph-capturable.
    // The copy is freed when this returns, but the caching allocator hands its memory out again only
    // to work ordered after the kernels on this stream, so they read it intact.
    at::Tensor lr = a.lr_tensor->to(device, at::kDouble).reshape({});
    keep_alive.push_back(lr);
    s.lr_ptr = lr.const_data_ptr<double>();
  }
  s.rho = a.rho;
  s.eps = a.eps;
  s.weight_decay = a.weight_decay;
  s.grad_scale_ptr = a.grad_scale.has_value() ? a.grad_scale->const_data_ptr<float>() : nullptr;
  s.found_inf_ptr = a.found_inf.has_value() ? a.found_inf->const_data_ptr<float>() : nullptr;
  s.maximize = a.maximize;
  s.stochastic_rounding = a.stochastic_rounding;
  s.rounding_key = uint32_t(a.rounding_key);
  return s;
}

}  // namespace adadelta_fused
