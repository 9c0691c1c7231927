// Host-side plumbing shared by the CPU and CUDA implementations of adadelta_fused::adadelta_: input
// checks, the dense-layout staging, the StepArgs built from the op's arguments, and the dispatch from
// runtime dtypes and flags to the compiled configuration.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <array>
#include <cstdint>
#include <deque>
#include <utility>
#include <vector>

#include "adadelta_math.h"
#include "multi_tensor.h"

namespace adadelta_fused {

struct OpArgs {
  at::TensorList params;
  at::TensorList grads;
  at::TensorList square_avgs;
  at::TensorList acc_deltas;
  at::TensorList master_params;
  double lr;
  const c10::optional<at::Tensor>& lr_tensor;
  double rho;
  double eps;
  double weight_decay;
  bool maximize;
  const c10::optional<at::Tensor>& grad_scale;
  const c10::optional<at::Tensor>& found_inf;
  int64_t grad_mode;
  bool stochastic_rounding;
  int64_t rounding_key;
  // The quantized op's (adadelta_fused::quantized_adadelta_): square_avgs and acc_deltas then hold uint8 codes,
  // and these one fp32 scale per block of each (quantized_state.h). Empty for the dense op.
  bool quantized = false;
  at::TensorList square_avg_scales = {};
  at::TensorList acc_delta_scales = {};
};

// The op's one validator: raises a clear error naming the argument and its value before any memory is
// touched. Every backend runs it (the Triton and reference backends and the fake kernel through
// _C.check_op_args), so every backend fails with the same words. The quantized op shares it (its
// scales are checked here too).
void check_op_args(const OpArgs& args, c10::DeviceType expected_device);

// The step counters functional.adadelta_ advances after the update, checked before the update runs:
// 1-element fp32 or fp64 tensors (torch's _get_scalar_dtype), so a bad counter never half-applies a step.
// Returns whether all of them are on the CPU (one C++ loop instead of a Python one per step).
bool check_state_steps(at::TensorList steps);

// After a step: every tensor in a list the schema marks mutable gets a new version, as torch's in-place
// ops give theirs, so a graph saved before the step refuses to backpropagate through the new values.
void bump_versions(const OpArgs& args);

// A step skipped by GradScaler (found_inf set) still zeroes the gradients in the "zero" mode: the next
// backward must not add to the inf/NaN it found.
bool zeroes_grads_when_skipped(const OpArgs& args);

// The staging policy, the only one: the tensors a kernel writes through raw pointers must be dense, in
// the param's layout. Tensors that are not (a strided view, a grad whose strides differ from its
// param's) are staged in a dense copy and written back by finish(). The Triton backend stages through
// this class too (_C.stage_dense).
class DenseGroup {
 public:
  explicit DenseGroup(const OpArgs& args);
  // The kernels' view of the rows (reads data pointers, so never called on fake tensors).
  TensorListPointers pointers();
  int64_t size() const { return int64_t(rows_.size()); }
  // The dense tensors, row by row: param, grad, square_avg, acc_delta, master (null without one). Each is
  // the caller's tensor or its staged copy: pointers, not copies, since a Tensor copy is an atomic
  // increment and its destruction another (10 a row: 0.1 us a param at 4096 params).
  using Row = std::array<const at::Tensor*, 5>;
  const std::vector<Row>& rows() const { return rows_; }
  // (caller's tensor, dense copy) for every staged tensor; the caller's is undefined for read-only ones.
  const std::deque<std::pair<at::Tensor, at::Tensor>>& staged() const { return staged_; }
  void finish();  // copies staged results back into the caller's tensors

