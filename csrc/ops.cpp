// The Python face of the extension. The ops' schemas are declared once, in adadelta_fused/ops.py, when
// the package is imported; this file and the CPU and CUDA files register kernels for them, and expose
// the one validator and the one staging policy (op_host.h) to the backends written in Python.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/float_lanes.h"
#include "multi_tensor.h"
#include "op_host.h"
#include "python_calls.h"
#include "quantized_state.h"
#include "sparse_host.h"
#include "sparse_rows.h"
#include "tensor_fields.h"

#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace adadelta_fused {
// cpu/adadelta_cpu.cpp: the SIMD level the CPU kernel runs, chosen from the CPU at load time.
std::string cpu_isa();
void select_cpu_isa(const std::string& name);
std::vector<std::string> supported_cpu_isas();
int64_t parallel_workers();
int64_t stochastic_params_mismatches_at(int64_t first_index, int64_t n, bool fp32_state);
}  // namespace adadelta_fused

namespace {
using adadelta_fused::OpArgs;

// The launches pack_launches makes for tensors of these sizes, as (tensor index, chunk) per block: lets
// the tests check the walk's capacity limits with sizes alone, without allocating 2^27 elements.
std::vector<std::vector<std::pair<int64_t, int64_t>>> plan_launches(const std::vector<int64_t>& numels) {
  std::vector<void*> no_buffers(numels.size(), nullptr);
  const adadelta_fused::TensorListPointers tensors{no_buffers.data(), no_buffers.data(), no_buffers.data(),
                                                   no_buffers.data(), nullptr,           numels.data(),
                                                   int64_t(numels.size())};
  std::vector<std::vector<std::pair<int64_t, int64_t>>> plan;
  auto meta = std::make_unique<adadelta_fused::TensorListMeta>();
  adadelta_fused::pack_launches(tensors, *meta, [&](const adadelta_fused::TensorListMeta& m, int blocks) {
    auto& launch = plan.emplace_back();
    for (int block = 0; block < blocks; ++block) {
      const adadelta_fused::ChunkRange r = adadelta_fused::chunk_of_block(m, block);
      launch.emplace_back(m.tensor_index[r.slot], r.begin / adadelta_fused::kChunkElements);
    }
  });
  return plan;
}

// The op's arguments, checked for a kernel on `device_type` ("cpu", "cuda", "meta" for the fake kernel).
void check_op_args(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                   const std::vector<at::Tensor>& square_avgs, const std::vector<at::Tensor>& acc_deltas,
                   const std::vector<at::Tensor>& master_params, double lr, const c10::optional<at::Tensor>& lr_tensor,
                   double rho, double eps, double weight_decay, bool maximize,
                   const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                   int64_t grad_mode, bool stochastic_rounding, int64_t rounding_key, const std::string& device_type) {
  const OpArgs op{params, grads,      square_avgs, acc_deltas, master_params, lr,        lr_tensor,           rho,
                  eps,    weight_decay, maximize,  grad_scale, found_inf,     grad_mode, stochastic_rounding, rounding_key};
  adadelta_fused::check_op_args(op, c10::Device(device_type).type());
}

// The quantized op's arguments (adadelta_fused/quantized_ops.py), checked by the same validator.
void check_quantized_args(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                          const std::vector<at::Tensor>& square_avgs, const std::vector<at::Tensor>& acc_deltas,
                          const std::vector<at::Tensor>& master_params,
                          const std::vector<at::Tensor>& square_avg_scales,
                          const std::vector<at::Tensor>& acc_delta_scales, double lr,
                          const c10::optional<at::Tensor>& lr_tensor, double rho, double eps, double weight_decay,
                          bool maximize, const c10::optional<at::Tensor>& grad_scale,
                          const c10::optional<at::Tensor>& found_inf, int64_t grad_mode, bool stochastic_rounding,
                          int64_t rounding_key, const std::string& device_type) {
  const OpArgs op{params,    grads,     square_avgs,         acc_deltas,   master_params,     lr,
                  lr_tensor, rho,       eps,                 weight_decay, maximize,          grad_scale,
                  found_inf, grad_mode, stochastic_rounding, rounding_key, true,              square_avg_scales,
                  acc_delta_scales};
  adadelta_fused::check_op_args(op, c10::Device(device_type).type());
}

// The step counters' check for functional.adadelta_, which calls it on every step with one counter per
// param: the tensors are unpacked from the Python list directly, since pybind's std::vector<at::Tensor>
// caster costs about 0.7 us a tensor (4096 flat params: 2.9 ms a step, more than the update's bytes).
bool check_state_steps(const py::list& steps) {
  std::vector<at::Tensor> tensors;
  tensors.reserve(steps.size());
  for (const py::handle item : steps) {
    TORCH_CHECK_TYPE(THPVariable_Check(item.ptr()), "state_steps[", tensors.size(), "] is not a tensor");
    tensors.push_back(THPVariable_Unpack(item.ptr()));
  }
  return adadelta_fused::check_state_steps(tensors);
}

// The flat buffers' per-step check (adadelta_fused/flat.py). ``expected`` holds a row per param (FlatRow):
// its storage offset in ``buffer`` (and its grad's in ``grad_buffer``), the address of the TensorImpl of the
// grad view the optimizer gave it (kept alive by the optimizer, so no other tensor can take that address; its
// storage is compared too, since ``grad.data = x`` keeps the TensorImpl), and the addresses of the param's
// TensorImpl and AutogradMeta as the check last found them (0 before the first check), which it keeps.
enum class ViewStatus : uint8_t { kViews, kMoved, kMissing, kForeign };

enum FlatRow : int64_t { kOffset, kGradImpl, kParamImpl, kParamMeta, kFlatRowSize };

// `address`, which the caller just found equal to a live object's, as a value the compiler cannot replace by
// that object's: a load through it then waits only for the row it came from, not for the loads of the object
// it was compared with (the branch is predicted), so a param's six cache lines are fetched in parallel rather
// than as a chain (4096 params, one thread, inside the step: 31.6-32.4 -> 28.8-29.0 us;
// bench/results/flat-view-check-rows-20261205/).
template <typename T>
T* unrelated(T* address) {
  asm("" : "+r"(address));
  return address;
}

struct FlatViews {
  const c10::StorageImpl* storage;
  const c10::StorageImpl* grad_storage;
  int64_t* expected;
  bool frozen_have_none;  // zero_grad(set_to_none=True) ran since the last step

