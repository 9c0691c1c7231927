"""The normative specification of one fused Adadelta step, in pure torch.

Every backend (C++ CPU, CUDA, Triton) implements exactly this contract and is tested against it; it is
also the last-resort backend. The contract, for each tensor index ``i`` of a group:

Inputs
    ``params[i]``        the parameter (fp32, fp64, bf16 or fp16).
    ``grads[i]``         its gradient, same dtype and shape.
    ``square_avgs[i]``,
    ``acc_deltas[i]``    the accumulators; dtype is the param's, or fp32, or bf16 (see ``state_dtype_ok``).
    ``master_params[i]`` optional fp32 copy of a bf16/fp16 param. When given, it is the value that is read
                         and updated, and the param receives its rounded copy.
    ``lr``               a float, or a 1-element tensor read at run time (no host sync on a GPU).
    ``grad_scale``       optional 1-element fp32 tensor: the gradient is divided by it first.
    ``found_inf``        optional 1-element fp32 tensor: when it is nonzero the step is skipped and nothing
                         is written, except that grad_mode "zero" still zeroes the gradients (the next
                         backward must not add to the inf/NaN that was found).
    ``grad_mode``        what happens to the gradient buffer: ``"keep"`` (untouched), ``"unscale"``
                         (overwritten with grad / grad_scale) or ``"zero"`` (zeroed in the same pass).
    ``stochastic_rounding``  bf16 params without a master copy are written with stochastic rounding, with
                         noise from ``rounding_noise(rounding_key, tensor_index, element_index)``; the
                         element index counts in the param's memory order (``walk_positions``).

Math (torch.optim.Adadelta's ``_single_tensor_adadelta``, in its operation order), in fp32, or in fp64
for fp64 params::

    g = grad / grad_scale                     (grad_scale given)
    grad <- g                                 (grad_mode "unscale")
    g = -g                                    (maximize)
    g = g + weight_decay * p                  (weight_decay != 0; p is the master copy when given)
    square_avg = square_avg * rho + (1 - rho) * g * g
    std = sqrt(square_avg + eps)
    delta = sqrt(acc_delta + eps) / std * g
    acc_delta = acc_delta * rho + (1 - rho) * delta * delta
    p = p + (-lr) * delta
    grad <- 0                                 (grad_mode "zero")

The step counters are not part of the kernel contract: ``adadelta_fused.functional`` advances them with
``step += 1 - found_inf``, which needs no host sync when they live on the device.
"""

from __future__ import annotations

import numpy
import torch

from .contract import GradMode, StepScalars
from .layout import is_dense

_MASK32 = 0xFFFFFFFF


def math_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """fp64 params are updated in fp64; every other dtype in fp32."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit integer finalizer shared by every backend (``mix32`` in csrc/rounding.h).

    ``x`` holds uint32 values in an int64 tensor; products are masked back to 32 bits.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def mix32(x: int) -> int:
    """Python-int twin of ``_mix32``, used on the host to derive per-step rounding keys."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def rounding_key(seed: int, step: int, stream: int = 0) -> int:
    """The 32-bit key of one step's rounding noise: reproducible from (seed, step, stream).

    ``stream`` tells apart the calls of one step that would otherwise draw the same noise: the optimizer
    gives each (param group, flat buffer) its own, since every call numbers its tensors from 0.
    """
    key = mix32(mix32(mix32(step) ^ (seed & _MASK32)) ^ ((seed >> 32) & _MASK32))
    return key if stream == 0 else mix32(key ^ mix32(stream & _MASK32))


def key_as_tensor_zero(key: int, tensor_index: int) -> int:
    """The key under which tensor 0 of a call draws the noise that tensor ``tensor_index`` draws under
    ``key``: a call of one param (``step_in_backward``) draws what the group's whole call would have."""
    return key ^ ((tensor_index * 0x9E3779B9) & _MASK32)


def rounding_noise(key: int, tensor_index: int, numel: int) -> torch.Tensor:
    """16 random bits per element (int64 tensor), a pure function of (key, tensor, element index): elements 2k and
    2k + 1 take the low and the high half of one hash of their pair."""
    per_tensor = mix32(key_as_tensor_zero(key, tensor_index))
    index = torch.arange(numel, dtype=torch.int64)
    high = _mix32(torch.full_like(index, per_tensor) ^ (index >> 32))
    # Elements 2k and 2k + 1 take the low and the high half of one hash (csrc/rounding.h rounding_pair_hash).
    pair_hash = _mix32(high ^ (index & (_MASK32 - 1)))
    return (pair_hash >> ((index & 1) * 16)) & 0xFFFF


def walk_positions(param: torch.Tensor) -> torch.Tensor:
    """Each element's position (in logical order) in the order the kernels walk the param.

    A dense param is walked as it lies in memory, so a channels_last param's positions are its memory
    offsets; any other param is stepped through a contiguous copy, in logical order.
    """
    positions = torch.arange(param.numel(), dtype=torch.int64)
    if not param.is_contiguous() and is_dense(param):
        positions = positions.as_strided(param.shape, param.stride()).reshape(-1)
    return positions