 private:
  const at::Tensor* add(const at::Tensor& tensor, const at::Tensor& layout, bool written);
  std::vector<Row> rows_;
  // A deque: rows point into it, and it never moves what it holds as it grows.
  std::deque<std::pair<at::Tensor, at::Tensor>> staged_;
  std::deque<at::Tensor> layouts_;  // contiguous copies of params that are not dense themselves
  std::vector<void*> param_, grad_, square_avg_, acc_delta_;
  std::vector<float*> master_, square_avg_scale_, acc_delta_scale_;
  at::TensorList square_avg_scales_, acc_delta_scales_;  // (contiguous: the validator refuses others)
  std::vector<int64_t> numel_;
  bool has_master_;
  bool grad_written_;  // read-only grads keep a copy-on-write storage shared (const data pointers)
};

// StepArgs whose lr/grad_scale/found_inf pointers address memory on `device` (a CPU lr tensor is read on
// the host instead). `keep_alive` holds any converted tensor (an fp64 copy of a device lr) until the op
// returns: on a GPU the kernels are queued by then, and stream order protects the memory after that.
StepArgs make_step_args(const OpArgs& args, const c10::Device& device, std::vector<at::Tensor>& keep_alive);

// Calls fn.template operator()<ParamT, StateT, kGradMode, kHasMaster>() for the group's configuration.
template <typename Fn>
void dispatch_config(at::ScalarType param, at::ScalarType state, int64_t grad_mode, bool has_master, Fn&& fn);

// ---- implementation of the dispatch (a template, so it is instantiated in each kernel's file) ----

template <typename ParamT, typename StateT, bool kHasMaster, typename Fn>
void dispatch_grad_mode(int64_t grad_mode, Fn& fn) {
  switch (static_cast<GradMode>(grad_mode)) {
    case GradMode::kKeep:
      return fn.template operator()<ParamT, StateT, GradMode::kKeep, kHasMaster>();
    case GradMode::kUnscale:
      return fn.template operator()<ParamT, StateT, GradMode::kUnscale, kHasMaster>();
    case GradMode::kZero:
      return fn.template operator()<ParamT, StateT, GradMode::kZero, kHasMaster>();
  }
  TORCH_CHECK_VALUE(false, "Invalid grad_mode: ", grad_mode, " (expected 0 keep, 1 unscale or 2 zero)");
}

template <typename ParamT, typename StateT, typename Fn>
void dispatch_master(int64_t grad_mode, bool has_master, Fn& fn) {
  if constexpr (std::is_same_v<ParamT, bfloat16_bits> || std::is_same_v<ParamT, float16_bits>) {
    if (has_master) return dispatch_grad_mode<ParamT, StateT, true>(grad_mode, fn);
  }
  dispatch_grad_mode<ParamT, StateT, false>(grad_mode, fn);
}

template <typename Fn>
void dispatch_config(at::ScalarType param, at::ScalarType state, int64_t grad_mode, bool has_master, Fn&& fn) {
  using ST = at::ScalarType;
  // The supported (param, state) pairs: contract.STATE_DTYPES.
  if (param == ST::Float && state == ST::Float) return dispatch_master<float, float>(grad_mode, has_master, fn);
  if (param == ST::Float && state == ST::BFloat16)
    return dispatch_master<float, bfloat16_bits>(grad_mode, has_master, fn);
  if (param == ST::Double && state == ST::Double) return dispatch_master<double, double>(grad_mode, has_master, fn);
  if (param == ST::BFloat16 && state == ST::BFloat16)
    return dispatch_master<bfloat16_bits, bfloat16_bits>(grad_mode, has_master, fn);
  if (param == ST::BFloat16 && state == ST::Float)
    return dispatch_master<bfloat16_bits, float>(grad_mode, has_master, fn);
  if (param == ST::Half && state == ST::Half) return dispatch_master<float16_bits, float16_bits>(grad_mode, has_master, fn);
  if (param == ST::Half && state == ST::Float) return dispatch_master<float16_bits, float>(grad_mode, has_master, fn);
  if (param == ST::Half && state == ST::BFloat16)
    return dispatch_master<float16_bits, bfloat16_bits>(grad_mode, has_master, fn);
  TORCH_CHECK_TYPE(false, "square_avgs[0] has dtype ", state, ", unsupported with ", param, " params");
}

}  // namespace adadelta_fused