  bool views(const c10::TensorImpl* t, const c10::StorageImpl* s, const int64_t* row) const {
    // (the buffers' storages are not null, checked below: a tensor without storage fails the first compare)
    return adadelta_fused::storage_of(t) == s && t->storage_offset() == row[kOffset];
  }

  // `param` is the Python object's TensorImpl: every address dereferenced here was first found equal to the
  // one a live object holds.
  ViewStatus of(const c10::TensorImpl* param, int64_t index) const {
    int64_t* row = expected + kFlatRowSize * index;
    const auto* seen = reinterpret_cast<const c10::TensorImpl*>(row[kParamImpl]);
    if (param != seen) [[unlikely]] return learn(param, row);
    seen = unrelated(seen);
    const auto* seen_meta = reinterpret_cast<const c10::AutogradMetaInterface*>(row[kParamMeta]);
    if (seen->autograd_meta() != seen_meta) [[unlikely]] return learn(seen, row);
    return status(seen, adadelta_fused::autograd_meta_of(unrelated(seen_meta)), row);
  }

  // A param whose TensorImpl or AutogradMeta is not the one the row holds (the first check, swap_tensors):
  // checked through its own pointers, which the row then holds. (Each thread writes only its own params' rows;
  // `expected` is the FlatGroup's, which nothing else reads.)
  C10_NOINLINE ViewStatus learn(const c10::TensorImpl* param, int64_t* row) const {
    const c10::AutogradMetaInterface* meta = param->autograd_meta();
    row[kParamImpl] = reinterpret_cast<int64_t>(param);
    row[kParamMeta] = reinterpret_cast<int64_t>(meta);
    return status(param, adadelta_fused::autograd_meta_of(meta), row);
  }

