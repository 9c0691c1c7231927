"""The Triton kernels' launches: their arguments, grids and specializations, for an eager step over dense
tensors (``triton_op`` runs them; tests/test_triton_ptx.py compiles the same ones ahead of time).

Per (device, dtype) group:
    - one tensor (a flattened group's buffer): one launch of ``adadelta_flat_kernel``, no metadata;
    - several tensors: one launch of ``adadelta_multi_tensor_kernel`` per alignment class, over the cached
      device tables of ``triton_tables``.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor

from .contract import StepScalars, check_group
from .staging import stage_dense
from .triton_tables import TABLES, Tables, body_end, plan_tables

# Elements per program: 1024 over 4 warps, 8 a thread, whatever the dtypes. Timed on an H200 with triton 3.6
# (bench/triton_launch_sweep.py, one 32 Mi tensor, bench/results/gpu-h200-20261204b/): 1024 x 4 warps stepped
# fp32 in 0.228 ms (100 % of copy) and bf16 in 0.117 ms (97 %), against 0.237 ms (97 %) and 0.122 ms (94 %) for
# the 2048 x 4 first chosen from arithmetic; 512 elements were as fast, 4096 slower (bf16 79-84 %). The
# multi-tensor kernel takes the same BLOCK, untimed at either size. Fixed, not autotuned: the kernel writes
# its inputs, so tuning would need restore_value on all five buffers.
BLOCK = 1024
NUM_WARPS = 4

_TRITON_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


@dataclass(frozen=True)
class StepArguments:
    """The kernel arguments every launch of one step shares (both kernels name them alike)."""

    scalars: dict
    flags: dict


def step_arguments(params, square_avgs, master_params, scalars: StepScalars) -> StepArguments:
    dtype, state_dtype = params[0].dtype, square_avgs[0].dtype
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    lr_ptr = None
    lr = scalars.lr
    if isinstance(lr, torch.Tensor) and lr.is_cpu and not params[0].is_cpu and not isinstance(lr, FakeTensor):
        lr = float(lr)  # a host read: copying a CPU lr to the GPU would sync with the host
    if isinstance(lr, torch.Tensor):
        # reference._resolve_lr: the lr in math precision on the params' device, read there (no host sync).
        lr_ptr = lr.to(device=params[0].device, dtype=math_dtype).reshape(())
    has_master = bool(master_params)
    arguments = dict(
        lr_ptr=lr_ptr,
        grad_scale_ptr=scalars.grad_scale,
        found_inf_ptr=scalars.found_inf,
        lr=0.0 if lr_ptr is not None else float(lr),
        rho=float(scalars.rho),
        one_minus_rho=1.0 - float(scalars.rho),  # in double, as Python computes torch's `value=1 - rho`
        eps=float(scalars.eps),
        weight_decay=float(scalars.weight_decay),
        rounding_key=int(scalars.rounding_key) & 0xFFFFFFFF,
    )
    flags = dict(
        MATH=_TRITON_DTYPES[math_dtype],
        GRAD_MODE=int(scalars.grad_mode),
        MAXIMIZE=bool(scalars.maximize),
        HAS_WEIGHT_DECAY=scalars.weight_decay != 0,  # torch skips the add when weight_decay == 0
        HAS_MASTER=has_master,
        STOCHASTIC=bool(scalars.stochastic_rounding) and dtype == torch.bfloat16 and not has_master,
        # Elements a thread moves per access: 16 bytes of the widest buffer the step writes.
        VECTOR=16 // max(dtype.itemsize, state_dtype.itemsize, 4 if has_master else 1),
        BLOCK=BLOCK,
    )
    return StepArguments(arguments, flags)


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the kernel's name in the kernel module, its grid and its keyword arguments."""

    kernel: str
    grid: tuple[int, ...]
    arguments: dict


def flat_launch(row: tuple, index: int, step: StepArguments) -> Optional[Launch]:
    param, grad, square_avg, acc_delta, master = row
    numel = param.numel()
    if numel == 0:
        return None
    end = body_end(numel)
    arguments = dict(
        param_ptr=param, grad_ptr=grad, square_avg_ptr=square_avg, acc_delta_ptr=acc_delta, master_ptr=master,
        numel=numel, body_end=end, tensor_index=index, HAS_TAIL=end != numel, num_warps=NUM_WARPS,
        **step.scalars, **step.flags,
    )
    return Launch("adadelta_flat_kernel", (triton.cdiv(numel, step.flags["BLOCK"]),), arguments)


def _table_launch(tables: Tables, param_dtype, state_dtype, step: StepArguments) -> Launch:
    arguments = dict(
        tensor_table_ptr=tables.tensor_table, block_table_ptr=tables.block_table,
        PARAM_DTYPE=_TRITON_DTYPES[param_dtype], STATE_DTYPE=_TRITON_DTYPES[state_dtype],
        HAS_TAIL=tables.has_tail, ALIGNED=tables.aligned, num_warps=NUM_WARPS,
        **step.scalars, **step.flags,
    )
    return Launch("adadelta_multi_tensor_kernel", (tables.block_table.shape[0],), arguments)


def eager_launches(rows: list[tuple], staged: bool, param_dtype, state_dtype, step: StepArguments, interpret: bool):
    """The launches of an eager step over dense ``rows``; ``staged``: some row holds a one-step copy, whose
    address must not enter the table cache."""
    device = rows[0][0].device
    # The interpreter runs on the host: it copies each kernel argument there and back, but it would read
    # the addresses inside a table as they are, which is only right for CPU memory.
    if len(rows) == 1 or (interpret and device.type != "cpu"):
        launches = [flat_launch(row, index, step) for index, row in enumerate(rows)]
        return [launch for launch in launches if launch is not None]
    block = step.flags["BLOCK"]
    tables = plan_tables(rows, device, block) if staged else TABLES.get(rows, device, block)
    return [_table_launch(t, param_dtype, state_dtype, step) for t in tables]


def planned_launches(params, grads, square_avgs, acc_deltas, master_params, scalars: StepScalars) -> list[Launch]:
    """The launches an eager step makes over these dense tensors, without running them.

    tests/test_triton_ptx.py compiles exactly these specializations ahead of time to audit the machine code.
    """
    check_group(params, grads, square_avgs, acc_deltas, master_params, scalars, params[0].device.type)
    rows, _, staged = stage_dense(params, grads, square_avgs, acc_deltas, master_params, scalars.grad_mode)
    if staged:
        raise ValueError("planned_launches takes dense tensors only (a staged copy would be freed on return)")
    step = step_arguments(params, square_avgs, master_params, scalars)
    return eager_launches(rows, False, params[0].dtype, square_avgs[0].dtype, step, interpret=False)
