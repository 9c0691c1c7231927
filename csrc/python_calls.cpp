// The per-step calls of the optimizer's eager path, from Python lists straight to the ops' unboxed
// signatures. Calling torch.ops.adadelta_fused.adadelta_ from Python boxes every tensor of every list into
// an IValue and back: 1.3 us a param for the step's four lists (4096 params of 16 elements, one thread),
// more than the validator and the kernel together. Here each list item is borrowed (BorrowedTensors) and the
// op is called through the dispatcher's typed handle, so the dispatcher still routes the call (CPU, CUDA,
// a Python dispatch mode, the profiler). Python's __torch_function__ is what this skips: the callers use
// these only when no torch function mode is active (adadelta_fused/backends/cpp.py).
#include "python_calls.h"
#include "tensor_fields.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/python_variable.h>

#include <vector>

namespace adadelta_fused {
namespace {

namespace py = pybind11;

// A list's tensors as a TensorList that borrows the Python objects' references. An owning copy would cost
// two refcount changes per tensor, and a TensorImpl with a Python object also increments that object when it
// gains a C++ owner, then takes the GIL to decrement it (c10::TensorImpl::incref_pyobject, decref_pyobject).
// The borrows are safe while the Python lists are alive and unchanged, which the callers' private lists are for
// the whole call.
class BorrowedTensors {
 public:
  BorrowedTensors() = default;
  BorrowedTensors(const BorrowedTensors&) = delete;
  BorrowedTensors& operator=(const BorrowedTensors&) = delete;
  ~BorrowedTensors() {
    for (at::Tensor& t : tensors_) c10::MaybeOwnedTraits<at::Tensor>::destroyBorrow(t);
  }

  // False when an item is not a plain tensor or Parameter: a subclass may override __torch_function__,
  // which only torch.ops' Python path honours, so the caller takes that path instead.
  bool borrow(const py::handle list) {
    if (!PyList_Check(list.ptr())) return false;
    const Py_ssize_t n = PyList_GET_SIZE(list.ptr());
    tensors_.reserve(size_t(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* item = PyList_GET_ITEM(list.ptr(), i);
      if (!THPVariable_CheckExact(item)) return false;
      tensors_.push_back(c10::MaybeOwnedTraits<at::Tensor>::createBorrow(THPVariable_Unpack(item)));
    }
    return true;
  }

  at::TensorList list() const { return tensors_; }

 private:
  std::vector<at::Tensor> tensors_;
};

using StepSignature = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList, double,
                           const c10::optional<at::Tensor>&, double, double, double, bool,
                           const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, int64_t, bool,
                           int64_t);

// Returns false, having done nothing, when a list holds anything but plain tensors (see borrow).
bool step(const py::list& params, const py::list& grads, const py::list& square_avgs, const py::list& acc_deltas,
          const py::list& master_params, double lr, const c10::optional<at::Tensor>& lr_tensor, double rho,
          double eps, double weight_decay, bool maximize, const c10::optional<at::Tensor>& grad_scale,
          const c10::optional<at::Tensor>& found_inf, int64_t grad_mode, bool stochastic_rounding,
          int64_t rounding_key) {
  // Looked up on the first call: the schema is declared by adadelta_fused/ops.py at import.
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("adadelta_fused::adadelta_", "").typed<StepSignature>();
  BorrowedTensors p, g, sq, acc, master;
  if (!p.borrow(params) || !g.borrow(grads) || !sq.borrow(square_avgs) || !acc.borrow(acc_deltas) ||
      !master.borrow(master_params)) {
    return false;
  }
  py::gil_scoped_release no_gil;  // as torch.ops releases it: a CUDA launch or a large CPU step may block
  op.call(p.list(), g.list(), sq.list(), acc.list(), master.list(), lr, lr_tensor, rho, eps, weight_decay, maximize,
          grad_scale, found_inf, grad_mode, stochastic_rounding, rounding_key);
  return true;
}

using QuantizedStepSignature = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                                    at::TensorList, at::TensorList, double, const c10::optional<at::Tensor>&, double,
                                    double, double, bool, const c10::optional<at::Tensor>&,
                                    const c10::optional<at::Tensor>&, int64_t, bool, int64_t);

// adadelta_fused::quantized_adadelta_ likewise: its seven lists boxed cost about 0.5 us a param (1024 params
// of 256 elements, one thread), as much as the cached step's other host work.
bool quantized_step(const py::list& params, const py::list& grads, const py::list& square_avgs,
                    const py::list& acc_deltas, const py::list& master_params, const py::list& square_avg_scales,
                    const py::list& acc_delta_scales, double lr, const c10::optional<at::Tensor>& lr_tensor,
                    double rho, double eps, double weight_decay, bool maximize,
                    const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                    int64_t grad_mode, bool stochastic_rounding, int64_t rounding_key) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("adadelta_fused::quantized_adadelta_", "")
                             .typed<QuantizedStepSignature>();
  BorrowedTensors p, g, sq, acc, master, sq_scales, acc_scales;
  if (!p.borrow(params) || !g.borrow(grads) || !sq.borrow(square_avgs) || !acc.borrow(acc_deltas) ||
      !master.borrow(master_params) || !sq_scales.borrow(square_avg_scales) ||
      !acc_scales.borrow(acc_delta_scales)) {
    return false;
  }
  py::gil_scoped_release no_gil;
  op.call(p.list(), g.list(), sq.list(), acc.list(), master.list(), sq_scales.list(), acc_scales.list(), lr,
          lr_tensor, rho, eps, weight_decay, maximize, grad_scale, found_inf, grad_mode, stochastic_rounding,
          rounding_key);
  return true;
}