  ViewStatus status(const c10::TensorImpl* param, const torch::autograd::AutogradMeta* meta,
                    const int64_t* row) const {
    if (!views(param, storage, row)) return ViewStatus::kMoved;
    const at::Tensor* grad = adadelta_fused::grad_of(meta);
    if (grad == nullptr) return ViewStatus::kMissing;
    const auto* grad_view = reinterpret_cast<const c10::TensorImpl*>(row[kGradImpl]);
    if (grad->unsafeGetTensorImpl() != grad_view || !views(unrelated(grad_view), grad_storage, row)) {
      return ViewStatus::kForeign;
    }
    // torch's zero_grad would have set this grad to None, and a param frozen since gets none from a later
    // backward: reported with the missing, whose caller tells a view still zero (frozen before the backward)
    // from one the backward filled (frozen after it).
    if (frozen_have_none && !meta->requires_grad_) return ViewStatus::kMissing;
    return ViewStatus::kViews;
  }
};

// Identity and offset compares only, over four objects per param that torch allocated one by one (the Python
// object, the param's TensorImpl and AutogradMeta, the grad's TensorImpl): where a step finds them evicted,
// their cache misses are the cost. With CPU buffers and more than one thread, the params are split across
// the threads, whose misses then overlap: 4096 params, this project's Xeon, flatten=True's host cost per
// param in the benchmark 0.089 -> 0.068 us on two threads (bench/results/flat-view-check-20261203/).
// Otherwise one pass on the caller's thread: a GPU step is host-bound, and a parallel region every step would
// compete with the host threads that feed the GPU (and torchrun's default is one thread a process).
constexpr int64_t kFlatCheckGrain = 1024;  // at::parallel_for splits a longer list, at most one share a thread

// Returns the first param that no longer views the buffer (-1: none), and before it the params whose grad
// is None (or, with `frozen_have_none`, is the param's zeroed view while it no longer requires grad) and
// those whose grad is another tensor (new from autograd, a DDP bucket view, sparse).
std::tuple<int64_t, std::vector<int64_t>, std::vector<int64_t>> flat_view_status(const py::list& params,
                                                                                const at::Tensor& buffer,
                                                                                const at::Tensor& grad_buffer,
                                                                                const at::Tensor& expected,
                                                                                bool frozen_have_none) {
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK(expected.scalar_type() == at::kLong && expected.is_cpu() && expected.is_contiguous() &&
                  expected.dim() == 2 && expected.size(0) == n && expected.size(1) == kFlatRowSize,
              "flat_view_status: expected must be a contiguous CPU int64 tensor of shape (", n, ", ", kFlatRowSize,
              ")");
  const FlatViews flat{adadelta_fused::storage_of(buffer.unsafeGetTensorImpl()),
                       adadelta_fused::storage_of(grad_buffer.unsafeGetTensorImpl()),
                       expected.mutable_data_ptr<int64_t>(), frozen_have_none};
  TORCH_CHECK(flat.storage != nullptr && flat.grad_storage != nullptr,
              "flat_view_status: buffer and grad_buffer must have storage");
  std::vector<int64_t> missing, foreign;
  const auto tally = [&](ViewStatus status, int64_t index) {
    if (status == ViewStatus::kMissing) missing.push_back(index);
    if (status == ViewStatus::kForeign) foreign.push_back(index);
    return status == ViewStatus::kMoved;
  };
  const auto not_a_tensor = [](int64_t index) {
    TORCH_CHECK_TYPE(false, "flat_view_status: params[", index, "] is not a tensor");
  };
  if (!buffer.is_cpu() || at::get_num_threads() == 1 || n <= kFlatCheckGrain) {
    int64_t index = 0;
    for (const py::handle item : params) {
      if (!THPVariable_Check(item.ptr())) not_a_tensor(index);
      if (tally(flat.of(THPVariable_Unpack(item.ptr()).unsafeGetTensorImpl(), index), index)) {
        return {index, missing, foreign};
      }
      ++index;
    }
    return {-1, missing, foreign};
  }
  // The TensorImpls up to the first item that is not a tensor, read holding the GIL (THPVariable_Check may
  // call into Python for a subclass); the threads then touch no Python object.
  std::vector<const c10::TensorImpl*> impls;
  impls.reserve(size_t(n));
  for (const py::handle item : params) {
    if (!THPVariable_Check(item.ptr())) break;
    impls.push_back(THPVariable_Unpack(item.ptr()).unsafeGetTensorImpl());
  }
  const int64_t tensors = int64_t(impls.size());
  std::vector<ViewStatus> statuses(impls.size());
  at::parallel_for(0, tensors, kFlatCheckGrain, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) statuses[size_t(index)] = flat.of(impls[size_t(index)], index);
  });
  for (int64_t index = 0; index < tensors; ++index) {
    if (tally(statuses[size_t(index)], index)) return {index, missing, foreign};
  }
  if (tensors < n) not_a_tensor(tensors);
  return {-1, missing, foreign};
}

