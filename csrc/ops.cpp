// The op schema, declared once; the CPU and CUDA files register kernels for it.
#include <torch/library.h>
#include <torch/extension.h>

#include <string>
#include <vector>

namespace adadelta_fused {
// cpu/adadelta_cpu.cpp: the SIMD level the CPU kernel runs, chosen from the CPU at load time.
std::string cpu_isa();
void select_cpu_isa(const std::string& name);
std::vector<std::string> supported_cpu_isas();
}  // namespace adadelta_fused

TORCH_LIBRARY(adadelta_fused, m) {
  // Every list is mutable with its own alias set: params, square_avgs, acc_deltas and master_params are
  // always written, grads in the "unscale" and "zero" modes. Nothing is returned.
  m.def(
      "adadelta_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, Tensor(d!)[] acc_deltas, "
      "Tensor(e!)[] master_params, float lr, Tensor? lr_tensor, float rho, float eps, float weight_decay, "
      "bool maximize, Tensor? grad_scale, Tensor? found_inf, int grad_mode, bool stochastic_rounding, "
      "int rounding_key) -> ()");
}

namespace {
// A sparse gradient routes the call to a sparse dispatch key; answer there with torch's own message.
void reject_sparse(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList, double,
                   const c10::optional<at::Tensor>&, double, double, double, bool, const c10::optional<at::Tensor>&,
                   const c10::optional<at::Tensor>&, int64_t, bool, int64_t) {
  TORCH_CHECK(false, "Adadelta does not support sparse gradients");
}
}  // namespace

TORCH_LIBRARY_IMPL(adadelta_fused, SparseCPU, m) { m.impl("adadelta_", &reject_sparse); }
TORCH_LIBRARY_IMPL(adadelta_fused, SparseCUDA, m) { m.impl("adadelta_", &reject_sparse); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "adadelta_fused's compiled kernels; importing it registers torch.ops.adadelta_fused.adadelta_";
  m.def("compiled_with_cuda", [] {
#if defined(ADADELTA_FUSED_WITH_CUDA)
    return true;
#else
    return false;
#endif
  });
  m.def("cpu_isa", &adadelta_fused::cpu_isa);
  m.def("select_cpu_isa", &adadelta_fused::select_cpu_isa, "run a lower SIMD level (tests, benchmarks)");
  m.def("supported_cpu_isas", &adadelta_fused::supported_cpu_isas);
}
