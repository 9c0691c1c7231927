// The per-element Adadelta update, shared by the CPU and CUDA kernels.
// Mirrors adadelta_fused/reference.py (_update_one), which follows torch.optim.Adadelta's
// _single_tensor_adadelta operation by operation; the comments give the torch line each one mirrors.
#pragma once

#include <cstdint>

#include "dtypes.h"
#include "rounding.h"

namespace adadelta_fused {

// torch's CPU kernels for add(alpha=) and addcmul are compiled with contraction, so they compute
// fma(alpha, b, a) and fma(value * t1, t2, a); the update spells those out so that every executor rounds
// exactly as torch does (tests/test_cpu_kernel.py checks the bits). The rest is plain IEEE arithmetic.
ADF_HOST_DEVICE float fused_multiply_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return fmaf(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}
ADF_HOST_DEVICE double fused_multiply_add(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return fma(a, b, c);
#else
  return __builtin_fma(a, b, c);
#endif
}
ADF_HOST_DEVICE float square_root(float v) {
#if defined(__CUDA_ARCH__)
  return sqrtf(v);  // IEEE-rounded: the build never passes -use_fast_math
#else
  return __builtin_sqrtf(v);
#endif
}
ADF_HOST_DEVICE double square_root(double v) {
#if defined(__CUDA_ARCH__)
  return sqrt(v);
#else
  return __builtin_sqrt(v);
#endif
}

// A vector executor may take a square root on another unit than its others (cpu/float_lanes.h runs them on the FMA
// ports or on the divider, to balance the two against the rest of a kernel's work); a value on its own, on the
// CPU or a GPU, has one square root, and the unit never changes the bits.
template <bool kOnDivider, typename V>
ADF_HOST_DEVICE V square_root_on(V v) {
  return square_root(v);
}

// max(x, floor) that keeps a NaN x (a select, not fmaxf, which would return the floor).
template <typename V>
ADF_HOST_DEVICE V at_least(V x, V floor) {
  return x < floor ? floor : x;
}

// What the step does to the gradient buffer; the values are the op's grad_mode (contract.GradMode).
enum class GradMode : int { kKeep = 0, kUnscale = 1, kZero = 2 };

// The step's scalars as the host knows them. lr, grad_scale and found_inf may live in device memory;
// kernels read them through resolve_scalars, so the host never syncs (CUDA-graph safe).
struct StepArgs {
  double lr;
  const double* lr_ptr;          // when set, overrides lr
  double rho;
  double eps;
  double weight_decay;
  const float* grad_scale_ptr;   // optional: the gradient is divided by *grad_scale_ptr
  const float* found_inf_ptr;    // optional: nonzero means the whole step is skipped
  bool maximize;
  bool stochastic_rounding;
  uint32_t rounding_key;
};

// The scalars in math precision, cast exactly as torch casts its Python-float arguments. The update has
// no data-independent branches: GCC 12 cannot vectorize a select on a loop-invariant bool, so optional
// steps are exact no-ops (x / 1, x * 1) or selects keyed on a comparison or an integer mask. The one
// exception is the division by grad_scale, a template flag (adadelta_values' kScaled).
template <typename M>
struct StepScalars {
  M neg_lr;         // param.add_(delta, alpha=-lr)
  M rho;            // mul_(rho)
  M one_minus_rho;  // addcmul_(..., value=1 - rho), computed in double as Python does
  M eps;
  M weight_decay;
  M decays;         // 1 when torch adds the decay (it tests the double weight_decay != 0), else 0: a
                    // weight_decay below fp32's smallest subnormal still adds 0 * param, as torch does
  M grad_scale;     // 1 without a grad_scale: g / 1 == g exactly
  M grad_sign;      // -1 to maximize: -g == g * -1 exactly
  M rms_floor;      // sqrt(eps): the smallest root of 8-bit state (adadelta_values' kRmsState)
  uint32_t stochastic_mask;  // all ones: bf16 params round stochastically; zero: to nearest
  uint32_t rounding_key;
};

ADF_HOST_DEVICE bool step_skipped(const StepArgs& a) {
  return a.found_inf_ptr != nullptr && *a.found_inf_ptr != 0.0f;
}

template <typename M>
ADF_HOST_DEVICE StepScalars<M> resolve_scalars(const StepArgs& a) {
  StepScalars<M> s;
  const double lr = a.lr_ptr != nullptr ? *a.lr_ptr : a.lr;
  s.neg_lr = M(-lr);
  s.rho = M(a.rho);
  s.one_minus_rho = M(1.0 - a.rho);
  s.eps = M(a.eps);
  s.weight_decay = M(a.weight_decay);
  s.decays = a.weight_decay != 0.0 ? M(1) : M(0);
  s.grad_scale = a.grad_scale_ptr != nullptr ? M(*a.grad_scale_ptr) : M(1);
  s.grad_sign = a.maximize ? M(-1) : M(1);
  s.rms_floor = square_root(s.eps);
  s.stochastic_mask = a.stochastic_rounding ? 0xFFFFFFFFu : 0u;
  s.rounding_key = a.rounding_key;
  return s;
}

// The update's arithmetic on values in math precision: what a step makes of one element's grad, param and
// accumulators. V is M itself, or a vector of M lanes (the AVX-512 CPU kernel's cpu/float_lanes.h) whose
// operations round exactly as M's do, so both run these lines and give the same bits.
template <typename V>
struct UpdatedValues {
  V grad;        // the gradient divided by grad_scale (what GradMode::kUnscale writes back)
  V param;
  V square_avg;
  V acc_delta;
};

// kScaled: divide the gradient by grad_scale (s.grad_scale is 1 without one, so dividing is exact either
// way). On a CPU the update's divisions and square roots share one divider (with GCC's loop, two divisions and
// two roots per element: ~1.5 G elements/s per Zen 4 core), so the CPU kernel instantiates both and skips the
// division when no grad_scale is given; a GPU's arithmetic is far ahead of its bandwidth, and it always divides.
// kRootsOnDivider: where a vector executor takes acc_delta's root, or with kRmsState both roots (square_root_on;
// std's root of the dense update stays on the FMA ports).
//
// kRmsState: sq and acc come as 8-bit state's decoded roots R = sqrt(x + eps) (quantized_state.h), raised to
// at least sqrt(eps), and the new roots go back in their place. The update runs on x = R * R - eps; R of acc_delta
// is torch's acc_delta.add(eps).sqrt_() itself and the new R of square_avg is std, so an element takes two square
// roots where values would take four (two in the update, two to encode).
template <bool kScaled, bool kRootsOnDivider = false, bool kRmsState = false, typename V, typename M>
ADF_HOST_DEVICE UpdatedValues<V> adadelta_values(V g, V p, V sq, V acc, const StepScalars<M>& s) {
  if constexpr (kScaled) g = g / V(s.grad_scale);
  const V unscaled = g;
  g = g * V(s.grad_sign);                                            // grad = -grad (maximize)
  const V decayed = fused_multiply_add(V(s.weight_decay), p, g);     // grad.add(param, alpha=weight_decay)
  g = s.decays != M(0) ? V(decayed) : V(g);  // prvalues: between two lvalues GCC selects an address (spills)
  V acc_root = acc;
  if constexpr (kRmsState) {
    const V sq_root = at_least(sq, V(s.rms_floor));
    acc_root = at_least(acc, V(s.rms_floor));
    sq = fused_multiply_add(sq_root, sq_root, V(-s.eps));
    acc = fused_multiply_add(acc_root, acc_root, V(-s.eps));
  }
  sq = fused_multiply_add(V(s.one_minus_rho) * g, g, sq * V(s.rho));  // square_avg.mul_(rho).addcmul_(g, g, 1 - rho)
  const V std_dev = square_root_on<kRmsState && kRootsOnDivider>(sq + V(s.eps));  // square_avg.add(eps).sqrt_()
  V delta = acc_root;                                                // acc_delta.add(eps).sqrt_()
  if constexpr (!kRmsState) delta = square_root_on<kRootsOnDivider>(acc + V(s.eps));
  delta = delta / std_dev * g;                                       // delta.div_(std).mul_(grad)
  acc = fused_multiply_add(V(s.one_minus_rho) * delta, delta, acc * V(s.rho));  // acc_delta.mul_(rho).addcmul_(...)
  p = fused_multiply_add(V(s.neg_lr), delta, p);                     // param.add_(delta, alpha=-lr)
  if constexpr (kRmsState) return {unscaled, p, std_dev, square_root_on<kRootsOnDivider>(acc + V(s.eps))};
  return {unscaled, p, sq, acc};
}

// One element of one tensor. ParamT is the param and grad storage type, StateT the accumulators';
// `master` is read and written only when kHasMaster. `index` (the element's position in its tensor)
// and `tensor_key` (rounding_tensor_key) feed the stochastic-rounding noise of bf16 params. kRmsState: the
// accumulators are 8-bit state's decoded roots (adadelta_values), fp32 StateT.
template <typename ParamT, typename StateT, GradMode kGradMode, bool kHasMaster, bool kScaled = true,
          bool kRmsState = false>
struct AdadeltaElement {
  using M = math_t<ParamT>;