bool advance_steps(const py::list& steps, const c10::optional<at::Tensor>& found_inf) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("adadelta_fused::advance_steps_", "")
                             .typed<void(at::TensorList, const c10::optional<at::Tensor>&)>();
  BorrowedTensors counters;
  if (!counters.borrow(steps)) return false;
  op.call(counters.list(), found_inf);
  return true;
}

// Whether 8-bit `codes` are still laid out as their dense `param` is walked: its shape, and its strides in
// every dim of more than one element (quantized.laid_out_like; `model.to(channels_last)` restrides only the
// size-1 dims of a 1x1 or depthwise conv weight, which moves nothing).
bool same_walk(const at::Tensor& codes, const at::Tensor& param) {
  if (codes.sizes() != param.sizes() || !param.is_non_overlapping_and_dense()) return false;
  for (int64_t d = 0; d < param.dim(); ++d) {
    if (param.size(d) > 1 && codes.stride(d) != param.stride(d)) return false;
  }
  return true;
}

// Whether a tensor held in a param's state is still what the cache was built with, as far as the plan
// depends on it (a `.data =` assignment can change any of these in place, as state-offload tools do): the
// step counter one fp32/fp64 element, on the CPU where the plan advances CPU counters; an accumulator
// `state`'s dtype and device (planning casts a changed one back), and where `laid_out_as` is given (8-bit
// codes, whose blocks are runs of the param's layout: planning re-encodes them after a change) laid out as
// that param is walked (same_walk); a master copy or an 8-bit accumulator's scales fp32 on the device.
bool still_fits(Py_ssize_t key, PyObject* held, const at::Tensor& state, bool steps_on_cpu,
                const at::Tensor* laid_out_as) {
  if (!THPVariable_Check(held)) return false;
  const at::Tensor& t = THPVariable_Unpack(held);
  if (t.layout() != at::kStrided) return false;
  switch (key) {
    case 0:
      return t.numel() == 1 && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble) &&
             (!steps_on_cpu || t.is_cpu());
    case 1:
    case 2:
      return t.scalar_type() == state.scalar_type() && t.device() == state.device() &&
             (laid_out_as == nullptr || same_walk(t, *laid_out_as));
    default:
      return t.scalar_type() == at::kFloat && t.device() == state.device();
  }
}

