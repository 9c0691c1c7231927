// The CPU kernel of adadelta_fused::adadelta_: one pass over every element of the group, parallel over
// the group's chunks (not tensor by tensor), with the shared update vectorized per ISA chosen at run time.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "../adadelta_math.h"
#include "../multi_tensor.h"
#include "../op_host.h"

namespace adadelta_fused {
namespace {

enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

template <typename ParamT, typename StateT>
struct Chunk {
  ParamT* param;
  ParamT* grad;
  StateT* square_avg;
  StateT* acc_delta;
  float* master;
  int64_t begin;
  int64_t end;
  uint32_t tensor_key;
};

// The element loop. GCC vectorizes it once it is inlined into a function with a target ISA: the update
// is branch-free per element, and the flags it tests are loop-invariant (unswitched at -O3).
template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster, bool kScaled>
__attribute__((always_inline)) inline void update_chunk(const Chunk<ParamT, StateT>& c,
                                                        const StepScalars<math_t<ParamT>>& scalars) {
  using Element = AdadeltaElement<ParamT, StateT, kGradMode, kHasMaster, kScaled>;
  const StepScalars<math_t<ParamT>> s = scalars;  // a local copy: stores through the buffers cannot alias it
  ParamT* __restrict__ param = c.param;
  ParamT* __restrict__ grad = c.grad;
  StateT* __restrict__ square_avg = c.square_avg;
  StateT* __restrict__ acc_delta = c.acc_delta;
  float* __restrict__ master = c.master;
  // Two vectors per iteration give the divider and square-root unit independent work to overlap
  // (fp32 in cache, one Zen 4 core: 1.71 -> 1.84 G elements/s).
#pragma GCC ivdep
#pragma GCC unroll 2
  for (int64_t i = c.begin; i < c.end; ++i) {
    if constexpr (kHasMaster) {
      Element::update(param[i], grad[i], square_avg[i], acc_delta[i], master[i], s, c.tensor_key, i);
    } else {
      float unused = 0.0f;
      Element::update(param[i], grad[i], square_avg[i], acc_delta[i], unused, s, c.tensor_key, i);
    }
  }
}

#if defined(__x86_64__)
// AVX-512: 16 fp32 lanes; GCC prefers 256-bit vectors unless told, and this loop is not frequency-bound.
template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,bmi2,prefer-vector-width=512"))) void
update_chunk_avx512(const Chunk<P, S>& c, const StepScalars<math_t<P>>& s) {
  update_chunk<P, S, kMode, kMaster, kScaled>(c, s);
}

template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
__attribute__((target("avx2,fma,bmi2"))) void update_chunk_avx2(const Chunk<P, S>& c,
                                                                 const StepScalars<math_t<P>>& s) {
  update_chunk<P, S, kMode, kMaster, kScaled>(c, s);
}
#endif

template <typename P, typename S, GradMode kMode, bool kMaster, bool kScaled>
void update_chunk_baseline(const Chunk<P, S>& c, const StepScalars<math_t<P>>& s) {
  update_chunk<P, S, kMode, kMaster, kScaled>(c, s);
}

CpuIsa best_supported_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kBaseline;
}

std::atomic<int>& selected_isa() {
  static std::atomic<int> isa{int(best_supported_isa())};
  return isa;
}

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kBaseline:
      break;
  }
  return "baseline";
}

struct RunCpu {
  const TensorListPointers& tensors;
  const StepArgs& args;

  template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster>
  void operator()() const {
    if (args.grad_scale_ptr != nullptr) {
      run<ParamT, StateT, kGradMode, kHasMaster, true>();
    } else {
      run<ParamT, StateT, kGradMode, kHasMaster, false>();
    }
  }

