// The row walk of a sparse-gradient step, shared by the CPU and CUDA kernels of
// adadelta_fused::sparse_adadelta_. Mirrors adadelta_fused/sparse_reference.py (sparse_adadelta_reference_):
// each listed row first takes the decays of the steps it missed, then the dense update (AdadeltaElement,
// adadelta_math.h, unchanged), in one pass. Only the loads and stores differ from the dense kernel; the
// math of a step is still adadelta_math.h's.
#pragma once

#include <cstdint>

#include "adadelta_math.h"

namespace adadelta_fused {

// A row idle for k <= kExactDecaySteps steps is decayed by k multiplies by rho, each rounded to the state's
// storage type, which is bit for bit what k dense steps with a zero gradient do (square_avg*rho + 0,
// acc_delta*rho + 0). Longer gaps take one multiply by rho^k (rho_power): one rounding instead of k, a
// relative difference against dense of about k/2 ulp at most (dense rounds k times). 64 covers the mean
// gap of the benchmark (16 Ki of 1 Mi rows a step: 64 steps); see bench/results/sparse_embedding.md
// for what the exact path costs there.
// Keep equal to sparse_reference.EXACT_DECAY_STEPS (tests/test_sparse_kernels.py compares them).
constexpr int64_t kExactDecaySteps = 64;

// rho^n in fp64 by binary powering, lowest bit first: only IEEE multiplies, so every executor (C++, CUDA,
// Triton, the torch reference) gets the same bits, which libm's pow would not promise.
ADF_HOST_DEVICE double rho_power(double rho, int64_t n) {
  double result = 1.0;
  double base = rho;
  while (n > 0) {
    if (n & 1) result = result * base;
    base = base * base;
    n >>= 1;
  }
  return result;
}

// How a row's accumulators catch up: `missed` steps, each a multiply by `rho` (exact path), or one
// multiply by `factor` = rho^missed (long gaps).
template <typename M>
struct RowDecay {
  int64_t missed;
  M rho;
  M factor;
};

// `target`: the step the accumulators must be current at; `last`: the row's step record. A record ahead of
// the target (never made by the optimizer) decays nothing.
template <typename M>
ADF_HOST_DEVICE RowDecay<M> row_decay(double rho, int64_t target, int64_t last) {
  RowDecay<M> d;
  d.missed = target > last ? target - last : 0;
  d.rho = M(rho);
  d.factor = d.missed > kExactDecaySteps ? M(rho_power(rho, d.missed)) : M(1);
  return d;
}

// The value `x` takes when stored as a StateT and loaded back: what a dense step leaves in memory.
template <typename StateT, typename M>
ADF_HOST_DEVICE M stored_value(M x) {
  StateT held;
  store(held, x);
  return to_math(held);
}

// One missed step of one accumulator: square_avg.mul_(rho).addcmul_(0, 0) == square_avg * rho, stored.
template <typename StateT, typename M>
ADF_HOST_DEVICE M decay_once(M x, M rho) {
  return stored_value<StateT>(x * rho);
}

// All missed steps of kLanes values of both accumulators (loaded from storage; stored as StateT by the
// caller). The lanes are the innermost loop and both accumulators share it, so that a CPU tile of 32
// elements runs the k multiplies as 8 independent AVX2 chains (a mul's 4-cycle latency hidden at 2 issues a
// cycle); a CUDA thread runs 1 lane.
template <typename StateT, int kLanes, typename M>
ADF_HOST_DEVICE void decay_lanes(M (&sq)[kLanes], M (&acc)[kLanes], const RowDecay<M>& d) {
  if (d.missed > kExactDecaySteps) {
    for (int l = 0; l < kLanes; ++l) {
      sq[l] = sq[l] * d.factor;
      acc[l] = acc[l] * d.factor;
    }
    return;
  }
  for (int64_t j = 0; j < d.missed; ++j) {
    for (int l = 0; l < kLanes; ++l) {
      sq[l] = decay_once<StateT>(sq[l], d.rho);
      acc[l] = decay_once<StateT>(acc[l], d.rho);
    }
  }
}

// Elements [0, count) of a listed row (count <= kLanes): catch up, then the dense update with the row's
// gradient (kUpdate), or only catch up (a state_dict, a dense step after sparse ones). Weight decay, master
// weights and stochastic rounding never reach here (the optimizer refuses them with sparse gradients):
// s.decays is 0, and the update is AdadeltaElement's keep-mode one, unchanged.
template <typename ParamT, typename StateT, bool kUpdate, bool kScaled, int kLanes>
struct SparseRowTile {
  using M = math_t<ParamT>;

  ADF_HOST_DEVICE static void update(ParamT* param, const ParamT* grad, StateT* square_avg, StateT* acc_delta,
                                     int count, const StepScalars<M>& s, const RowDecay<M>& d) {
    M sq[kLanes];
    M acc[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      sq[l] = l < count ? to_math(square_avg[l]) : M(0);
      acc[l] = l < count ? to_math(acc_delta[l]) : M(0);
    }
    decay_lanes<StateT>(sq, acc, d);
    for (int l = 0; l < count; ++l) {
      StateT sq_held;
      StateT acc_held;
      store(sq_held, sq[l]);
      store(acc_held, acc[l]);
      if constexpr (kUpdate) {
        ParamT g = grad[l];  // read only: the op never writes the gradient's values
        float no_master = 0.0f;
        AdadeltaElement<ParamT, StateT, GradMode::kKeep, false, kScaled>::update(param[l], g, sq_held, acc_held,
                                                                                 no_master, s, 0u, 0);
      }
      square_avg[l] = sq_held;
      acc_delta[l] = acc_held;
    }
  }
};

// The raw pointers of one call. The tensors are contiguous; param, square_avg and acc_delta hold
// num_rows rows of row_numel elements, values holds one row per entry of rows (null: catch up only).
template <typename ParamT, typename StateT>
struct SparseRows {
  ParamT* param;
  StateT* square_avg;
  StateT* acc_delta;
  int64_t* row_step;
  const int64_t* rows;
  const ParamT* values;
  int64_t listed;     // entries in rows
  int64_t row_numel;  // elements per row
  int64_t num_rows;   // rows of param
  int64_t step;       // the step the listed rows are brought to, and recorded at
};

// The step a listed row's accumulators must be current at before its update: the previous step when a
// gradient is applied (the update is this step's), this step when only catching up.
ADF_HOST_DEVICE int64_t catch_up_target(int64_t step, bool update) { return update ? step - 1 : step; }

}  // namespace adadelta_fused
