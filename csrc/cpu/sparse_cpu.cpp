// The CPU kernel of adadelta_fused::sparse_adadelta_: one pass over the listed rows, threaded over rows,
// each row caught up and updated in tiles of kTileLanes elements through the shared row tile (sparse_rows.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../op_host.h"
#include "../sparse_host.h"
#include "../sparse_rows.h"

namespace adadelta_fused {
namespace {

// 32 fp32 lanes are 4 AVX2 vectors per accumulator, 8 in all: enough independent multiplies to hide a
// mul's 4-cycle latency in the exact decay loop (2 per cycle issue), and 8 of the 16 ymm registers.
constexpr int kTileLanes = 32;

// Rows per parallel task: at least ~4 Ki elements, so a task's work (~2 us) dwarfs OpenMP's dispatch.
constexpr int64_t kTaskElements = 4096;

// The listed rows are scattered over the table, so each row's first lines are cache misses the hardware
// prefetcher cannot foresee: the loop asks for the lines of the row kPrefetchAhead entries ahead (param and
// both accumulators, up to kPrefetchBytes of each, and its step record), so that ~8 rows' misses are in
// flight per core instead of one.
constexpr int64_t kPrefetchAhead = 8;
constexpr int64_t kPrefetchBytes = 256;  // a 64-element fp32 row: 4 lines; longer rows stream after that

__attribute__((always_inline)) inline void prefetch_lines(const void* start, int64_t bytes) {
  const char* p = static_cast<const char*>(start);
  for (int64_t offset = 0; offset < std::min(bytes, kPrefetchBytes); offset += 64) __builtin_prefetch(p + offset, 1);
}

template <typename P, typename S, bool kUpdate, bool kScaled>
__attribute__((always_inline)) inline void update_rows(const SparseRows<P, S>& t, int64_t begin, int64_t end,
                                                       const StepScalars<math_t<P>>& scalars, double rho) {
  using M = math_t<P>;
  using Tile = SparseRowTile<P, S, kUpdate, kScaled, kTileLanes>;
  const StepScalars<M> s = scalars;  // a local copy: stores through the buffers cannot alias it
  const int64_t n = t.row_numel;
  const int64_t target = catch_up_target(t.step, kUpdate);
  for (int64_t i = begin; i < end; ++i) {
    if (i + kPrefetchAhead < end) {
      const int64_t ahead = t.rows[i + kPrefetchAhead];
      prefetch_lines(t.param + ahead * n, n * int64_t(sizeof(P)));
      prefetch_lines(t.square_avg + ahead * n, n * int64_t(sizeof(S)));
      prefetch_lines(t.acc_delta + ahead * n, n * int64_t(sizeof(S)));
      __builtin_prefetch(t.row_step + ahead, 1);
    }
    const int64_t r = t.rows[i];
    const RowDecay<M> d = row_decay<M>(rho, target, t.row_step[r]);
    P* param = t.param + r * n;
    S* square_avg = t.square_avg + r * n;
    S* acc_delta = t.acc_delta + r * n;
    const P* grad = kUpdate ? t.values + i * n : nullptr;
    int64_t e = 0;
    for (; e + kTileLanes <= n; e += kTileLanes) {
      Tile::update(param + e, kUpdate ? grad + e : nullptr, square_avg + e, acc_delta + e, kTileLanes, s, d);
    }
    if (e < n) {
      Tile::update(param + e, kUpdate ? grad + e : nullptr, square_avg + e, acc_delta + e, int(n - e), s, d);
    }
    t.row_step[r] = t.step;
  }
}

#if defined(__x86_64__)
template <typename P, typename S, bool kUpdate, bool kScaled>
__attribute__((target("avx2,fma,bmi2"))) void update_rows_avx2(const SparseRows<P, S>& t, int64_t begin, int64_t end,
                                                               const StepScalars<math_t<P>>& s, double rho) {
  update_rows<P, S, kUpdate, kScaled>(t, begin, end, s, rho);
}
#endif

template <typename P, typename S, bool kUpdate, bool kScaled>
void update_rows_baseline(const SparseRows<P, S>& t, int64_t begin, int64_t end, const StepScalars<math_t<P>>& s,
                          double rho) {
  update_rows<P, S, kUpdate, kScaled>(t, begin, end, s, rho);
}

bool has_avx2_fma() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

struct RunSparseCpu {
  const SparseOpArgs& op;
  const StepArgs& args;

  template <typename P, typename S, GradMode, bool>
  void operator()() const {
    const bool update = op.values.has_value();
    const bool scaled = args.grad_scale_ptr != nullptr;
    if (update && scaled) return run<P, S, true, true>();
    if (update) return run<P, S, true, false>();
    run<P, S, false, false>();
  }

  template <typename P, typename S, bool kUpdate, bool kScaled>
  void run() const {
    const SparseRows<P, S> t{static_cast<P*>(op.param.data_ptr()),
                             static_cast<S*>(op.square_avg.data_ptr()),
                             static_cast<S*>(op.acc_delta.data_ptr()),
                             op.row_step.data_ptr<int64_t>(),
                             op.rows.const_data_ptr<int64_t>(),
                             kUpdate ? static_cast<const P*>(op.values->const_data_ptr()) : nullptr,
                             op.rows.numel(),
                             op.param.size(0) == 0 ? 0 : op.param.numel() / op.param.size(0),
                             op.param.size(0),
                             op.step};
    const StepScalars<math_t<P>> scalars = resolve_scalars<math_t<P>>(args);
    auto rows_fn = &update_rows_baseline<P, S, kUpdate, kScaled>;
#if defined(__x86_64__)
    static const bool avx2 = has_avx2_fma();
    if (avx2) rows_fn = &update_rows_avx2<P, S, kUpdate, kScaled>;
#endif
    const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, t.row_numel));
    at::parallel_for(0, t.listed, grain, [&](int64_t begin, int64_t end) { rows_fn(t, begin, end, scalars, args.rho); });
  }
};

void sparse_adadelta_cpu(const at::Tensor& param, const at::Tensor& square_avg, const at::Tensor& acc_delta,
                         const at::Tensor& row_step, const at::Tensor& rows, const c10::optional<at::Tensor>& values,
                         double lr, const c10::optional<at::Tensor>& lr_tensor, double rho, double eps, bool maximize,
                         const c10::optional<at::Tensor>& grad_scale, const c10::optional<at::Tensor>& found_inf,
                         int64_t step) {
  const SparseOpArgs op{param, square_avg, acc_delta, row_step, rows, values, lr, lr_tensor, rho, eps, maximize,
                        grad_scale, found_inf, step};
  check_sparse_args(op, c10::DeviceType::CPU);
  std::vector<at::Tensor> keep_alive;
  const StepArgs args = make_sparse_step_args(op, keep_alive);
  if (rows.numel() > 0 && !step_skipped(args)) {  // GradScaler found inf/NaN: nothing changes
    dispatch_config(param.scalar_type(), square_avg.scalar_type(), 0, false, RunSparseCpu{op, args});
  }
  bump_sparse_versions(op);
}

}  // namespace
}  // namespace adadelta_fused

TORCH_LIBRARY_IMPL(adadelta_fused, CPU, m) { m.impl("sparse_adadelta_", &adadelta_fused::sparse_adadelta_cpu); }