  ADF_HOST_DEVICE static void update(ParamT& param, ParamT& grad, StateT& square_avg, StateT& acc_delta,
                                     float& master, const StepScalars<M>& s, uint32_t tensor_key,
                                     int64_t index) {
    update_hoisted(param, grad, square_avg, acc_delta, master, s, rounding_noise_high(tensor_key, index),
                   uint32_t(uint64_t(index)));
  }

  // update() with the noise's first hash round (rounding_noise_high: the tensor key and the index's high
  // word) computed by the caller. The CPU kernel computes it once per chunk, which never straddles a
  // multiple of 2^32 elements: one hash round per element instead of two.
  ADF_HOST_DEVICE static void update_hoisted(ParamT& param, ParamT& grad, StateT& square_avg, StateT& acc_delta,
                                             float& master, const StepScalars<M>& s, uint32_t noise_high,
                                             uint32_t index_low) {
    M p;
    if constexpr (kHasMaster) {
      p = master;
    } else {
      p = to_math(param);
    }
    const UpdatedValues<M> u =
        adadelta_values<kScaled, false, kRmsState>(to_math(grad), p, to_math(square_avg), to_math(acc_delta), s);
    if constexpr (kGradMode == GradMode::kUnscale) store(grad, u.grad);
    store(square_avg, u.square_avg);
    store(acc_delta, u.acc_delta);
    if constexpr (kHasMaster) {
      master = u.param;
      store(param, u.param);
    } else if constexpr (is_bf16_v<ParamT>) {
      const uint32_t stochastic = bf16_round_stochastic(u.param, rounding_noise_low(noise_high, index_low));
      const uint32_t nearest = bf16_round_nearest(u.param);
      param = bfloat16_bits((stochastic & s.stochastic_mask) | (nearest & ~s.stochastic_mask));
    } else {
      store(param, u.param);
    }
    if constexpr (kGradMode == GradMode::kZero) store(grad, M(0));
  }
};

}  // namespace adadelta_fused