// DenseGroup for a Python backend: (the dense rows, the (caller's tensor, dense copy) pairs to copy back
// after the launches, whether any tensor was copied). Rows hold param, grad, square_avg, acc_delta and,
// with master weights, the master.
std::tuple<std::vector<std::vector<at::Tensor>>, std::vector<std::pair<at::Tensor, at::Tensor>>, bool> stage_dense(
    const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
    const std::vector<at::Tensor>& square_avgs, const std::vector<at::Tensor>& acc_deltas,
    const std::vector<at::Tensor>& master_params, int64_t grad_mode) {
  const c10::optional<at::Tensor> none;
  const OpArgs op{params, grads, square_avgs, acc_deltas, master_params, 0.0, none, 0.0, 0.0, 0.0, false,
                  none,   none,  grad_mode,   false,      0};
  const adadelta_fused::DenseGroup group(op);
  std::vector<std::vector<at::Tensor>> rows;
  rows.reserve(group.rows().size());
  for (const auto& row : group.rows()) {
    std::vector<at::Tensor>& tensors = rows.emplace_back();
    for (size_t k = 0; k < (master_params.empty() ? 4 : 5); ++k) tensors.push_back(*row[k]);
  }
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;
  for (const auto& [target, dense] : group.staged()) {
    if (target.defined()) write_back.emplace_back(target, dense);
  }
  return {std::move(rows), std::move(write_back), !group.staged().empty()};
}

// The sparse op's validator (sparse_host.h) for the Triton op and the fake kernel: its arguments in schema
// order, then the device type of the kernel that will run.
void check_sparse_args(const at::Tensor& param, const at::Tensor& square_avg, const at::Tensor& acc_delta,
                       const at::Tensor& row_step, const at::Tensor& rows, const c10::optional<at::Tensor>& values,
                       double lr, const c10::optional<at::Tensor>& lr_tensor, double rho, double eps, bool maximize,
                       const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                       int64_t step, const std::string& device_type) {
  const adadelta_fused::SparseOpArgs op{param, square_avg, acc_delta, row_step, rows,      values,    lr,
                                        lr_tensor, rho,   eps,        maximize, grad_scale, found_inf, step};
  adadelta_fused::check_sparse_args(op, c10::Device(device_type).type());
}

// A sparse tensor routes the call to a sparse dispatch key; the validator names the argument and layout.
void reject_layout(at::TensorList params, at::TensorList grads, at::TensorList square_avgs, at::TensorList acc_deltas,
                   at::TensorList master_params, double lr, const c10::optional<at::Tensor>& lr_tensor, double rho,
                   double eps, double weight_decay, bool maximize, const c10::optional<at::Tensor>& grad_scale,
                   const c10::optional<at::Tensor>& found_inf, int64_t grad_mode, bool stochastic_rounding,
                   int64_t rounding_key) {
  const OpArgs op{params, grads,      square_avgs, acc_deltas, master_params, lr,        lr_tensor,           rho,
                  eps,    weight_decay, maximize,  grad_scale, found_inf,     grad_mode, stochastic_rounding, rounding_key};
  adadelta_fused::check_op_args(op, params.empty() ? c10::DeviceType::CPU : params[0].device().type());
  TORCH_CHECK(false, "adadelta_fused::adadelta_ got a tensor with a layout it has no kernel for");
}
}  // namespace

