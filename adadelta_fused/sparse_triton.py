"""The op ``adadelta_fused::triton_sparse_adadelta_``: the Triton backend's sparse step, with the schema of
``adadelta_fused::sparse_adadelta_`` (adadelta_fused/sparse_ops.py). Registered on first import, which
``adadelta_fused.sparse`` does on the first sparse step that runs on the Triton backend (triton_op imports
torch._inductor: seconds).
"""

import contextlib
from typing import Optional

import torch
from torch.library import triton_op, wrap_triton

from . import triton_interpreter
from .ops import NAMESPACE
from .sparse_ops import SPARSE_MUTATED_ARGS, SPARSE_STEP_SCHEMA, check_sparse_args

OP_NAME = f"{NAMESPACE}::triton_sparse_adadelta_"
KERNEL_MODULE = "adadelta_fused.sparse_triton_kernel"

# 4 rows x up to 128 columns a program over 2 warps: an embedding row of 64 fp32 is one 256-byte tile, so a
# program has 4 x 256 B of each of its 4 buffers (4 KiB) in flight, 4 fp32 a thread. Chosen from that
# arithmetic, not timed on a GPU (none here). Fixed, not autotuned: the kernel writes its inputs.
ROWS = 4
MAX_BLOCK_D = 128
NUM_WARPS = 2

def launch_arguments(param, square_avg, acc_delta, row_step, rows, values, lr, lr_tensor, rho, eps, maximize,
                     grad_scale, found_inf, step) -> tuple[tuple, dict]:
    """(grid, keyword arguments) of one launch; tests/test_sparse_triton.py compiles the same ones for sm_90."""
    import triton
    import triton.language as tl

    num_rows = param.shape[0]
    row_numel = param.numel() // num_rows if num_rows else 0
    math_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
    lr_ptr = None
    if lr_tensor is not None and (lr_tensor.is_cpu and not param.is_cpu):
        lr = float(lr_tensor)  # a host read: copying a CPU lr to the GPU would sync with the host
    elif lr_tensor is not None:
        lr_ptr = lr_tensor.to(device=param.device, dtype=math_dtype).reshape(())
    arguments = dict(
        param_ptr=param, square_avg_ptr=square_avg, acc_delta_ptr=acc_delta, row_step_ptr=row_step,
        rows_ptr=rows, values_ptr=values, lr_ptr=lr_ptr, grad_scale_ptr=grad_scale, found_inf_ptr=found_inf,
        listed=rows.numel(), row_numel=row_numel, step=step,
        lr=float(lr), rho=float(rho), one_minus_rho=1.0 - float(rho), eps=float(eps),
        MATH=tl.float64 if math_dtype == torch.float64 else tl.float32, MAXIMIZE=bool(maximize), ROWS=ROWS,
        BLOCK_D=min(MAX_BLOCK_D, max(16, triton.next_power_of_2(max(row_numel, 1)))), num_warps=NUM_WARPS,
    )
    return (triton.cdiv(rows.numel(), ROWS),), arguments


@triton_op(OP_NAME, mutates_args=set(SPARSE_MUTATED_ARGS), schema=SPARSE_STEP_SCHEMA)
def triton_sparse_adadelta_(
    param: torch.Tensor,
    square_avg: torch.Tensor,
    acc_delta: torch.Tensor,
    row_step: torch.Tensor,
    rows: torch.Tensor,
    values: Optional[torch.Tensor],
    lr: float,
    lr_tensor: Optional[torch.Tensor],
    rho: float,
    eps: float,
    maximize: bool,
    grad_scale: Optional[torch.Tensor],
    found_inf: Optional[torch.Tensor],
    step: int,
) -> None:
    """One sparse step (or catch-up), in place: the contract of adadelta_fused.sparse_reference, checked
    first by the op's validator."""
    args = (param, square_avg, acc_delta, row_step, rows, values, lr, lr_tensor, rho, eps, maximize, grad_scale,
            found_inf, step)
    check_sparse_args(*args, param.device.type)
    if rows.numel() == 0:
        return
    grid, arguments = launch_arguments(*args)
    compiled = triton_interpreter.kernels(False, KERNEL_MODULE).sparse_adadelta_kernel
    traceable = wrap_triton(compiled)
    if traceable is not compiled:
        traceable[grid](**arguments)  # traced: the graph records every buffer the kernel writes
        return
    interpret = triton_interpreter.interpreting()
    kernel = triton_interpreter.kernels(interpret, KERNEL_MODULE).sparse_adadelta_kernel
    with torch.cuda.device(param.device) if param.device.type == "cuda" else contextlib.nullcontext():
        with triton_interpreter.launching(interpret):
            kernel[grid](**arguments)
