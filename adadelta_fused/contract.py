"""The op contract shared by every backend: the step's scalars, the gradient modes, the dtype rules, and
the input checks that run before any memory is touched. ``reference.py`` holds the math."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch


class GradMode(enum.IntEnum):
    """What the step does to the gradient buffer (the int is the op's ``grad_mode`` argument)."""

    KEEP = 0
    UNSCALE = 1
    ZERO = 2

    @classmethod
    def parse(cls, value: "str | int | GradMode") -> "GradMode":
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and value in cls._value2member_map_:
            return cls(value)
        raise ValueError(f"Invalid grad_mode: {value!r} (expected 'keep', 'unscale' or 'zero')")


PARAM_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# Accumulator dtypes allowed for each param dtype: the param's own, or a wider fp32, or a compact bf16.
# fp64 keeps fp64 state: a narrower accumulator would throw away the reason to train in fp64.
STATE_DTYPES = {
    torch.float32: (torch.float32, torch.bfloat16),
    torch.float64: (torch.float64,),
    torch.bfloat16: (torch.bfloat16, torch.float32),
    torch.float16: (torch.float16, torch.float32, torch.bfloat16),
}

LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class StepScalars:
    """Everything of one step that is not a per-tensor buffer."""

    lr: float | torch.Tensor
    rho: float
    eps: float
    weight_decay: float
    maximize: bool = False
    grad_scale: torch.Tensor | None = None
    found_inf: torch.Tensor | None = None
    grad_mode: GradMode = GradMode.KEEP
    stochastic_rounding: bool = False
    rounding_key: int = 0


def check_lr(lr: float | torch.Tensor) -> None:
    """A step with a non-finite lr would silently destroy every parameter; refuse it."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr.is_floating_point():
            raise ValueError(f"Invalid lr dtype: {lr.dtype} (expected a floating-point tensor)")
        return
    if not isinstance(lr, (int, float)) or not math.isfinite(lr):
        raise ValueError(f"Invalid learning rate: {lr} (must be a finite number)")


def check_hyperparameters(lr, rho: float, eps: float, weight_decay: float) -> None:
    """torch.optim.Adadelta's checks, in its order and with its messages."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"Invalid rho value: {rho}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def _check_scalar_tensor(name: str, value: torch.Tensor | None, device: torch.device) -> None:
    if value is None:
        return
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError(f"{name} must be a 1-element tensor, got {value!r}")
    if value.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the params are on {device}")


def check_group(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    square_avgs: list[torch.Tensor],
    acc_deltas: list[torch.Tensor],
    master_params: list[torch.Tensor] | None,
    scalars: StepScalars,
) -> None:
    """Validate one (device, dtype) group before any backend writes to it."""
    lists = {"grads": grads, "square_avgs": square_avgs, "acc_deltas": acc_deltas}
    if master_params:
        lists["master_params"] = master_params
    for name, tensors in lists.items():
        if len(tensors) != len(params):
            raise ValueError(f"{name} has {len(tensors)} tensors but params has {len(params)}")
    check_lr(scalars.lr)
    if not params:
        return
    device, dtype = params[0].device, params[0].dtype
    state_dtype = square_avgs[0].dtype
    if dtype not in PARAM_DTYPES:
        raise TypeError(f"params[0] has unsupported dtype {dtype}; expected one of {PARAM_DTYPES}")
    if state_dtype not in STATE_DTYPES[dtype]:
        raise TypeError(
            f"square_avgs[0] has dtype {state_dtype}, unsupported with {dtype} params; "
            f"expected one of {STATE_DTYPES[dtype]}"
        )
    if master_params and dtype not in LOW_PRECISION:
        raise TypeError(f"master_params are for bf16/fp16 params, got {dtype} params")
    if scalars.stochastic_rounding and master_params:
        raise ValueError("stochastic_rounding applies to bf16 params without master_params, not both")
    for i, param in enumerate(params):
        grad, sq, acc = grads[i], square_avgs[i], acc_deltas[i]
        if grad.is_sparse:
            raise RuntimeError("Adadelta does not support sparse gradients")
        expected = [("grads", grad, dtype), ("square_avgs", sq, state_dtype), ("acc_deltas", acc, state_dtype)]
        if master_params:
            expected.append(("master_params", master_params[i], torch.float32))
        if param.dtype != dtype:
            raise TypeError(f"params[{i}] has dtype {param.dtype} but params[0] has {dtype}")
        if param.device != device:
            raise ValueError(f"params[{i}] is on {param.device} but params[0] is on {device}")
        for name, tensor, want in expected:
            if tensor.shape != param.shape:
                raise ValueError(f"{name}[{i}] has shape {tuple(tensor.shape)} but params[{i}] has {tuple(param.shape)}")
            if tensor.dtype != want:
                raise TypeError(f"{name}[{i}] has dtype {tensor.dtype}, expected {want}")
            if tensor.device != device:
                raise ValueError(f"{name}[{i}] is on {tensor.device} but params[{i}] is on {device}")
    _check_scalar_tensor("grad_scale", scalars.grad_scale, device)
    _check_scalar_tensor("found_inf", scalars.found_inf, device)
    if isinstance(scalars.lr, torch.Tensor) and scalars.lr.device not in (device, torch.device("cpu")):
        raise ValueError(f"lr is on {scalars.lr.device} but the params are on {device}")


def op_arguments(params, grads, square_avgs, acc_deltas, master_params, scalars: StepScalars) -> tuple:
    """The positional arguments of the compiled ops (``adadelta_fused::adadelta_`` and its Triton twin
    ``triton_adadelta_``), in their schema's order: a tensor lr travels as ``lr_tensor``."""
    lr_tensor = scalars.lr if isinstance(scalars.lr, torch.Tensor) else None
    return (
        params,
        grads,
        square_avgs,
        acc_deltas,
        master_params or [],
        0.0 if lr_tensor is not None else float(scalars.lr),
        lr_tensor,
        scalars.rho,
        scalars.eps,
        scalars.weight_decay,
        scalars.maximize,
        scalars.grad_scale,
        scalars.found_inf,
        int(scalars.grad_mode),
        scalars.stochastic_rounding,
        scalars.rounding_key,
    )
