"""The op ``adadelta_fused::triton_adadelta_``: the Triton backend's entry, with the schema of
``adadelta_fused::adadelta_`` (adadelta_fused/ops.py). It is registered when this module is imported, which
the Triton backend does on its first step: ``torch.library.triton_op`` imports torch._inductor to find the
kernels a function launches (3.5 s here), too much to add to every ``import adadelta_fused``.

Eager (what an optimizer step runs): the launches of ``triton_launch`` over the group's dense tensors, called
without torch.ops where that changes nothing visible (``launch_step``; adadelta_fused/backends/triton.py).
Traced (torch.compile, make_fx, fake tensors): one ``wrap_triton`` launch of the flat kernel per tensor,
with every buffer passed as an argument, so the graph shows Inductor which tensors the kernel writes.
"""

import contextlib
from typing import Optional

import torch
from torch.library import triton_op, wrap_triton

from .contract import GradMode, StepScalars, check_group
from .ops import NAMESPACE, STEP_MUTATED_ARGS, STEP_SCHEMA

OP_NAME = f"{NAMESPACE}::triton_adadelta_"


@triton_op(OP_NAME, mutates_args=set(STEP_MUTATED_ARGS), schema=STEP_SCHEMA)
def triton_adadelta_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    square_avgs: list[torch.Tensor],
    acc_deltas: list[torch.Tensor],
    master_params: list[torch.Tensor],
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
    """One Adadelta step, in place, over one (device, dtype) group: the contract of adadelta_fused.reference.

    The arguments are the C++ op's (``adadelta_fused::adadelta_``): ``lr_tensor``, when given, replaces ``lr``.
    Inputs are checked by the op's validator before any memory is touched.
    """
    from . import triton_interpreter

    compiled = triton_interpreter.kernels(False).adadelta_flat_kernel
    traceable = wrap_triton(compiled)  # (the kernel itself in eager: triton_op turns wrapping off there)
    launch_step(params, grads, square_avgs, acc_deltas, master_params, lr, lr_tensor, rho, eps, weight_decay,
                maximize, grad_scale, found_inf, grad_mode, stochastic_rounding, rounding_key,
                traceable=None if traceable is compiled else traceable)


def launch_step(params, grads, square_avgs, acc_deltas, master_params, lr, lr_tensor, rho, eps, weight_decay,
                maximize, grad_scale, found_inf, grad_mode, stochastic_rounding, rounding_key, traceable=None) -> None:
    """The op's body; ``traceable``: the flat kernel wrapped for tracing when the op is being traced, else None.
    An eager step calls it directly where torch.ops would change nothing visible (``_extension.runs_unseen``),
    bumping the version counters itself."""
    from . import staging, triton_interpreter, triton_launch

    mode = GradMode.parse(grad_mode)
    scalars = StepScalars(
        lr=lr if lr_tensor is None else lr_tensor, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
        grad_scale=grad_scale, found_inf=found_inf, grad_mode=mode, stochastic_rounding=stochastic_rounding,
        rounding_key=rounding_key,
    )
    if not params:
        check_group(params, grads, square_avgs, acc_deltas, master_params, scalars, "cpu")
        return
    device = params[0].device
    check_group(params, grads, square_avgs, acc_deltas, master_params, scalars, device.type)
    if (device.type == "cuda" and lr_tensor is not None and lr_tensor.is_cpu
            and torch.cuda.is_current_stream_capturing()):
        raise ValueError(
            "lr is a CPU tensor, but the step is being captured in a CUDA graph, which would freeze its value; "
            f"keep lr on {device} (torch.tensor(lr, device='{device}'))"
        )
    rows, write_back, staged = staging.stage_dense(params, grads, square_avgs, acc_deltas, master_params, mode)
    step = triton_launch.step_arguments(params, square_avgs, master_params, scalars)
    if traceable is not None:
        # Traced (fake tensors, torch.compile): every buffer is a kernel argument, so the graph records what
        # the kernel mutates. Always the compiled kernel: wrap_triton cannot trace an interpreted one.
        for index, row in enumerate(rows):
            launch = triton_launch.flat_launch(row, index, step)
            if launch is not None:
                traceable[launch.grid](**launch.arguments)
    else:
        interpret = triton_interpreter.interpreting()
        module = triton_interpreter.kernels(interpret)
        launches = triton_launch.eager_launches(rows, staged, params[0].dtype, square_avgs[0].dtype, step, interpret)
        # Triton launches on the current CUDA device, which need not be the params'.
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            with triton_interpreter.launching(interpret):
                for launch in launches:
                    getattr(module, launch.kernel)[launch.grid](**launch.arguments)
    staging.finish(write_back)
