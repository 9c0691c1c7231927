"""The pure-torch reference as a backend: runs anywhere torch runs, and is the last resort."""

from __future__ import annotations

import torch

from ..contract import StepScalars, check_group, quantized_op_arguments
from ..quantized_ops import check_quantized_args
from ..quantized_reference import quantized_adadelta_reference_
from ..reference import adadelta_step_reference_

NAME = "reference"


def unavailable_reason() -> str | None:
    return None


def unsupported_reason(device: torch.device) -> str | None:
    return None


def step_(params, grads, square_avgs, acc_deltas, master_params, scalars: StepScalars) -> None:
    if params:
        check_group(params, grads, square_avgs, acc_deltas, master_params, scalars, params[0].device.type)
    adadelta_step_reference_(params, grads, square_avgs, acc_deltas, master_params, scalars)
    # Like the compiled ops: every tensor of a list the schema marks mutable gets a new version, including
    # the ones a skipped step or the "keep" mode leave untouched.
    for tensors in (params, grads, square_avgs, acc_deltas, master_params or ()):
        for tensor in tensors:
            torch.autograd.graph.increment_version(tensor)


def quantized_step_(params, grads, square_avgs, acc_deltas, master_params, square_avg_scales, acc_delta_scales,
                    scalars: StepScalars) -> None:
    if params:
        check_quantized_args(*quantized_op_arguments(params, grads, square_avgs, acc_deltas, master_params,
                                                     square_avg_scales, acc_delta_scales, scalars),
                             params[0].device.type)
    quantized_adadelta_reference_(params, grads, square_avgs, acc_deltas, master_params, square_avg_scales,
                                  acc_delta_scales, scalars)
    for tensors in (params, grads, square_avgs, acc_deltas, master_params or (), square_avg_scales, acc_delta_scales):
        for tensor in tensors:
            torch.autograd.graph.increment_version(tensor)