TORCH_LIBRARY_IMPL(adadelta_fused, SparseCPU, m) { m.impl("adadelta_", &reject_layout); }
TORCH_LIBRARY_IMPL(adadelta_fused, SparseCUDA, m) { m.impl("adadelta_", &reject_layout); }
TORCH_LIBRARY_IMPL(adadelta_fused, SparseCsrCPU, m) { m.impl("adadelta_", &reject_layout); }
TORCH_LIBRARY_IMPL(adadelta_fused, SparseCsrCUDA, m) { m.impl("adadelta_", &reject_layout); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "adadelta_fused's compiled kernels, validator and staging for the ops of adadelta_fused.ops";
  m.def("compiled_with_cuda", [] {
#if defined(ADADELTA_FUSED_WITH_CUDA)
    return true;
#else
    return false;
#endif
  });
  m.def("check_op_args", &check_op_args, "the op's validator (op_host.h), for backends written in Python");
  m.def("check_quantized_args", &check_quantized_args, "the quantized op's validator (op_host.h)");
  m.def("check_sparse_args", &check_sparse_args, "the sparse op's validator (sparse_host.h)");
  m.attr("quant_block") = adadelta_fused::kQuantBlock;
  m.attr("code_levels") = adadelta_fused::kCodeLevels;
  m.attr("min_scale_bits") = adadelta_fused::kMinScaleBits;
  m.attr("exact_decay_steps") = adadelta_fused::kExactDecaySteps;
  m.def("check_state_steps", &check_state_steps,
        "the step counters' validator, run before the update: whether all of them are CPU tensors");
  m.def("flat_view_status", &flat_view_status,
        "flat buffers: moved params, missing and foreign grads (writes the rows' remembered TensorImpls)");
  m.def("stage_dense", &stage_dense, "the op's staging of non-dense tensors (op_host.h DenseGroup)");
  m.def("cpu_isa", &adadelta_fused::cpu_isa);
  m.def("select_cpu_isa", &adadelta_fused::select_cpu_isa, "run a lower SIMD level (tests, benchmarks)");
  m.def("supported_cpu_isas", &adadelta_fused::supported_cpu_isas);
  m.def("parallel_workers", &adadelta_fused::parallel_workers, "threads the CPU kernel's parallel loop runs on");
  m.def("stochastic_params_mismatches_at", &adadelta_fused::stochastic_params_mismatches_at,
        "for tests: params a stochastic bf16 step far into a tensor rounds unlike the per-element update");
  m.def("float_lanes_supported", &adadelta_fused::float_lanes_supported, "whether the CPU has the AVX-512 lanes");
  m.def("float_lanes_are_exact", &adadelta_fused::float_lanes_are_exact,
        "whether the AVX-512 lanes' square root passed its check on this CPU (so the AVX-512 level runs them)");
  m.def("set_float_lanes", &adadelta_fused::set_float_lanes,
        "False: run GCC's loops at the AVX-512 level even where the lanes are exact (tests, benchmarks)");
  m.def("float_lanes_root_mismatches", &adadelta_fused::float_lanes_root_mismatches,
        "how many of `count` fp32 bit patterns from `first` the lanes' square root gets wrong (tests)");
  m.def("float_lanes_bf16_mismatches", &adadelta_fused::float_lanes_bf16_mismatches,
        "for tests: bf16 patterns the lanes' instruction or stochastic store rounds unlike the scalar store");
  m.def("plan_launches", &plan_launches, "the multi-tensor walk's launches for tensors of these sizes");
  adadelta_fused::register_python_calls(m);
  m.attr("chunk_elements") = adadelta_fused::kChunkElements;
  m.attr("max_tensors_per_launch") = adadelta_fused::kMaxTensorsPerLaunch;
  m.attr("max_blocks_per_launch") = adadelta_fused::kMaxBlocksPerLaunch;
}