// The optimizer's per-step test of a cached group (adadelta_fused/step_cache.py), in one pass: the grads of
// `params`, or None when the cache no longer describes the group. That is when a param has no grad (or a
// sparse one, or one with torch's lazy negation bit: the planner's cases), when a param's dtype or device is
// no longer `like`'s (model.to), when `codes_follow_params` (8-bit state) and a param's codes are no longer
// laid out as it is walked (`p.data = p.data.view(...)`, a new memory format), or when a param's state dict no
// longer holds the cached tensors under `keys` ("step", "square_avg", "acc_delta", "master_param", and for
// 8-bit state "square_avg_scale" and "acc_delta_scale"; `cached` holds len(keys) objects per param, None for
// an absent key) or one of them changed in place (still_fits; `state_like` has the accumulators' dtype).
// About 60 ns a param, against 0.35 us for the same loop in Python.
py::object cached_grads(const py::list& params, const py::list& states, const py::tuple& keys,
                        const py::list& cached, const at::Tensor& like, const at::Tensor& state_like,
                        bool steps_on_cpu, bool codes_follow_params) {
  const Py_ssize_t n = PyList_GET_SIZE(params.ptr());
  const Py_ssize_t k = PyTuple_GET_SIZE(keys.ptr());
  TORCH_CHECK_VALUE((k == 4 || k == 6) && PyList_GET_SIZE(states.ptr()) == n &&
                        PyList_GET_SIZE(cached.ptr()) == n * k,
                    "cached_grads: keys must name step, square_avg, acc_delta and master_param (and the two "
                    "scales of 8-bit state), and states and cached hold one dict and len(keys) objects per param");
  const at::ScalarType dtype = like.scalar_type();
  const c10::Device device = like.device();
  py::list grads(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PyList_GET_ITEM(params.ptr(), i);
    if (!THPVariable_Check(item)) return py::none();
    const at::Tensor& param = THPVariable_Unpack(item);
    if (param.scalar_type() != dtype || param.device() != device) return py::none();
    const at::Tensor* grad = grad_of(param.unsafeGetTensorImpl());
    if (grad == nullptr || grad->layout() != at::kStrided || grad->is_neg()) return py::none();
    // A grad of another dtype (param.grad_dtype) is stepped by torch's Adadelta, which a plan does not describe.
    if (grad->scalar_type() != dtype || grad->device() != device) return py::none();
    PyObject* state = PyList_GET_ITEM(states.ptr(), i);
    if (!PyDict_Check(state)) return py::none();
    const at::Tensor* laid_out_as = codes_follow_params ? &param : nullptr;
    for (Py_ssize_t j = 0; j < k; ++j) {
      // Borrowed; NULL without an error set: absent. PyDict_GetItem would also save and restore the error
      // state around every lookup (about a tenth of this function's instructions, 4 lookups a param).
      PyObject* held = PyDict_GetItemWithError(state, PyTuple_GET_ITEM(keys.ptr(), j));
      if (held == nullptr && PyErr_Occurred()) throw py::error_already_set();
      PyObject* want = PyList_GET_ITEM(cached.ptr(), i * k + j);
      if (held != (want == Py_None ? nullptr : want)) return py::none();
      if (held != nullptr && !still_fits(j, held, state_like, steps_on_cpu, laid_out_as)) return py::none();
    }
    PyList_SET_ITEM(grads.ptr(), i, THPVariable_Wrap(*grad));
  }
  return std::move(grads);
}

// Whether every argument is a list of plain tensors or Parameters, nothing else (no subclass, which may
// override __torch_function__, and no FakeTensor or DTensor): the Triton op's test that its body may run
// without torch.ops (adadelta_fused/_extension.py, runs_unseen). About 5 ns a tensor.
bool plain_tensor_lists(const py::args& lists) {
  for (const py::handle list : lists) {
    if (!PyList_Check(list.ptr())) return false;
    const Py_ssize_t n = PyList_GET_SIZE(list.ptr());
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!THPVariable_CheckExact(PyList_GET_ITEM(list.ptr(), i))) return false;
    }
  }
  return true;
}

// Whether two lists hold the same objects in the same order: the step cache's test that a group's params
// are the ones it was built for, without a Python loop (15 ns a param).
bool same_objects(const py::list& a, const py::list& b) {
  const Py_ssize_t n = PyList_GET_SIZE(a.ptr());
  if (PyList_GET_SIZE(b.ptr()) != n) return false;  // the caller checks too; this keeps a direct call in bounds
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (PyList_GET_ITEM(a.ptr(), i) != PyList_GET_ITEM(b.ptr(), i)) return false;
  }
  return true;
}

}  // namespace

void register_python_calls(py::module_& m) {
  m.def("plain_tensor_lists", &plain_tensor_lists, "whether every argument is a list of plain tensors");
  m.def("same_objects", &same_objects, "whether two lists hold the same objects in the same order");
  m.def("step", &step, "adadelta_fused::adadelta_ on lists of plain tensors without torch.ops' boxing (false: not run)");
  m.def("quantized_step", &quantized_step,
        "adadelta_fused::quantized_adadelta_ likewise (false: not run)");
  m.def("advance_steps", &advance_steps, "adadelta_fused::advance_steps_ likewise (false: not run)");
  m.def("cached_grads", &cached_grads, "a cached group's grads, or None when the cache is stale");
}

}  // namespace adadelta_fused
