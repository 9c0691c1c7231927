"""The compiled extension ``adadelta_fused._C``: fused CPU kernel, and CUDA kernel when built with nvcc."""

from __future__ import annotations

import torch

from .. import _extension
from ..contract import StepScalars, op_arguments, quantized_op_arguments

NAME = "cpp"


def unavailable_reason() -> str | None:
    return _extension.load_error()


def unsupported_reason(device: torch.device) -> str | None:
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        return None if _extension.has_cuda_kernel() else "the extension was built without its CUDA sources"
    return f"no kernel for device type {device.type!r}"


def step_(params, grads, square_avgs, acc_deltas, master_params, scalars: StepScalars) -> None:
    """The op checks its arguments (csrc/op_host.cpp) before it touches memory."""
    arguments = op_arguments(params, grads, square_avgs, acc_deltas, master_params, scalars)
    if not _extension.call_unboxed("step", *arguments):
        _extension.op()(*arguments)


def quantized_step_(params, grads, square_avgs, acc_deltas, master_params, square_avg_scales, acc_delta_scales,
                    scalars: StepScalars) -> None:
    """One step over 8-bit state (adadelta_fused.quantized_reference); the op checks its arguments first."""
    from ..quantized_ops import op

    arguments = quantized_op_arguments(params, grads, square_avgs, acc_deltas, master_params, square_avg_scales,
                                       acc_delta_scales, scalars)
    if not _extension.call_unboxed("quantized_step", *arguments):
        op()(*arguments)
