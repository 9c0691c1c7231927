"""The op contract shared by every backend: the step's scalars, the gradient modes and the dtype rules.
The input checks live in one place, the compiled validator (csrc/op_host.cpp, ``check_group`` here);
``reference.py`` holds the math."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from . import _extension


class GradMode(enum.IntEnum):
    """What the step does to the gradient buffer (the int is the op's ``grad_mode`` argument)."""

    KEEP = 0
    UNSCALE = 1
    ZERO = 2

    @classmethod
    def parse(cls, value: "str | int | GradMode") -> "GradMode":
        if type(value) is cls:
            return value
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


def check_lr(lr) -> float | torch.Tensor:
    """lr as the op takes it: a 1-element floating tensor, or a float. Anything Python can read as one real
    number is a float lr (int, numpy scalars, 0-d arrays), as torch.optim accepts them; an integer tensor
    becomes fp64 (torch steps with one too)."""
    if type(lr) is float and math.isfinite(lr):
        return lr  # the common case, first: every step of every group comes here
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr.dtype == torch.bool or lr.is_complex():
            raise ValueError(f"Invalid lr dtype: {lr.dtype} (expected a real tensor)")
        return lr if lr.is_floating_point() else lr.to(torch.float64)
    if isinstance(lr, (str, bytes, bytearray)):
        # float() would read one; torch's step fails on it (-lr: "bad operand type"), so a TypeError here too
        raise TypeError(f"Invalid learning rate: {lr!r} (expected a real number or a 1-element tensor)")
    if isinstance(lr, (bool, complex)) or getattr(lr, "ndim", 0) != 0:
        raise ValueError(f"Invalid learning rate: {lr!r} (expected a real number or a 1-element tensor)")
    try:
        value = float(lr)
    except TypeError:
        # (None, say: torch's step fails on -lr with a TypeError too)
        raise TypeError(f"Invalid learning rate: {lr!r} (expected a real number or a 1-element tensor)") from None
    except ValueError:
        raise ValueError(f"Invalid learning rate: {lr!r} (expected a real number or a 1-element tensor)") from None
    if not math.isfinite(value):
        raise ValueError(f"Invalid learning rate: {value} (must be a finite number)")
    return value


def real_hyperparameter(name: str, value) -> float:
    """rho, eps or weight_decay as a step uses it: a float from anything Python reads as a real number, but
    not from text (float() would read it; torch's step fails on it with a TypeError)."""
    if isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"Invalid {name}: {value!r} (expected a real number)")
    return float(value)


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


def param_label(position: int, group_index: int | None = None) -> str:
    """How every message names a param: ``param k of param group g``, or ``param k`` where no group is known."""
    return f"param {position}" if group_index is None else f"param {position} of param group {group_index}"


def check_group(params, grads, square_avgs, acc_deltas, master_params, scalars: StepScalars, device_type: str) -> None:
    """Validate one (device, dtype) group for a kernel on ``device_type``, before anything is written: the
    compiled op's validator (csrc/op_host.cpp), the only one, so every backend fails with the same words."""
    _extension.check_op_args(*op_arguments(params, grads, square_avgs, acc_deltas, master_params, scalars), device_type)


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


def quantized_op_arguments(params, grads, square_avgs, acc_deltas, master_params, square_avg_scales, acc_delta_scales,
                           scalars: StepScalars) -> tuple:
    """The positional arguments of the quantized ops (``adadelta_fused::quantized_adadelta_`` and its Triton twin
    ``triton_quantized_adadelta_``), in their schema's order: ``op_arguments`` with the scale lists after
    master_params."""
    dense = op_arguments(params, grads, square_avgs, acc_deltas, master_params, scalars)
    return (*dense[:5], square_avg_scales, acc_delta_scales, *dense[5:])