def round_to_bf16_stochastic(value: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16, rounding up with probability equal to the dropped fraction (unbiased).

    Adds 16 random bits below the kept mantissa and truncates. Non-finite values round to nearest.
    """
    bits = value.contiguous().view(torch.int32).to(torch.int64) & _MASK32
    rounded = ((bits + noise.view(value.shape).to(value.device)) & 0xFFFF0000).to(torch.int64)
    as_int32 = torch.where(rounded >= 2**31, rounded - 2**32, rounded).to(torch.int32)
    stochastic = as_int32.view(torch.float32).to(torch.bfloat16)
    return torch.where(torch.isfinite(value), stochastic, value.to(torch.bfloat16))


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded square root, as every kernel computes it (IEEE sqrt on CPU and GPU).

    torch's vectorized sqrt on CPU is off by one ulp for about 17% of fp32 and 1% of fp64 inputs. Rounding
    the fp64 root to fp32 is exact (fp64 carries more than 2 * 24 + 2 bits); for fp64 on CPU, numpy's
    sqrt is the IEEE one.
    """
    if x.dtype == torch.float32:
        return x.double().sqrt_().float()
    if x.is_cpu:
        return torch.from_numpy(numpy.sqrt(x.numpy()))
    return x.sqrt_()


def _resolve_lr(lr: float | torch.Tensor, dtype: torch.dtype, device: torch.device):
    if isinstance(lr, torch.Tensor):
        return lr.to(device=device, dtype=dtype).reshape(())
    return lr


def step_skipped(grads: list[torch.Tensor], scalars: StepScalars) -> bool:
    """Whether found_inf skips the step; a skipped step still zeroes the gradients in the "zero" mode."""
    if scalars.found_inf is None or not bool(scalars.found_inf.item() != 0):
        return False
    if scalars.grad_mode == GradMode.ZERO:
        for grad in grads:
            grad.zero_()
    return True


def adadelta_step_reference_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    square_avgs: list[torch.Tensor],
    acc_deltas: list[torch.Tensor],
    master_params: list[torch.Tensor] | None,
    scalars: StepScalars,
) -> None:
    """Apply one Adadelta step in place to a validated group of tensors (the contract above)."""
    if step_skipped(grads, scalars):
        return
    for index, (param, grad, square_avg, acc_delta) in enumerate(
        zip(params, grads, square_avgs, acc_deltas, strict=True)
    ):
        master = master_params[index] if master_params else None
        _update_one(index, param, grad, square_avg, acc_delta, master, scalars)


def _update_one(index, param, grad, square_avg, acc_delta, master, scalars: StepScalars,
                acc_root: torch.Tensor | None = None) -> None:
    """One tensor's update in place. ``acc_root``: 8-bit state's decoded R of acc_delta, which stands for
    sqrt(acc_delta + eps) and is taken as it is (quantized_reference)."""
    dtype = math_dtype(param.dtype)
    lr = _resolve_lr(scalars.lr, dtype, param.device)

    g = grad.to(dtype, copy=True)
    if scalars.grad_scale is not None:
        g.div_(scalars.grad_scale.to(device=g.device, dtype=dtype).reshape(()))
    if scalars.grad_mode == GradMode.UNSCALE:
        grad.copy_(g)
    if scalars.maximize:
        g = -g
    p = (master if master is not None else param).to(dtype, copy=True)
    if scalars.weight_decay != 0:
        g = g.add(p, alpha=scalars.weight_decay)

    sq = square_avg.to(dtype, copy=True)
    acc = acc_delta.to(dtype, copy=True)
    sq.mul_(scalars.rho).addcmul_(g, g, value=1 - scalars.rho)
    std = _sqrt(sq.add(scalars.eps))
    delta = _sqrt(acc.add(scalars.eps)) if acc_root is None else acc_root.to(dtype, copy=True)
    delta.div_(std).mul_(g)
    acc.mul_(scalars.rho).addcmul_(delta, delta, value=1 - scalars.rho)
    if isinstance(lr, torch.Tensor):
        p.addcmul_(delta, lr, value=-1)  # one rounding, as add_(alpha=-lr) computes fma(-lr, delta, p)
    else:
        p.add_(delta, alpha=-lr)

    square_avg.copy_(sq)
    acc_delta.copy_(acc)
    if master is not None:
        master.copy_(p)
        param.copy_(p)
    elif scalars.stochastic_rounding and param.dtype == torch.bfloat16:
        noise = rounding_noise(scalars.rounding_key, index, p.numel())[walk_positions(param)]
        param.copy_(round_to_bf16_stochastic(p, noise))
    else:
        param.copy_(p)
    if scalars.grad_mode == GradMode.ZERO:
        grad.zero_()
