// The op schema, declared once; the CPU and CUDA files register kernels for it.
#include <torch/library.h>
#include <torch/extension.h>

#include "multi_tensor.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace adadelta_fused {
// cpu/adadelta_cpu.cpp: the SIMD level the CPU kernel runs, chosen from the CPU at load time.
std::string cpu_isa();
void select_cpu_isa(const std::string& name);
std::vector<std::string> supported_cpu_isas();
int64_t parallel_workers();
}  // namespace adadelta_fused

TORCH_LIBRARY(adadelta_fused, m) {
  // Every list is mutable with its own alias set: params, square_avgs, acc_deltas and master_params are
  // always written, grads in the "unscale" and "zero" modes. Nothing is returned.
  m.def(
      "adadelta_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] square_avgs, Tensor(d!)[] acc_deltas, "
      "Tensor(e!)[] master_params, float lr, Tensor? lr_tensor, float rho, float eps, float weight_decay, "
      "bool maximize, Tensor? grad_scale, Tensor? found_inf, int grad_mode, bool stochastic_rounding, "
      "int rounding_key) -> ()");
  // step += 1 for each param's counter, unless found_inf is nonzero (the step counters of the group).
  m.def("advance_steps_(Tensor(a!)[] state_steps, Tensor? found_inf) -> ()");
}

namespace {
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
  m.def("parallel_workers", &adadelta_fused::parallel_workers, "threads the CPU kernel's parallel loop runs on");
  m.def("plan_launches", &plan_launches, "the multi-tensor walk's launches for tensors of these sizes");
  m.attr("chunk_elements") = adadelta_fused::kChunkElements;
  m.attr("max_tensors_per_launch") = adadelta_fused::kMaxTensorsPerLaunch;
  m.attr("max_blocks_per_launch") = adadelta_fused::kMaxBlocksPerLaunch;
}
