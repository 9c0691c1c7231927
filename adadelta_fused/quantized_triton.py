"""The op ``adadelta_fused::triton_quantized_adadelta_``: the Triton backend's step over 8-bit state, with the schema
of ``adadelta_fused::quantized_adadelta_`` (adadelta_fused/quantized_ops.py). Registered on first import, which the
Triton backend's ``quantized_step_`` does (triton_op imports torch._inductor: seconds).

Eager and traced alike: one launch of ``quantized_adadelta_kernel`` per non-empty tensor, every buffer a kernel
argument. Each launch runs Triton's Python launcher on the host (binding, cache lookup, driver call: of the
order of 10 us; not timed here, no GPU), so a group of 300 small tensors pays some 3 ms a step that the dense
kernel's one table-driven launch does not. Tables would need triton_tables to carry two more addresses a row
(the scales), and its column layout is the dense kernel's.
"""

import contextlib
from typing import Optional

import torch
import triton
from torch.library import triton_op, wrap_triton

from . import staging, triton_interpreter, triton_launch
from .contract import GradMode, StepScalars
from .ops import NAMESPACE
from .quantized_ops import QUANTIZED_MUTATED_ARGS, QUANTIZED_STEP_SCHEMA, check_quantized_args
from .triton_tables import body_end

OP_NAME = f"{NAMESPACE}::triton_quantized_adadelta_"
KERNEL_MODULE = "adadelta_fused.quantized_triton_kernel"
KERNEL = "quantized_adadelta_kernel"
# Elements per program: 8 whole blocks of 256. The dense kernels' first shape, kept when theirs became 1024
# (timed on an H200): the 8-bit kernel has not been timed on a GPU at any size.
BLOCK = 2048


def launch(row: tuple, index: int, step: triton_launch.StepArguments) -> Optional[triton_launch.Launch]:
    """The launch over one dense row (param, grad, square_avg codes, acc_delta codes, master or None,
    square_avg scales, acc_delta scales), the ``index``-th of the op's lists; None for an empty tensor.
    ``step`` is the dense kernels' (triton_launch.step_arguments): the same flags but BLOCK, this module's, a
    program of BLOCK elements holding BLOCK / 256 whole blocks. tests/test_quantized_triton_ptx.py compiles the
    same ones."""
    param, grad, square_avg, acc_delta, master, square_avg_scale, acc_delta_scale = row
    numel = param.numel()
    if numel == 0:
        return None
    end = body_end(numel)
    arguments = dict(
        param_ptr=param, grad_ptr=grad, square_avg_ptr=square_avg, acc_delta_ptr=acc_delta, master_ptr=master,
        square_avg_scale_ptr=square_avg_scale, acc_delta_scale_ptr=acc_delta_scale, numel=numel, body_end=end,
        tensor_index=index, HAS_TAIL=end != numel, num_warps=triton_launch.NUM_WARPS, **step.scalars,
        **{**step.flags, "BLOCK": BLOCK},
    )
    return triton_launch.Launch(KERNEL, (triton.cdiv(numel, BLOCK),), arguments)


def launches(params, grads, square_avgs, acc_deltas, master_params, square_avg_scales, acc_delta_scales,
             scalars: StepScalars) -> tuple[list[triton_launch.Launch], list]:
    """(the launches of one step over a validated group, the (caller's tensor, staged copy) pairs to copy back
    after them)."""
    rows, write_back, _ = staging.stage_dense(params, grads, square_avgs, acc_deltas, master_params, scalars.grad_mode)
    step = triton_launch.step_arguments(params, square_avgs, master_params, scalars)
    planned = [
        launch((*row, square_avg_scale, acc_delta_scale), index, step)
        for index, (row, square_avg_scale, acc_delta_scale) in enumerate(zip(rows, square_avg_scales, acc_delta_scales))
    ]
    return [planned_launch for planned_launch in planned if planned_launch is not None], write_back


@triton_op(OP_NAME, mutates_args=set(QUANTIZED_MUTATED_ARGS), schema=QUANTIZED_STEP_SCHEMA)
def triton_quantized_adadelta_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    square_avgs: list[torch.Tensor],
    acc_deltas: list[torch.Tensor],
    master_params: list[torch.Tensor],
    square_avg_scales: list[torch.Tensor],
    acc_delta_scales: list[torch.Tensor],
    lr: float,
    lr_tensor: Optional[torch.Tensor],
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    grad_scale: Optional[torch.Tensor],
    found_inf: Optional[torch.Tensor],
    grad_mode: int,
    stochastic_rounding: bool,
    rounding_key: int,
) -> None:
    """One Adadelta step over 8-bit state, in place, over one (device, dtype) group: the contract of
    adadelta_fused.quantized_reference, checked first by the op's validator."""
    device_type = params[0].device.type if params else "cpu"
    check_quantized_args(
        params, grads, square_avgs, acc_deltas, master_params, square_avg_scales, acc_delta_scales, lr, lr_tensor,
        rho, eps, weight_decay, maximize, grad_scale, found_inf, grad_mode, stochastic_rounding, rounding_key,
        device_type,
    )
    if not params:
        return
    device = params[0].device
    if (device.type == "cuda" and lr_tensor is not None and lr_tensor.is_cpu
            and torch.cuda.is_current_stream_capturing()):
        # As triton_op: the launch reads a CPU lr on the host, so a captured graph would replay that value.
        raise ValueError(
            "lr is a CPU tensor, but the step is being captured in a CUDA graph, which would freeze its value; "
            f"keep lr on {device} (torch.tensor(lr, device='{device}'))"
        )
    scalars = StepScalars(
        lr=lr if lr_tensor is None else lr_tensor, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
        grad_scale=grad_scale, found_inf=found_inf, grad_mode=GradMode.parse(grad_mode),
        stochastic_rounding=stochastic_rounding, rounding_key=rounding_key,
    )
    planned, write_back = launches(
        params, grads, square_avgs, acc_deltas, master_params, square_avg_scales, acc_delta_scales, scalars
    )
    compiled = getattr(triton_interpreter.kernels(False, KERNEL_MODULE), KERNEL)
    traceable = wrap_triton(compiled)
    if traceable is not compiled:
        # Traced (fake tensors, torch.compile): the graph records every buffer the kernel writes. Always the
        # compiled kernel: wrap_triton cannot trace an interpreted one.
        for planned_launch in planned:
            traceable[planned_launch.grid](**planned_launch.arguments)
    else:
        interpret = triton_interpreter.interpreting()
        kernel = getattr(triton_interpreter.kernels(interpret, KERNEL_MODULE), KERNEL)
        # Triton launches on the current CUDA device, which need not be the params'.
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            with triton_interpreter.launching(interpret):
                for planned_launch in planned:
                    kernel[planned_launch.grid](**planned_launch.arguments)
    staging.finish(write_back)