  template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster, bool kScaled>
  void run() const {
    const StepScalars<math_t<ParamT>> scalars = resolve_scalars<math_t<ParamT>>(args);
    auto update = &update_chunk_baseline<ParamT, StateT, kGradMode, kHasMaster, kScaled>;
#if defined(__x86_64__)
    const auto isa = CpuIsa(selected_isa().load());
    if (isa == CpuIsa::kAvx512) update = &update_chunk_avx512<ParamT, StateT, kGradMode, kHasMaster, kScaled>;
    if (isa == CpuIsa::kAvx2) update = &update_chunk_avx2<ParamT, StateT, kGradMode, kHasMaster, kScaled>;
#endif

    // Pack the whole group first, then run every chunk of every launch in one parallel region, so 4096
    // small tensors keep both cores as busy as one large tensor does.
    std::vector<TensorListMeta> launches;
    std::vector<int64_t> first_block{0};
    TensorListMeta meta;
    pack_launches(tensors, meta, [&](const TensorListMeta& full, int blocks) {
      launches.push_back(full);
      first_block.push_back(first_block.back() + blocks);
    });
    at::parallel_for(0, first_block.back(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const auto launch = std::upper_bound(first_block.begin(), first_block.end(), block) - first_block.begin() - 1;
        const TensorListMeta& m = launches[launch];
        const ChunkRange r = chunk_of_block(m, int(block - first_block[launch]));
        const Chunk<ParamT, StateT> chunk{static_cast<ParamT*>(m.param[r.slot]),
                                          static_cast<ParamT*>(m.grad[r.slot]),
                                          static_cast<StateT*>(m.square_avg[r.slot]),
                                          static_cast<StateT*>(m.acc_delta[r.slot]),
                                          m.master[r.slot],
                                          r.begin,
                                          r.end,
                                          rounding_tensor_key(scalars.rounding_key, m.tensor_index[r.slot])};
        update(chunk, scalars);
      }
    });
  }
};

void adadelta_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs, at::TensorList acc_deltas,
                  at::TensorList master_params, double lr, const c10::optional<at::Tensor>& lr_tensor, double rho,
                  double eps, double weight_decay, bool maximize, const c10::optional<at::Tensor>& grad_scale,
                  const c10::optional<at::Tensor>& found_inf, int64_t grad_mode, bool stochastic_rounding,
                  int64_t rounding_key) {
  const OpArgs op{params,   grads,      square_avgs, acc_deltas, master_params, lr,        lr_tensor,           rho,
                  eps,      weight_decay, maximize,  grad_scale, found_inf,     grad_mode, stochastic_rounding, rounding_key};
  check_op_args(op, c10::DeviceType::CPU);
  if (params.empty()) return;
  std::vector<at::Tensor> keep_alive;
  const StepArgs args = make_step_args(op, params[0].device(), keep_alive);
  if (step_skipped(args)) {
    // GradScaler found inf/NaN: nothing changes, except that the "zero" mode still clears the grads.
    if (zeroes_grads_when_skipped(op)) {
      for (const at::Tensor& grad : grads) grad.zero_();
    }
  } else {
    DenseGroup group(op);
    const TensorListPointers tensors = group.pointers();
    dispatch_config(params[0].scalar_type(), square_avgs[0].scalar_type(), grad_mode, !master_params.empty(),
                    RunCpu{tensors, args});
    group.finish();
  }
  bump_versions(op);
}

}  // namespace

std::string cpu_isa() { return isa_name(CpuIsa(selected_isa().load())); }

// For tests and benchmarks: run a lower ISA than the best one (never a higher one than the CPU has).
void select_cpu_isa(const std::string& name) {
  const CpuIsa best = best_supported_isa();
  for (CpuIsa isa : {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (name == isa_name(isa)) {
      TORCH_CHECK_VALUE(int(isa) <= int(best), "cpu isa '", name, "' is not supported by this CPU (best: ",
                        isa_name(best), ")");
      selected_isa().store(int(isa));
      return;
    }
  }
  TORCH_CHECK_VALUE(false, "Invalid cpu isa: '", name, "' (expected baseline, avx2 or avx512)");
}

// How many threads at::parallel_for really runs in this extension. Its OpenMP pragma is compiled here,
// not in torch, so a build without -fopenmp silently runs every step on one thread.
int64_t parallel_workers() {
  std::vector<std::atomic<bool>> seen(size_t(at::get_num_threads()));
  at::parallel_for(0, int64_t(seen.size()) * 64, 1, [&](int64_t, int64_t) {
    seen.at(size_t(at::get_thread_num())).store(true);
  });
  return std::count_if(seen.begin(), seen.end(), [](const std::atomic<bool>& s) { return s.load(); });
}

std::vector<std::string> supported_cpu_isas() {
  std::vector<std::string> names;
  for (CpuIsa isa : {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if (int(isa) <= int(best_supported_isa())) names.push_back(isa_name(isa));
  }
  return names;
}

}  // namespace adadelta_fused

TORCH_LIBRARY_IMPL(adadelta_fused, CPU, m) { m.impl("adadelta_", &adadelta_fused::adadelta_cpu); }
